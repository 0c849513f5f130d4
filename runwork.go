// The workers of `vmup run`: the workload under each guest's runner, the
// stop request, the collection, the teardown and the cleanup.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// stopMargin is how long vmup waits for a confirmation beyond the runner's
// own --stop-timeout: the last poll, a slow guest.
const stopMargin = 10 * time.Second

// pollEvery is how often a runner's state and log are read again after a
// read failed; followWait is how long the guest waits for news each time.
var (
	pollEvery  = 250 * time.Millisecond
	followWait = time.Second
)

// startWorkload is start_workload's worker: each VM's master connection,
// an orphaned workload stopped, the --sync dirs, then its runner, followed
// until the run ends.
func (r *runRun) startWorkload(ctx context.Context) {
	out := r.env.Out
	out.Say("workload", "Run %s: %s on %s", r.id, r.workloadName(), r.names())
	if r.o.Workload != "" {
		r.playbookWorkload(ctx)
		return
	}
	var wg sync.WaitGroup
	for _, v := range r.vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.startOn(ctx, v)
		}()
	}
	wg.Wait()
}

func (r *runRun) workloadName() string {
	if r.o.Workload != "" {
		return "the playbook " + r.o.Workload
	}
	return "`" + strings.Join(r.argv, " ") + "`"
}

// playbookWorkload is --workload PLAYBOOK: the --sync dirs, then one
// ansible-playbook over the run's VMs from this host. Its status is each
// VM's; a stop stops its process group, which always ends it: that is
// every VM's confirmation.
func (r *runRun) playbookWorkload(ctx context.Context) {
	for _, v := range r.vms {
		if v.ssh == nil && len(r.o.Sync) > 0 {
			r.send(runMsg{vm: v, news: newsStartFail, err: fmt.Errorf("VM %s: no SSH endpoint in its journal", v.o.Name)})
			return
		}
		if err := r.syncTo(ctx, v); err != nil {
			if ctx.Err() == nil {
				r.send(runMsg{vm: v, news: newsStartFail, err: err})
			}
			r.confirmAll(ctx)
			return
		}
	}
	// Started once the syncs are done: a failed sync leaves nothing running
	// to wait for, and a stop cancels ctx, which ends the playbook.
	for _, v := range r.vms {
		r.send(runMsg{vm: v, news: newsStarted})
	}
	var keep io.Writer = io.Discard
	if err := os.MkdirAll(r.results, 0o755); err == nil {
		if f, err := os.Create(filepath.Join(r.results, "workload.log")); err == nil {
			defer f.Close()
			keep = f
		}
	}
	logPath, err := r.runPlaybookOver(ctx, r.o.Workload, io.MultiWriter(r.env.Out.Indented("workload | "), keep))
	code := exitOK
	var ee *ExitError
	switch {
	case ctx.Err() != nil:
		r.confirmAll(ctx)
		return
	case errors.As(err, &ee):
		code = ee.ExitCode
	case err != nil:
		code = exitFailed
	}
	if err != nil {
		noteAnsibleExit(r.env.Out, err, logPath)
	}
	for _, v := range r.vms {
		r.send(runMsg{vm: v, news: newsExited, code: code})
	}
}

// confirmAll tells the loop that nothing of a playbook workload runs.
func (r *runRun) confirmAll(ctx context.Context) {
	if ctx.Err() == nil {
		return
	}
	for _, v := range r.vms {
		r.send(runMsg{vm: v, news: newsConfirmed})
	}
}

func (r *runRun) names() string {
	var names []string
	for _, v := range r.vms {
		names = append(names, v.label)
	}
	return strings.Join(names, ", ")
}

