package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"time"
)

// runUp brings one VM up: setupUp, then its controller loop.
func runUp(env Env, o *Options) int {
	u, lock, code := setupUp(env, o)
	if u == nil {
		return code
	}
	defer lock.Unlock()
	if !env.commit() { // from here the controller handles the signals
		return exitFailed // a signal ended it: the guard has its code
	}
	return u.run()
}

// setupUp does everything `up` can decide before its controller loop
// starts: checks that need no VM, the lock, and which path the journal
// calls for. It returns the run and the VM's lock, or nil and the exit code.
func setupUp(env Env, o *Options) (run *upRun, held *Lock, code int) {
	out := env.Out
	if err := validateUp(o); err != nil {
		return nil, nil, reportError(out, err)
	}
	for _, w := range hostWarnings(o) {
		out.Warn("%s", w)
	}
	paths := pathsFor(env.Home, o.Name)
	if err := checkStateDirs(paths); err != nil {
		return nil, nil, reportError(out, err)
	}
	lock, code := lockVM(out, paths, "up")
	if lock == nil {
		return nil, nil, code
	}
	defer func() {
		if run == nil {
			lock.Unlock()
		}
	}()

	j, err := readJournal(paths)
	if err != nil {
		return nil, nil, reportError(out, err)
	}
	if err := checkEnvOf(o, j); err != nil {
		return nil, nil, reportError(out, err)
	}
	exists := j != nil
	u := &upRun{vmRun: vmRun{env: env, o: o, paths: paths}}
	switch {
	case o.Reset || j == nil:
		u.kind, u.replaced = startFresh, j
	case j.FirstBootDone:
		u.kind = startReup
	case diedMidFirstBoot(j):
		u.kind, u.recover = startFresh, j
	default:
		// A first boot that failed and was kept (and maybe stopped with
		// `down` since), or a journal that cannot say: retried, never wiped.
		u.kind = startResumeFirst
	}
	if j != nil && u.recover == nil {
		// What a killed vmup's playbook left (a provision's; a first boot's
		// is reaped as it is removed).
		reapGroup(j.PlaybookPGID, paths)
		j.PlaybookPGID = 0
	}
	if j != nil && !o.Reset {
		if err := inherit(o, j); err != nil {
			return nil, nil, reportError(out, err)
		}
	}
	u.virsh = newVirsh(env.Runner, o.Connect)
	ctx := env.ctx()
	if err := checkLibvirt(ctx, u.virsh); err != nil {
		return nil, nil, reportError(out, err)
	}
	if u.kind == startFresh {
		if o.Image == "" {
			return nil, nil, reportError(out, usagef("give `--image PATH|URL`, or put \"image\" in "+configFile,
				"--image is needed to create VM %s", o.Name))
		}
		if j == nil {
			// No journal: a domain of this name is not ours to take over.
			if _, err := u.virsh.DomState(ctx, o.Name); err == nil {
				owned, _ := u.virsh.Owned(ctx, o.Name)
				if !owned {
					return nil, nil, reportError(out, &hintedError{
						msg:  fmt.Sprintf("a domain named %s exists that vmup did not create", o.Name),
						hint: "choose another VM name",
					})
				}
				if !o.Reset {
					return nil, nil, reportError(out, &hintedError{
						msg:  fmt.Sprintf("domain %s exists but vmup has no state for it in %s", o.Name, paths.Dir),
						hint: fmt.Sprintf("run `vmup destroy %s` to remove it, or `vmup up %s --reset …` to replace it", o.Name, o.Name),
					})
				}
			}
		}
		j = &Journal{Name: o.Name, Phase: Preparing, FailedIn: noPhase, User: o.User, Network: o.Network, Connect: o.Connect, Pool: o.Pool,
			Playbook: o.Playbook, PlaybookArgs: o.PlaybookArgs, NoProvision: o.NoProvision, Created: time.Now().UTC()}
		if o.Env != nil {
			j.Env = &JournalEnv{Name: o.Env.Name, Dir: o.Env.Dir, VM: o.EnvVM}
		}
	}
	u.j = j
	// A reset that failed may have left the journal unwritten, `resetting`.
	u.resetCutOff = exists && (j.Phase == Resetting || j.Phase == Failed && j.FailedIn == Resetting)
	// An existing journal stays on disk as it is until this run changes the
	// VM (a wipe, a redefinition) or starts it: a run refused, failed or killed
	// before that leaves it describing the VM as it was.
	u.holdJournal = exists
	return u, lock, 0
}

// diedMidFirstBoot says whether the journal is that of a first boot whose vmup
// died before it ended (this run holds the VM's lock, so that vmup is gone),
// or of one that failed before anything booted. Only those are wiped and
// started clean; every other unfinished first boot is kept and retried.
func diedMidFirstBoot(j *Journal) bool {
	switch j.Phase {
	case Preparing, Starting, Provisioning, Cloning, Wiping:
		return true
	case Failed:
		// A failed clone too: it is made again, by a full first boot (a clone
		// killed midway, in Cloning, is cloned again: findTemplate).
		return j.FailedIn == Preparing || j.FailedIn == Wiping || j.FailedIn == Cloning
	}
	return false
}

