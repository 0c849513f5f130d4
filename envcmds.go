// The commands of an environment's directory that act on each of its VMs.
package main

import (
	"fmt"
	"runtime"
	"slices"

	"golang.org/x/sys/unix"
)

// runEnv runs cmd in an environment's directory: on the VMs named, or on
// every VM of the file. A VM no longer in the file is never touched.
func runEnv(cmd string, env Env, o *Options) int {
	env.Out.SetEnvironment(o.Env.Name)
	switch cmd {
	case "status":
		return runEnvStatus(env, o)
	case "inventory":
		return runEnvInventory(env, o)
	case "up":
		return runEnvUp(env, o)
	case "provision":
		return runEnvProvision(env, o)
	}
	runs := map[string]func(Env, *Options) int{"down": runDown, "destroy": runDestroy, "reset": runReset,
		"ssh-config": runSSHConfig}
	e := o.Env
	vms := e.acted(o)
	code := exitOK
	for _, vm := range vms {
		vo, err := e.options(vm)
		if err != nil {
			return reportError(env.Out, err)
		}
		venv := env
		venv.Out = env.Out.forVM(vo.Name, e.label(vm, vms))
		paths := pathsFor(env.Home, vo.Name)
		if len(o.Names) == 0 && !made(paths) {
			// Every VM of the file: one never made is no error.
			venv.Out.Say("skipped", "VM %s (%s) was never made: nothing to %s", vm.Name, vo.Name, cmd)
			continue
		}
		c := runs[cmd](venv, vo)
		env.Out.addOutcome(outcomeOf(venv.Out, paths, c))
		if code == exitOK {
			code = c
		}
	}
	return code
}

// label is what a VM's lines begin with: its name in the file, when the
// command speaks for more than one VM.
func (e *Environment) label(vm envVM, acted []envVM) string {
	if len(acted) < 2 {
		return ""
	}
	return vm.Name
}

// made says whether a VM has a state dir with a journal (a damaged one too).
func made(paths Paths) bool {
	j, err := readJournal(paths)
	return j != nil || err != nil
}

// outcomeOf is a VM's line of the environment's exit event: its phase as
// its journal has it, the command's exit code for it, kept or removed.
func outcomeOf(out *Output, paths Paths, code int) vmOutcome {
	oc, _ := out.childOutcome()
	oc.VM, oc.ExitCode, oc.Outcome = paths.Name(), code, "removed"
	if made(paths) {
		oc.Outcome = "kept"
		if p := journalPhase(paths); p != noPhase {
			oc.Phase = p.String()
		}
	}
	return oc
}

// runEnvStatus lists the environment's VMs: those of the file, and those its
// VMs' journals say were made here that the file no longer has (outside it).
// With NAMEs, each of those VMs as `status NAME` shows it.
func runEnvStatus(env Env, o *Options) int {
	e := o.Env
	if len(o.Names) > 0 {
		code := exitOK
		for _, vm := range e.acted(o) {
			vo, err := e.options(vm)
			if err != nil {
				return reportError(env.Out, err)
			}
			if c := runStatus(env, vo); code == exitOK {
				code = c
			}
		}
		return code
	}
	var names []string
	for _, vm := range e.VMs {
		names = append(names, e.fullName(vm.Name))
	}
	outside, err := e.outside(env.Home)
	if err != nil {
		return reportError(env.Out, err)
	}
	if !o.JSON {
		fmt.Printf(statusRow, "NAME", "PHASE", "DOMAIN", "SSH", "AGE", "FORWARDS")
	}
	list, errs := statusOfAll(env.ctx(), env, append(names, outside...))
	for _, s := range list {
		s.Environment = e.Name
		s.OutsideFile = slices.Contains(outside, s.Name)
		if s.OutsideFile && !o.JSON {
			s.Name += " *"
		}
		printStatus(env, o, s)
	}
	if len(outside) > 0 && !o.JSON {
		fmt.Printf("* made in this directory's environment %s, and no longer in %s: `vmup destroy NAME` elsewhere removes it\n", e.Name, configFile)
	}
	code := exitOK
	for _, err := range errs {
		code = reportError(env.Out, err)
	}
	return code
}

