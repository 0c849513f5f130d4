package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Ansible runs ansible-playbook against one VM through vmup's ControlMaster.
type Ansible struct {
	r    Runner
	prog string
}

func newAnsible(r Runner) *Ansible {
	return &Ansible{r: r, prog: programFor("VMUP_ANSIBLE_PLAYBOOK", "ansible-playbook")}
}

// writeInventory writes the VM's inventory (JSON, which ansible reads as YAML):
// host = NAME in group vmup.
func writeInventory(p Paths, name, user string, ep Endpoint) error {
	inv := map[string]any{
		"vmup": map[string]any{
			"hosts": map[string]any{
				name: map[string]any{
					"ansible_host":               ep.Host,
					"ansible_port":               ep.Port,
					"ansible_user":               user,
					"ansible_python_interpreter": "auto_silent",
				},
			},
		},
	}
	data, err := json.MarshalIndent(inv, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.Inventory(), append(data, '\n'), 0o600)
}

// bestEffort writes what it can and never fails the writer it is part of.
type bestEffort struct{ w io.Writer }

func (b bestEffort) Write(p []byte) (int, error) {
	b.w.Write(p)
	return len(p), nil
}

// shellQuote quotes one word for ansible's shlex-split ssh_args.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`;&|<>()*?[]{}~#!") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Run runs the playbook; output goes to out and to a log file in logs/.
// started learns the playbook's process group.
func (a *Ansible) Run(ctx context.Context, p Paths, s *SSH, playbook string, extra []string, out io.Writer, started func(int)) (logPath string, err error) {
	if err := ensureDir(p.Logs()); err != nil {
		return "", err
	}
	logPath = filepath.Join(p.Logs(), "playbook-"+time.Now().UTC().Format("20060102T150405Z")+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	defer logFile.Close()
	// A full disk must not turn a playbook that succeeded into a failure.
	w := io.MultiWriter(out, bestEffort{logFile})

	// ansible's default ssh_args start a ControlPersist master that would outlive
	// vmup; these replace them, so ansible rides vmup's own master.
	var sshArgs []string
	for _, o := range append(s.Options(), "-o", "ControlMaster=no") {
		sshArgs = append(sshArgs, shellQuote(o))
	}
	args := append([]string{a.prog, "-i", p.Inventory()}, extra...)
	args = append(args, playbook)
	_, err = a.r.Run(ctx, Cmd{
		Args: args,
		Env: []string{
			"ANSIBLE_SSH_ARGS=" + strings.Join(sshArgs, " "),
			"ANSIBLE_HOST_KEY_CHECKING=True",
			"ANSIBLE_PIPELINING=True",
			"ANSIBLE_RETRY_FILES_ENABLED=False",
		},
		Stdout:  w,
		Stderr:  w,
		Started: started,
	})
	if err != nil {
		return logPath, fmt.Errorf("ansible-playbook failed: %w", err)
	}
	return logPath, nil
}
