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
		out.Warn("the workload of run %s did not confirm its stop within %s; going on", run.ID, orphanStopTimeout+stopMargin)
	case err != nil:
		out.Warn("cannot stop the workload of run %s: %v; going on", run.ID, err)
	default:
		out.Say("orphan_stopped", "The workload of run %s stopped (exit %d)", run.ID, code)
	}
	if err := updateJournalFile(paths, func(j *Journal) { j.Run = nil }); err != nil {
		out.Warn("cannot write %s: %v", paths.Journal(), err)
	}
}
