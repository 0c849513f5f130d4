// A workload whose `vmup run` died: shown by status, stopped through the
// runner's protocol by the next run, down or destroy of its VM.
package main

import (
	"context"
	"errors"
	"os"
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
	// A master of its own: the stop's calls are short ones over it, where each
	// would otherwise be a whole handshake with a slow guest (its run's
	// master is gone with its vmup). Without one, each call connects itself.
	s.control = controlPath(paths, nil)
	if s.control != "" {
		os.Remove(s.control)
		masterCtx, stopMaster := context.WithCancel(context.Background())
		defer stopMaster()
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := s.WaitMaster(wctx, masterCtx, 100*time.Millisecond, func(context.Context) error { return nil })
		cancel()
		if err != nil {
			s.control = ""
		} else {
			defer func() {
				ectx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				s.Exit(ectx)
				cancel()
			}()
		}
	}
	env.Out.Say("orphan", "VM %s runs the workload of run %s (vmup pid %d, gone, since %s): stopping it first",
		name, j.Run.ID, j.Run.PID, j.Run.Since.Local().Format(time.DateTime))
	stopOrphan(ctx, env.Out, s, paths, j.Run, env.Poll)
}
