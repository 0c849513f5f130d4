package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// noteAnsibleExit tells out how ansible-playbook ended, when it ran and
// failed: its exit code and a best-effort reading of it, failed for 2,
// unreachable for 4 when the log's recap counts unreachable hosts (4 is
// also a playbook ansible could not parse), else error.
func noteAnsibleExit(out *Output, err error, logPath string) {
	var ee *ExitError
	if !errors.As(err, &ee) {
		return
	}
	result := "error"
	switch {
	case ee.ExitCode == 2:
		result = "failed"
	case ee.ExitCode == 4 && recapUnreachable(logPath):
		result = "unreachable"
	}
	out.AnsibleEnded(ee.ExitCode, result)
}

var unreachableRE = lazyRE(`\bunreachable=([0-9]+)`)

// recapUnreachable says whether the PLAY RECAP at the end of a playbook's
// log counts a host with unreachable=N, N > 0.
func recapUnreachable(logPath string) bool {
	f, err := os.Open(logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	const tail = 1 << 20 // the recap is at the end of what may be a long log
	if fi, err := f.Stat(); err == nil && fi.Size() > tail {
		f.Seek(fi.Size()-tail, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	i := bytes.LastIndex(data, []byte("PLAY RECAP"))
	if i < 0 {
		return false
	}
	for _, m := range unreachableRE.FindAllSubmatch(data[i:], -1) {
		if n, err := strconv.Atoi(string(m[1])); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// Run runs the playbook against one VM, through vmup's ControlMaster;
// output goes to out and to a log file in logs/. started learns the
// playbook's process group.
func (a *Ansible) Run(ctx context.Context, p Paths, s *SSH, playbook string, extra []string, out io.Writer, started func(int)) (logPath string, err error) {
	// ansible's default ssh_args start a ControlPersist master that would outlive
	// vmup; these replace them, so ansible rides vmup's own master.
	return a.run(ctx, p, p.Inventory(), append(s.Options(), "-o", "ControlMaster=no"), append(slices.Clone(extra), playbook), out, started)
}

// RunHosts runs the playbook over an inventory whose hosts carry their own
// keys, pinned host keys and ControlPaths (an environment's): the ssh
// options every host shares are the only process-wide ones.
func (a *Ansible) RunHosts(ctx context.Context, logs Paths, inventory string, args []string, out io.Writer, started func(int)) (string, error) {
	shared := []string{"-o", "ControlMaster=no", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-o", "ServerAliveInterval=5", "-o", "LogLevel=ERROR"}
	return a.run(ctx, logs, inventory, shared, args, out, started)
}

func (a *Ansible) run(ctx context.Context, p Paths, inventory string, sshOpts, args []string, out io.Writer, started func(int)) (logPath string, err error) {
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

	var sshArgs []string
	for _, o := range sshOpts {
		sshArgs = append(sshArgs, shellQuote(o))
	}
	_, err = a.r.Run(ctx, Cmd{
		Args: append([]string{a.prog, "-i", inventory}, args...),
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
