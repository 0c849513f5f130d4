// The environment's one playbook, and the fan-out of its result.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// runPlaybook is run_playbook's worker: one ansible-playbook over the
// environment's inventory (every VM made, in its groups), limited to vms,
// whose first boots wait for it; then each one's completed first boot is
// recorded on disk, before the environment hears the result.
func (r *envRun) runPlaybook(ctx context.Context, vms []*upRun) {
	out := r.env.Out
	if len(vms) == 0 {
		r.sendEnv(EnvEvPlaybookPassed) // no new VM: nothing to run or record
		return
	}
	first := vms[0]
	var names []string
	for _, u := range vms {
		names = append(names, u.o.EnvVM)
	}
	// While there is space: the playbook may fill the disk.
	for _, u := range vms {
		if err := u.prepareCompletion(); err != nil {
			r.fault = fmt.Errorf("cannot prepare the record of VM %s's completed first boot: %w", u.o.Name, err)
			r.sendEnv(EnvEvPlaybookFailed)
			return
		}
	}
	o := first.o
	if o.Playbook != "" && !o.NoProvision {
		home, _ := filepath.Abs(r.env.Home)
		tree, err := envInventory(home, r.e, true, out.Warn)
		inventory := first.paths.File("env-inventory.json")
		if err == nil {
			err = writeFileAtomic(inventory, marshalInventory(tree), 0o600)
		}
		if err != nil {
			r.fault = err
			r.sendEnv(EnvEvPlaybookFailed)
			return
		}
		out.Say("playbook", "Provisioning %s with %s (one ansible-playbook for the environment)", strings.Join(names, ", "), o.Playbook)
		args := append([]string{"--limit", strings.Join(names, ",")}, o.PlaybookArgs...)
		setPGID := func(pgid int) {
			for _, u := range vms {
				u.updateJournal(func(j *Journal) { j.PlaybookPGID = pgid })
			}
		}
		logPath, err := newAnsible(r.env.Runner).RunHosts(ctx, first.paths, inventory, append(args, o.Playbook),
			out.Indented("ansible | "), setPGID)
		setPGID(0)
		if ctx.Err() != nil {
			return // stopped: the VMs are told what to do by the row that stopped it
		}
		for _, u := range vms {
			u.logPath = logPath
			if u != first && ensureDir(u.paths.Logs()) == nil { // `vmup logs` of each VM shows it
				if os.Link(logPath, filepath.Join(u.paths.Logs(), filepath.Base(logPath))) == nil {
					u.logPath = filepath.Join(u.paths.Logs(), filepath.Base(logPath))
				}
			}
		}
		if err != nil {
			noteAnsibleExit(out, err, logPath)
			r.fault = fmt.Errorf("%w (log %s)", err, logPath)
			r.sendEnv(EnvEvPlaybookFailed)
			return
		}
	}
	var recorded, failures []*upRun
	for _, u := range vms {
		done, err := u.commitFirstBoot(ctx)
		switch {
		case !done:
			return // a stop took hold first: the VMs are being aborted
		case err != nil:
			failures = append(failures, u)
			r.fault = err
		default:
			recorded = append(recorded, u)
		}
	}
	r.recorded, r.failures = recorded, failures
	if len(failures) > 0 {
		r.sendEnv(EnvEvRecordFailed)
		return
	}
	r.sendEnv(EnvEvPlaybookPassed)
}
