// How `vmup run` ends: the teardown's playbook, the cleanup as --destroy
// says, and the exit event that says how each VM ended.
package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// runPlaybookOver runs playbook over the run's VMs: the environment's
// inventory, or the VM's own.
func (r *runRun) runPlaybookOver(ctx context.Context, playbook string, w io.Writer) (string, error) {
	first := r.vms[0]
	a := newAnsible(r.env.Runner)
	if r.o.Env != nil {
		home, _ := filepath.Abs(r.env.Home)
		tree, err := envInventory(home, r.o.Env, true, r.env.Out.Warn)
		if err != nil {
			return "", err
		}
		inventory := first.paths.File("env-inventory.json")
		if err := writeFileAtomic(inventory, marshalInventory(tree), 0o600); err != nil {
			return "", err
		}
		var names []string
		for _, v := range r.vms {
			names = append(names, v.o.EnvVM)
		}
		return a.RunHosts(ctx, first.paths, inventory, []string{"--limit", strings.Join(names, ","), playbook}, w, nil)
	}
	if err := writeInventory(first.paths, first.o.Name, first.ssh.user, first.ssh.ep); err != nil {
		return "", err
	}
	return a.Run(ctx, first.paths, first.ssh, playbook, nil, w, nil)
}

// destroys says whether the run's end lets cleanup destroy the VMs it made.
func (r *runRun) destroys() bool {
	switch r.o.DestroyWhen {
	case "never":
		return false
	case "always":
		return r.end != RunStopFailed
	}
	return r.end == RunAborted || r.end == RunFinished && r.exit == exitOK
}

// cleanup is cleanup's worker: the VMs the run made are destroyed or kept,
// as --destroy says; the VMs that were there are put back as they were.
func (r *runRun) cleanup(ctx context.Context) {
	defer r.send(runMsg{ev: RunEvCleaned})
	r.follow() // the followers and the masters end here
	for _, v := range r.vms {
		if v.ssh != nil {
			ectx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			v.ssh.Exit(ectx)
			cancel()
		}
	}
	destroy := r.destroys()
	var kept []*runVM
	for _, v := range r.vms {
		v.lock.Unlock() // destroy and down take it themselves
		venv := r.env
		venv.Out, venv.Signals, venv.Abort = v.out, nil, nil
		switch {
		case v.created && destroy:
			v.out.Say("cleanup", "Destroying VM %s (made by run %s)", v.o.Name, r.id)
			if runDestroy(venv, v.o) != exitOK {
				kept = append(kept, v)
			}
		case v.created:
			kept = append(kept, v)
		case v.before == "shut off" || v.before == "saved":
			do := *v.o
			do.Suspend, do.Force = v.before == "saved", false
			v.out.Say("cleanup", "Putting VM %s back as it was (%s)", v.o.Name, v.before)
			runDown(venv, &do)
		}
	}
	for _, v := range kept {
		r.env.Out.Say("kept", "VM %s is kept: `vmup ssh %s` to look, `vmup destroy %s` to remove it", v.o.Name, v.o.Name, v.o.Name)
	}
}

// finish ends the run with the exit event: the stage it ended in, each
// VM's workload status, and which VMs were kept.
func (r *runRun) finish() int {
	r.follow() // the followers end first: the workload's worker waits for them
	r.stopWork()
	r.waitOldWorkers(r.oldWorkers)
	out := r.env.Out
	for _, v := range r.vms {
		oc := outcomeOf(v.out, v.paths, r.exit)
		oc.VM = v.o.Name
		if v.exited {
			code := v.code
			oc.WorkloadExit = &code
		}
		out.addOutcome(oc)
	}
	switch r.end {
	case RunFinished:
		if r.exit == exitOK {
			out.Say("finished", "Run %s passed", r.id)
		} else {
			out.Say("finished", "Run %s: the workload failed (exit %d); results in %s", r.id, r.exit, r.results)
		}
	case RunAborted:
		out.Say("aborted", "Run %s stopped", r.id)
	case RunFailed:
		out.Say("failed", "Run %s failed in %s", r.id, strings.ReplaceAll(r.stage.String(), "_", " "))
	}
	out.SetRun(r.id, r.stage.String())
	out.Exit(r.exit, r.end.String())
	return r.exit
}

// sshOfJournal is vmup's ssh to a VM as its journal has it; nil without one.
func sshOfJournal(rn Runner, name string, paths Paths) *SSH {
	j, err := readJournal(paths)
	if err != nil || j == nil || j.SSHPort == 0 {
		return nil
	}
	return sshFromJournal(rn, name, paths, j)
}

// sshFromJournal is vmup's ssh to the endpoint journal j records.
func sshFromJournal(rn Runner, name string, paths Paths, j *Journal) *SSH {
	host := j.SSHHost
	if host == "" {
		host = "127.0.0.1"
	}
	s := newSSH(rn, name, j.User, paths, Endpoint{Host: host, Port: j.SSHPort})
	s.control = controlPath(paths, j)
	return s
}

// updateJournalFile changes a VM's journal on disk (its lock is held).
func updateJournalFile(paths Paths, change func(*Journal)) error {
	j, err := readJournal(paths)
	if err != nil {
		return err
	}
	if j == nil {
		return fmt.Errorf("VM %s has no journal", paths.Name())
	}
	change(j)
	return writeJournal(paths, j)
}