// inherit takes an existing VM's settings for whatever this run did not set,
// so a bare `vmup up NAME` starts it as it was. Where the VM lives, who logs
// in and how it boots are fixed when it is made: another value is an error.
func inherit(o *Options, j *Journal) error {
	with := func(b bool, what string) string {
		if b {
			return "with " + what
		}
		return "without " + what
	}
	// The boot settings are journalled with the domain type, once the disk is made.
	bootKnown := j.DomainType != ""
	fixed := []struct {
		flag string
		same bool
		was  string
	}{
		{"connect", o.Connect == j.Connect, "on " + j.Connect},
		{"pool", o.Pool == j.Pool, "in pool " + j.Pool},
		{"user", o.User == j.User, "for user " + j.User},
		{"domain-type", !bootKnown || o.DomainType == "auto" || o.DomainType == j.DomainType, "as a " + j.DomainType + " domain"},
		{"kernel", !bootKnown || (o.Kernel != "") == j.Kernel, with(j.Kernel, "--kernel")},
		{"initrd", !bootKnown || (o.Initrd != "") == j.Initrd, with(j.Initrd, "--initrd")},
		{"cmdline", !bootKnown || o.Cmdline == j.Cmdline, fmt.Sprintf("with --cmdline %q", j.Cmdline)},
		{"firmware", !bootKnown || o.Firmware == j.Firmware || j.Firmware == "" && o.Firmware == "bios", "to boot with " + j.Firmware + " firmware"},
	}
	for _, f := range fixed {
		if o.set[f.flag] && !f.same {
			return usagef(fmt.Sprintf("leave --%s out (it is fixed when a VM is made), or run `vmup destroy %s` and make it anew", f.flag, o.Name),
				"--%s cannot change: VM %s was made %s", f.flag, o.Name, f.was)
		}
	}
	o.User, o.Connect, o.Pool = j.User, j.Connect, j.Pool
	if !o.set["network"] {
		o.Network = j.Network
	}
	if !o.set["cpus"] {
		o.CPUs = j.CPUs
	}
	if !o.set["memory"] {
		o.MemoryMiB = j.MemoryMiB
	}
	if !o.set["disk"] {
		o.DiskGiB = j.DiskGiB
	}
	if !o.set["forward"] {
		o.Forwards = nil
		for _, s := range j.Forwards {
			if f, err := parseForward(s); err == nil {
				o.Forwards = append(o.Forwards, f)
			}
		}
	}
	if !o.set["restrict-network"] {
		o.RestrictNetwork = j.Restrict
	}
	if !o.set["playbook"] {
		o.Playbook, o.PlaybookArgs = j.Playbook, j.PlaybookArgs
	}
	if !o.set["no-provision"] {
		o.NoProvision = j.NoProvision
	}
	if o.RestrictNetwork && o.Network != "user" {
		return usagef("give `--restrict-network=false` to lift it", "--restrict-network needs --network user (VM %s is on %s)", o.Name, o.Network)
	}
	return nil
}

// libvirtTimeout bounds the first question to libvirt; tests shorten it.
var libvirtTimeout = 30 * time.Second

// checkLibvirt turns "virsh missing" and "libvirtd down" into one clear error.
func checkLibvirt(parent context.Context, v *Virsh) error {
	ctx, cancel := context.WithTimeout(parent, libvirtTimeout)
	defer cancel()
	err := v.Reachable(ctx)
	if err == nil {
		return nil
	}
	var ee *ExitError
	switch {
	case errors.As(err, &ee):
		return &hintedError{
			msg:  fmt.Sprintf("cannot reach libvirt at %s: %v", v.uri, err),
			hint: fmt.Sprintf("start libvirtd, and run `virsh -c %s uri` to check that it lets you in", v.uri),
		}
	case parent.Err() != nil:
		return parent.Err() // a signal: the command ends with its code
	case errors.Is(err, context.DeadlineExceeded):
		// virsh runs but libvirtd does not answer: stuck, or its socket
		// taken by something that never replies. Not a missing client.
		return &hintedError{
			msg: fmt.Sprintf("libvirt did not answer within %s (virsh -c %s uri)", libvirtTimeout, v.uri),
			hint: fmt.Sprintf("check that libvirtd runs and answers: `systemctl status libvirtd` (or virtqemud), "+
				"and `virsh -c %s version` should answer at once", v.uri),
		}
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return &hintedError{
			msg:  err.Error(),
			hint: "install libvirt's client (Debian: `apt-get install libvirt-clients`), or set VMUP_VIRSH to its path",
		}
	}
	return err
}

func absPath(p string) string {
	if p == "" {
		return ""
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// checkEnvOf refuses to bring up, as a VM of an environment, a VM that was
// made otherwise: alone, or in another directory's environment of that name.
func checkEnvOf(o *Options, j *Journal) error {
	if o.Env == nil || j == nil || j.Env != nil && *j.Env == (JournalEnv{Name: o.Env.Name, Dir: o.Env.Dir, VM: o.EnvVM}) {
		return nil
	}
	where := "alone, not in an environment"
	if j.Env != nil {
		where = fmt.Sprintf("by environment %s in %s", j.Env.Name, j.Env.Dir)
	}
	return usagef(fmt.Sprintf("give this environment another \"name\" in %s, or run `vmup destroy %s` elsewhere to remove that VM", configFile, o.Name),
		"VM %s exists and was made %s", o.Name, where)
}
