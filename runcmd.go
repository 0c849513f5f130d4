// `vmup run`: its checks, its VMs and its setup, decided before its loop.
package main

import (
	"os"
	"path/filepath"
	"time"
)

// stringList collects a repeatable flag (--sync, --collect).
type stringList struct{ list *[]string }

func (s stringList) String() string     { return "" }
func (s stringList) Set(v string) error { *s.list = append(*s.list, v); return nil }

// validateRun checks what only a run has, before anything is made.
func validateRun(o *Options, argv []string) error {
	switch {
	case len(argv) == 0 && o.Workload == "":
		return usagef("give the workload after `--` (`vmup run NAME -- make test`), or --workload PLAYBOOK", "vmup run needs a workload")
	case len(argv) > 0 && o.Workload != "":
		return usagef("give a workload after -- or --workload PLAYBOOK, not both", "a command after -- and --workload %s exclude each other", o.Workload)
	case o.DestroyWhen != "passing" && o.DestroyWhen != "always" && o.DestroyWhen != "never":
		return usagef("", "--destroy %q: want passing, always or never", o.DestroyWhen)
	case o.StopTimeout <= 0:
		return usagef("", "--stop-timeout must be positive")
	case o.SuspendOnStop:
		return usagef("leave out suspend-on-stop: a run stops its workload, not its VMs", "--suspend-on-stop is not taken by vmup run")
	case o.Results == "":
		return usagef("", "--results needs a directory")
	}
	for _, spec := range o.Sync {
		hostDir, _, err := syncSpec(spec)
		if err != nil {
			return usagef("write --sync HOST_DIR[:GUEST_DIR]", "--sync %q: %v", spec, err)
		}
		if st, err := os.Stat(hostDir); err != nil || !st.IsDir() {
			return usagef("", "--sync %s: no such directory", hostDir)
		}
	}
	for _, p := range o.Collect {
		if p == "" {
			return usagef("", "--collect needs a path in the guest")
		}
		if _, err := guestBase(p); err != nil {
			return err
		}
	}
	if o.Workload != "" {
		if err := checkRegular("--workload", o.Workload); err != nil {
			return err
		}
		o.Workload = absPath(o.Workload)
	}
	if o.Teardown != "" {
		if err := checkRegular("--teardown", o.Teardown); err != nil {
			return err
		}
		o.Teardown = absPath(o.Teardown)
	}
	return nil
}

// cmdRun is `vmup run`: the setup (as `up -d`) of one VM, made for the run
// when it has no name, or of an environment; then the run's loop.
func cmdRun(env Env, o *Options, argv []string) int {
	out := env.Out
	if err := validateRun(o, argv); err != nil {
		return reportError(out, err)
	}
	r := &runRun{env: env, o: o, argv: argv, id: newRunID(time.Now()), events: make(chan runMsg, 64)}
	results, err := filepath.Abs(o.Results)
	if err != nil {
		return reportError(out, err)
	}
	r.results = filepath.Join(results, r.id)
	if o.Env != nil {
		out.SetEnvironment(o.Env.Name)
		if code := r.prepareEnv(); code >= 0 {
			return code
		}
	} else if code := r.prepareVM(); code >= 0 {
		return code
	}
	defer func() {
		for _, v := range r.vms {
			v.lock.Unlock()
		}
	}()
	if !env.commit() { // from here the loop handles the signals
		return exitFailed // a signal ended it: the guard has its code
	}
	out.Say("run", "Run %s: setting up %s", r.id, r.names())
	return r.loop()
}

// prepareVM sets up one VM: NAME, vmup.json's "name", or one the run names.
func (r *runRun) prepareVM() int {
	o := r.o
	if o.Name == "" {
		o.Name = "run-" + r.id[len(r.id)-6:]
	}
	o.Detach = true
	v := r.newRunVM(o, "")
	venv := r.env
	venv.Out, venv.Signals = v.out, nil
	u, lock, code := setupUp(venv, o)
	if u == nil {
		return code
	}
	v.lock, v.created, v.up = lock, !u.holdJournal, u // no journal before: this run makes it
	r.vms = []*runVM{v}
	r.setup = &vmSetup{u: u, ch: make(chan evMsg, 16)}
	return -1
}

// prepareEnv sets up the environment's VMs (those named, else all).
func (r *runRun) prepareEnv() int {
	e := r.o.Env
	before := map[string]bool{}
	for _, vm := range e.acted(r.o) {
		before[e.fullName(vm.Name)] = made(pathsFor(r.env.Home, e.fullName(vm.Name)))
	}
	eenv := r.env
	eenv.Out, eenv.Signals = r.env.Out.forVM("", ""), nil
	er, code := prepareEnvUp(eenv, r.o)
	if er == nil {
		return code
	}
	er.holdLocks = true
	acted := e.acted(r.o)
	for i, u := range er.vms {
		u.o.Detach = true
		v := r.newRunVM(u.o, e.label(acted[i], acted))
		v.lock, v.created, v.up = u.lock, !before[u.o.Name], u
		r.vms = append(r.vms, v)
	}
	r.setup = &envSetup{r: er}
	return -1
}

// newRunVM is a VM of the run with its label, output and state before.
func (r *runRun) newRunVM(o *Options, label string) *runVM {
	v := &runVM{o: o, label: label, paths: pathsFor(r.env.Home, o.Name)}
	if v.label == "" {
		v.label = o.Name
	}
	prefix := ""
	if label != "" {
		prefix = label
	}
	v.out = r.env.Out.forVM(o.Name, prefix)
	// Running unless its journal says otherwise; a VM the setup boots did
	// not run either (afterSetupStep).
	if j, err := readJournal(v.paths); err == nil && j != nil {
		v.before = "running"
		switch j.Phase {
		case Saved:
			v.before = "saved"
		case Stopped, Failed, StopFailed, Aborted:
			v.before = "shut off"
		}
	}
	return v
}