// startOn brings v's workload up and follows it. A stop asked for before
// its runner was started leaves it unstarted (the loop counts it stopped).
func (r *runRun) startOn(ctx context.Context, v *runVM) {
	fail := func(err error) { r.send(runMsg{vm: v, news: newsStartFail, err: err}) }
	if v.ssh == nil {
		fail(fmt.Errorf("VM %s: no SSH endpoint in its journal", v.o.Name))
		return
	}
	j, _ := readJournal(v.paths)
	if j == nil {
		j = &Journal{}
	}
	if v.ssh.control != "" {
		os.Remove(v.ssh.control) // a killed run's socket, whose master is gone
	}
	// The first commands connect by themselves (ssh does while no master
	// listens on the ControlPath): a short workload is done in one
	// connection. A master comes once the workload outlives its start.
	startMaster := sync.OnceFunc(func() {
		if v.ssh.control != "" {
			go v.ssh.WaitMaster(r.followCtx, r.followCtx, r.env.Poll, func(context.Context) error { return nil })
		}
	})
	if len(r.o.Sync) > 0 {
		startMaster()
	}
	if old := j.Run; old != nil && old.ID != r.id {
		v.out.Say("orphan", "VM %s runs the workload of run %s (vmup pid %d, since %s): stopping it first",
			v.o.Name, old.ID, old.PID, old.Since.Local().Format(time.DateTime))
		stopOrphan(ctx, v.out, v.ssh, v.paths, old, r.env.Poll)
	}
	if err := r.syncTo(ctx, v); err != nil {
		if ctx.Err() == nil {
			fail(err)
		}
		return
	}
	if ctx.Err() != nil {
		return // stopped before its runner began: nothing runs there
	}
	if err := updateJournalFile(v.paths, func(j *Journal) {
		j.Run = &JournalRun{ID: r.id, Since: time.Now().UTC(), PID: os.Getpid()}
	}); err != nil {
		fail(fmt.Errorf("VM %s: cannot record the run: %w", v.o.Name, err))
		return
	}
	r.send(runMsg{vm: v, news: newsStarted})
	// Not cancelled by a stop: a runner half started is asked to stop by
	// the request it finds, and confirms.
	startCtx, cancel := context.WithTimeout(r.followCtx, time.Minute+followWait)
	st, data, err := startAndWait(startCtx, v.ssh, r.id, r.argv, r.o.StopTimeout, followWait)
	cancel()
	if err != nil {
		fail(fmt.Errorf("VM %s: cannot start the workload's runner: %w", v.o.Name, err))
	}
	if !st.Exited {
		startMaster()
	}
	r.followRunner(v, st, data, err)
}