// outside names the VMs made in this environment (its name and directory)
// that its file no longer has.
func (e *Environment) outside(home string) ([]string, error) {
	all, err := listVMs(home)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, name := range all {
		j, err := readJournal(pathsFor(home, name))
		if err != nil || j == nil || j.Env == nil || j.Env.Name != e.Name || j.Env.Dir != e.Dir {
			continue
		}
		if _, in := e.lookup(j.Env.VM); !in {
			names = append(names, name)
		}
	}
	return names, nil
}

// runEnvUp brings the environment's VMs up (those named, else every VM of
// the file) as one: each VM set up as `up` does for one (its checks, its
// lock), nothing changed until every VM passed them; then one loop (env.go).
func runEnvUp(env Env, o *Options) int {
	r, code := prepareEnvUp(env, o)
	if r == nil {
		return code
	}
	defer func() {
		for _, u := range r.vms {
			u.lock.Unlock()
		}
	}()
	if !env.commit() { // from here the loop handles the signals
		return exitFailed // a signal ended it: the guard has its code
	}
	return r.run()
}

// prepareEnvUp does what an environment's up decides before its loop: each
// VM's checks and lock, and one playbook for the new ones. It returns the
// run (holding every VM's lock), or nil and the exit code.
func prepareEnvUp(env Env, o *Options) (run *envRun, code int) {
	e, out := o.Env, env.Out
	vms := e.acted(o)
	var runs []*upRun
	defer func() {
		if run == nil {
			for _, u := range runs {
				u.lock.Unlock()
			}
		}
	}()
	for _, vm := range vms {
		vo, err := e.options(vm)
		if err != nil {
			return nil, reportError(out, err)
		}
		switch {
		case vo.RestrictNetwork:
			return nil, reportError(out, usagef("leave out restrict-network: the VMs of an environment reach each other through QEMU's gateway",
				"VM %s: --restrict-network cuts a VM off from the other VMs of its environment", vm.Name))
		case vo.SuspendOnStop:
			return nil, reportError(out, usagef("leave out suspend-on-stop, and save the VMs with `vmup down --suspend`",
				"VM %s: --suspend-on-stop is not taken by an environment's up", vm.Name))
		case vo.Parallel < 0:
			return nil, reportError(out, usagef("", "--parallel %d: want 1 or more", vo.Parallel))
		}
		venv := env
		venv.Out, venv.Signals = out.forVM(vo.Name, e.label(vm, vms)), nil
		u, lock, code := setupUp(venv, vo)
		if u == nil {
			return nil, code
		}
		u.lock = lock
		runs = append(runs, u)
	}
	// One playbook for every VM whose first boot is not complete.
	var pb *Options
	for _, u := range runs {
		if u.kind != startFresh && u.kind != startResumeFirst {
			continue
		}
		if pb != nil && (u.o.Playbook != pb.Playbook || !slices.Equal(u.o.PlaybookArgs, pb.PlaybookArgs) || u.o.NoProvision != pb.NoProvision) {
			return nil, reportError(out, usagef(fmt.Sprintf("give every VM of %s the same \"playbook\" (a play's hosts: pick the VMs)", configFile),
				"VMs %s and %s would run different playbooks: an environment runs one", pb.EnvVM, u.o.EnvVM))
		}
		pb = u.o
	}
	first := runs[0].o
	parallel := first.Parallel
	if parallel == 0 {
		parallel = defaultParallel(runs)
	}
	r := &envRun{env: env, o: first, e: e, vms: runs, parallel: parallel, events: make(chan evMsg, 64)}
	for _, u := range runs {
		u.envRun = r
	}
	return r, 0
}

// defaultParallel is how many first boots this host takes at once: one per
// core, as far as its memory holds the VMs.
func defaultParallel(runs []*upRun) int {
	n := runtime.NumCPU()
	most := 0
	for _, u := range runs {
		most = max(most, u.o.MemoryMiB)
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil && most > 0 {
		n = min(n, int(uint64(si.Totalram)*uint64(si.Unit)>>20/uint64(most)))
	}
	return max(1, n)
}
