// `vmup provision` in an environment's directory: one playbook over its VMs.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// runEnvProvision runs one ansible-playbook over the environment's inventory,
// limited to the VMs named (every VM of the file without NAME), as up's
// setup playbook runs. It never wipes anything: a signal stops the playbook
// and keeps the VMs.
func runEnvProvision(env Env, o *Options) int {
	e, out := o.Env, env.Out
	type target struct {
		vm    envVM
		paths Paths
		j     *Journal
	}
	var targets []target
	var locks []*Lock
	defer func() {
		for _, l := range locks {
			l.Unlock()
		}
	}()
	playbook, args := "", []string(nil)
	for i, vm := range e.acted(o) {
		vo, err := e.options(vm)
		if err != nil {
			return reportError(out, err)
		}
		venv := env
		venv.Out = out.forVM(vo.Name, vm.Name)
		paths := pathsFor(env.Home, vo.Name)
		if len(o.Names) == 0 && !made(paths) {
			venv.Out.Say("skipped", "VM %s (%s) was never made: nothing to provision", vm.Name, vo.Name)
			continue
		}
		paths, j, code := loadVM(venv, vo, "provision")
		if j == nil {
			return code
		}
		lock, code := lockVM(venv.Out, paths, "provision")
		if lock == nil {
			return code
		}
		locks = append(locks, lock)
		pb, pa := absPath(vo.Playbook), vo.PlaybookArgs
		if pb == "" {
			pb, pa = j.Playbook, j.PlaybookArgs
		}
		if i > 0 && (pb != playbook || !slices.Equal(pa, args)) {
			return reportError(out, usagef(fmt.Sprintf("give one with `vmup provision --playbook FILE`, or every VM the same \"playbook\" in %s", configFile),
				"the VMs would run different playbooks: an environment runs one"))
		}
		playbook, args = pb, pa
		v := newVirsh(env.Runner, j.Connect)
		if err := checkLibvirt(env.ctx(), v); err != nil {
			return reportError(out, err)
		}
		if state, err := v.DomState(env.ctx(), vo.Name); err != nil || state != "running" {
			return reportError(out, &hintedError{msg: fmt.Sprintf("VM %s is not running", vo.Name), hint: "run `vmup up -d` to start the VMs"})
		}
		targets = append(targets, target{vm, paths, j})
	}
	if len(targets) == 0 {
		return exitOK
	}
	if playbook == "" {
		return reportError(out, usagef("run `vmup provision --playbook FILE` to name one", "no playbook to run"))
	}
	if _, err := os.Stat(playbook); err != nil {
		return reportError(out, usagef("", "--playbook %s: no such file", playbook))
	}
	home, _ := filepath.Abs(env.Home)
	tree, err := envInventory(home, e, false, out.Warn)
	inventory := targets[0].paths.File("env-inventory.json")
	if err == nil {
		err = writeFileAtomic(inventory, marshalInventory(tree), 0o600)
	}
	if err != nil {
		return reportError(out, err)
	}
	if !env.commit() { // from here a signal stops the playbook and keeps the VMs
		return exitFailed // a signal ended it: the guard has its code
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var names []string
	for _, t := range targets {
		names = append(names, t.vm.Name)
	}
	var sig os.Signal
	go func() {
		sig = <-env.Signals
		out.Say("interrupted", "Interrupted: stopping the playbook; VMs %s are kept", strings.Join(names, ", "))
		cancel()
	}()
	// Journalled in each VM while it runs, as for one VM's provision.
	journalGroup := func(pgid int) {
		for _, t := range targets {
			if cur, err := readJournal(t.paths); err == nil && cur != nil && cur.PlaybookPGID != pgid {
				cur.PlaybookPGID = pgid
				if err := writeJournal(t.paths, cur); err != nil {
					out.Warn("cannot write %s: %v", t.paths.Journal(), err)
				}
			}
		}
	}
	for _, t := range targets {
		reapGroup(t.j.PlaybookPGID, t.paths)
	}
	journalGroup(0)
	out.Plan(1)
	out.Step(fmt.Sprintf("Provisioning %s with %s", strings.Join(names, ", "), playbook))
	logPath, err := newAnsible(env.Runner).RunHosts(ctx, targets[0].paths, inventory,
		append(append([]string{"--limit", strings.Join(names, ",")}, args...), playbook), out.Indented("ansible | "), journalGroup)
	journalGroup(0)
	code := exitOK
	switch {
	case ctx.Err() != nil:
		out.Fail("interrupted")
		code = signalExit(sig)
	case err != nil:
		out.Fail("see " + logPath)
		noteAnsibleExit(out, err, logPath)
		code = reportError(out, &hintedError{msg: err.Error(), code: exitProvision})
	default:
		out.Done("")
	}
	for _, t := range targets {
		out.addOutcome(outcomeOf(out.forVM(t.paths.Name(), ""), t.paths, code))
	}
	return code
}
