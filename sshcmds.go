// vmup ssh, ssh-config and provision: the commands that reach a running VM over its pinned SSH.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

func sshFor(env Env, o *Options, cmd string) (*SSH, int) {
	paths, j, code := loadVM(env, o, cmd)
	if j == nil {
		return nil, code
	}
	if j.SSHPort == 0 {
		return nil, reportError(env.Out, &hintedError{
			msg:  fmt.Sprintf("VM %s has no SSH endpoint yet", o.Name),
			hint: fmt.Sprintf("run `vmup up %s` to start it", o.Name),
		})
	}
	return sshFromJournal(env.Runner, o.Name, paths, j), -1
}

// runSSH replaces vmup with ssh, so the terminal, signals and exit status are ssh's.
func runSSH(env Env, o *Options, command []string) int {
	s, code := sshFor(env, o, "ssh")
	if s == nil {
		return code
	}
	argv := s.argv()
	// An interactive session gets a terminal; BatchMode only stops password prompts.
	argv = append(argv[:1], append([]string{"-t"}, argv[1:]...)...)
	if len(command) > 0 {
		argv[1] = "-T"
		argv = append(argv, "--")
		argv = append(argv, command...)
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return reportError(env.Out, fmt.Errorf("cannot run ssh: %w", err))
	}
	virshSessions.Close()
	err = unix.Exec(prog, argv, os.Environ())
	return reportError(env.Out, fmt.Errorf("cannot run ssh: %w", err))
}

// runSSHConfig prints the VM's ssh config and keeps it as ssh.config in the
// state dir, for `ssh -F` and tools that take a config file.
func runSSHConfig(env Env, o *Options) int {
	if abs, err := filepath.Abs(env.Home); err == nil {
		env.Home = abs // the config is used from anywhere
	}
	s, code := sshFor(env, o, "ssh-config")
	if s == nil {
		return code
	}
	config, path := s.Config(), s.paths.SSHConfig()
	// Atomic: a symlink planted at that name is replaced, not written through.
	if err := writeFileAtomic(path, []byte(config), 0o600); err != nil {
		return reportError(env.Out, err)
	}
	if !o.JSON { // with --json, stdout is events: the text is the event's config
		fmt.Print(config)
	}
	env.Out.Data(jsonEvent{Event: "ssh_config", Config: config, Path: path,
		Message: fmt.Sprintf("Written to %s too: `ssh -F %s %s` uses it", path, path, o.Name)})
	return exitOK
}

// runProvision runs a playbook on a running VM. It never wipes anything:
// an interrupt stops the playbook and keeps the VM.
func runProvision(env Env, o *Options) int {
	out := env.Out
	paths, j, code := loadVM(env, o, "provision")
	if j == nil {
		return code
	}
	lock, code := lockVM(out, paths, "provision")
	if lock == nil {
		return code
	}
	defer lock.Unlock()
	playbook, args := absPath(o.Playbook), o.PlaybookArgs
	if playbook == "" {
		playbook, args = j.Playbook, j.PlaybookArgs
	}
	if playbook == "" {
		return reportError(out, usagef(fmt.Sprintf("run `vmup provision %s --playbook FILE` to name one", o.Name), "no playbook to run"))
	}
	if _, err := os.Stat(playbook); err != nil {
		return reportError(out, usagef("", "--playbook %s: no such file", playbook))
	}
	v := newVirsh(env.Runner, j.Connect)
	if err := checkLibvirt(env.ctx(), v); err != nil {
		return reportError(out, err)
	}
	if state, err := v.DomState(env.ctx(), o.Name); err != nil || state != "running" {
		return reportError(out, &hintedError{
			msg:  fmt.Sprintf("VM %s is not running", o.Name),
			hint: fmt.Sprintf("run `vmup up %s -d` to start it", o.Name),
		})
	}
	s := sshFromJournal(env.Runner, o.Name, paths, j)
	if err := writeInventory(paths, o.Name, j.User, s.ep); err != nil {
		return reportError(out, err)
	}
	if !env.commit() { // from here a signal stops the playbook and keeps the VM
		return exitFailed // a signal ended it: the guard has its code
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sig os.Signal
	go func() {
		sig = <-env.Signals
		out.Say("interrupted", "Interrupted: stopping the playbook; VM %s is kept", o.Name)
		cancel()
	}()
	// The playbook's group is journalled while it runs: killed, this vmup
	// takes ansible-playbook along, and the next up, provision or destroy
	// reaps what ansible left. An earlier one's group is reaped before.
	reapGroup(j.PlaybookPGID, paths)
	journalGroup := func(pgid int) {
		if cur, err := readJournal(paths); err == nil && cur != nil && cur.PlaybookPGID != pgid {
			cur.PlaybookPGID = pgid
			if err := writeJournal(paths, cur); err != nil {
				out.Warn("cannot write %s: %v", paths.Journal(), err)
			}
		}
	}
	journalGroup(0)
	out.Plan(1)
	out.Step("Provisioning with " + playbook)
	logPath, err := newAnsible(env.Runner).Run(ctx, paths, s, playbook, args, out.Indented("      "), journalGroup)
	journalGroup(0)
	switch {
	case ctx.Err() != nil:
		out.Fail("interrupted")
		return signalExit(sig)
	case err != nil:
		out.Fail("see " + logPath)
		noteAnsibleExit(out, err, logPath)
		return reportError(out, &hintedError{msg: err.Error(), code: exitProvision})
	}
	out.Done("")
	return exitOK
}