// followRunner reads v's runner every fraction of a second, on a channel of
// its own (an ssh command each time, never through the workload): its log
// goes to the output and the results, its end and its confirmation to the loop.
func (r *runRun) followRunner(v *runVM, st runnerState, data []byte, err error) {
	logw := prefixLines(v.out.Indented(""), "")
	defer logw.Close()
	var keep *os.File
	if dir := filepath.Join(r.results, v.label); os.MkdirAll(dir, 0o755) == nil {
		keep, _ = os.OpenFile(filepath.Join(dir, "workload.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	}
	if keep != nil {
		defer keep.Close()
	}
	var off int64
	exited, confirmed := false, false
	for first := true; r.followCtx.Err() == nil; first = false {
		if !first { // the first answer came with the start
			ctx, cancel := context.WithTimeout(r.followCtx, 5*time.Second+followWait)
			st, data, err = waitRunner(ctx, v.ssh, r.id, off, followWait)
			cancel()
		}
		if err == nil {
			off += int64(len(data))
			logw.Write(data)
			if keep != nil {
				keep.Write(data)
			}
			if st.Exited && !exited {
				exited = true
				updateJournalFile(v.paths, func(j *Journal) { j.Run = nil })
				r.send(runMsg{vm: v, news: newsExited, code: st.ExitCode})
			}
			if st.StopConfirmed && !confirmed {
				confirmed = true
				r.send(runMsg{vm: v, news: newsConfirmed})
			}
			if exited && !st.LogMore {
				return // its log is whole: it was read after its end
			}
			if st.LogMore {
				continue // more log than one poll brings
			}
		}
		if err == nil && !st.Missing {
			continue // the guest waited for news: ask again at once
		}
		if sleepCtx(r.followCtx, pollEvery) != nil {
			return
		}
	}
}

// requestStops is request_stop: the start of what has not started is
// cancelled, the stop request with the run id is written in every guest
// whose runner was tried, and a deadline is armed. The followers bring the
// confirmations.
func (r *runRun) requestStops() {
	r.stopAsked = true
	r.stopWork() // syncs and connections not yet done: nothing starts any more
	r.stopGen++
	gen := r.stopGen
	wait := r.o.StopTimeout + stopMargin
	r.env.Clock.AfterFunc(wait, func() { r.send(runMsg{ev: RunEvStopUnconfirmed, gen: gen}) })
	var asked []string
	deadline := time.Now().Add(wait)
	for _, v := range r.vms {
		if v.exited || r.o.Workload != "" {
			continue
		}
		// A runner whose start the loop has not heard of yet may be
		// starting: the request is there before it, and it never starts
		// its workload.
		if v.attempted {
			asked = append(asked, v.label)
		}
		if v.ssh == nil {
			continue
		}
		go func() {
			// The request, and a wait in the guest for its confirmation; a
			// call that hangs (a paused guest) is cut and tried again.
			for time.Now().Before(deadline) && r.followCtx.Err() == nil {
				began := time.Now()
				ctx, cancel := context.WithTimeout(r.followCtx, min(time.Until(deadline), 3*time.Second))
				err := awaitStop(ctx, v.ssh, r.id, 2*time.Second)
				cancel()
				if err == nil {
					ctx, cancel := context.WithTimeout(r.followCtx, 5*time.Second)
					st, _, err := pollRunner(ctx, v.ssh, r.id, -1)
					cancel()
					if err == nil && (st.StopConfirmed || st.Exited) {
						r.send(runMsg{vm: v, news: newsConfirmed})
						return
					}
				}
				if time.Since(began) < pollEvery {
					sleepCtx(r.followCtx, pollEvery) // a refused connection: not at once again
				}
			}
		}()
	}
	if r.o.Workload != "" {
		r.env.Out.Say("stopping", "Stopping the workload playbook (run %s)", r.id)
	}
	if len(asked) > 0 {
		r.env.Out.Say("stopping", "Stopping the workload on %s (run %s): waiting up to %s for each runner to confirm",
			strings.Join(asked, ", "), r.id, wait)
	}
	r.derive() // nothing started anywhere: stopped already
}

// collect is collect's worker: every --collect path of every VM into
// --results/RUN_ID/VM/, also after a failed or stopped workload.
func (r *runRun) collect(ctx context.Context) {
	defer r.send(runMsg{ev: RunEvCollected})
	if len(r.o.Collect) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, v := range r.vms {
		if v.ssh == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := filepath.Join(r.results, v.label)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				v.out.Warn("cannot collect into %s: %v", dir, err)
				return
			}
			for _, p := range r.o.Collect {
				if err := collectFromGuest(ctx, v.ssh, p, dir); err != nil {
					if ctx.Err() != nil {
						return
					}
					v.out.Warn("cannot collect %s:%s: %v", v.label, p, err)
					continue
				}
				v.out.Say("collected", "Collected %s:%s into %s", v.label, p, dir)
			}
		}()
	}
	wg.Wait()
}

// teardown is teardown's worker: the --teardown playbook over the run's VMs.
func (r *runRun) teardown(ctx context.Context) {
	if r.o.Teardown == "" {
		r.send(runMsg{ev: RunEvTeardownPassed})
		return
	}
	out := r.env.Out
	out.Say("teardown", "Teardown: %s on %s", r.o.Teardown, r.names())
	logPath, err := r.runPlaybookOver(ctx, r.o.Teardown, out.Indented("teardown | "))
	switch {
	case ctx.Err() != nil:
		r.send(runMsg{ev: RunEvTeardownFailed})
	case err != nil:
		noteAnsibleExit(out, err, logPath)
		out.Warn("the teardown playbook failed: %v (log %s)", err, logPath)
		r.send(runMsg{ev: RunEvTeardownFailed})
	default:
		r.teardownOK = true
		r.send(runMsg{ev: RunEvTeardownPassed})
	}
}

// syncTo puts every --sync dir into v, in order; the first failure ends it.
func (r *runRun) syncTo(ctx context.Context, v *runVM) error {
	for _, spec := range r.o.Sync {
		hostDir, guestDir, _ := syncSpec(spec)
		v.out.Say("sync", "Syncing %s to %s:%s", hostDir, v.label, guestDir)
		if err := syncToGuest(ctx, v.ssh, hostDir, guestDir); err != nil {
			return fmt.Errorf("VM %s: --sync %s: %w", v.o.Name, spec, err)
		}
	}
	return nil
}
