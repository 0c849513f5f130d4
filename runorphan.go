// A workload whose `vmup run` died: shown by status, stopped through the
// runner's protocol by the next run, down or destroy of its VM.
package main

import (
	"context"
	"errors"
	"time"
)

// orphanStopTimeout bounds the stop of a workload a dead vmup left.
const orphanStopTimeout = 30 * time.Second

// stopOrphan stops run's workload in the guest through its runner and
// clears the journal's record of it; it says how that went.
func stopOrphan(ctx context.Context, out *Output, s *SSH, paths Paths, run *JournalRun, poll time.Duration) {
	code, err := stopRunner(ctx, s, run.ID, time.Now().Add(orphanStopTimeout+stopMargin), poll)
	switch {
	case errors.Is(err, errStopUnconfirmed):
		out.Warn("the workload of run %s did not confirm its stop within %s (%v); going on", run.ID, orphanStopTimeout+stopMargin, err)
	case err != nil:
		out.Warn("cannot stop the workload of run %s: %v; going on", run.ID, err)
	default:
		out.Say("orphan_stopped", "The workload of run %s stopped (exit %d)", run.ID, code)
	}
	if err := updateJournalFile(paths, func(j *Journal) { j.Run = nil }); err != nil {
		out.Warn("cannot write %s: %v", paths.Journal(), err)
	}
}

// stopOrphanOf stops the workload the journal j records, if its vmup is
// gone (the caller holds the VM's lock) and the domain runs; destroy and
// down do it before they go on.
func stopOrphanOf(ctx context.Context, env Env, name string, paths Paths, j *Journal, v *Virsh) {
	if j.Run == nil {
		return
	}
	s := sshOfJournal(env.Runner, name, paths)
	if state, err := v.DomState(ctx, name); err != nil || state != "running" || s == nil {
		updateJournalFile(paths, func(j *Journal) { j.Run = nil }) // nothing runs it any more
		return
	}
	s.control = "" // its run's master is gone with it
	env.Out.Say("orphan", "VM %s runs the workload of run %s (vmup pid %d, gone, since %s): stopping it first",
		name, j.Run.ID, j.Run.PID, j.Run.Since.Local().Format(time.DateTime))
	stopOrphan(ctx, env.Out, s, paths, j.Run, env.Poll)
}
