package main

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// newTestRun is a run of VMs named names, in the workload, that nothing
// else follows: its loop's pieces are called by the test.
func newTestRun(names ...string) *runRun {
	r := &runRun{env: Env{Out: newOutput(io.Discard, nil, ""), Clock: realClock{}}, o: defaultOptions(),
		id: "20261204-000000-abcdef", events: make(chan runMsg, 64), phase: RunWorkload, end: runKeepEnd}
	r.startGroup()
	r.followCtx, r.follow = context.WithCancel(context.Background())
	for _, n := range names {
		r.vms = append(r.vms, &runVM{o: &Options{Name: n}, label: n, out: r.env.Out, attempted: true})
	}
	return r
}

// When the workload ran to its end everywhere, the run exits with its
// status: 0 when it passed on every VM, else the first failing VM's in the
// file's order, whichever ended first.
func TestRunExitStatusIsTheFirstFailingVMs(t *testing.T) {
	cases := []struct {
		name  string
		order []int // which VM reports in turn
		codes []int // each VM's status, in the file's order
		want  int
		end   RunPhase
	}{
		{"all pass", []int{2, 0, 1}, []int{0, 0, 0}, 0, RunFinished},
		{"the second fails", []int{0, 1, 2}, []int{0, 7, 0}, 7, RunFinished},
		{"the first in the file wins, not the first to end", []int{2, 1, 0}, []int{0, 4, 9}, 4, RunFinished},
		{"a signal's status is the workload's too", []int{0}, []int{130}, 130, RunFinished},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var names []string
			for i := range c.codes {
				names = append(names, string(rune('a'+i)))
			}
			r := newTestRun(names...)
			for _, i := range c.order {
				r.take(runMsg{vm: r.vms[i], news: newsExited, code: c.codes[i]})
			}
			if r.phase != RunCollecting || r.exit != c.want || r.end != c.end || r.stage != RunWorkload {
				t.Errorf("phase %s exit %d end %s stage %s; want collecting, exit %d, end %s, stage workload",
					r.phase, r.exit, r.end, r.stage, c.want, c.end)
			}
		})
	}
}

// Until every VM's workload ended, the run stays in its workload; a VM
// whose runner could not start stops the others (workload_lost, exit 1).
func TestRunWaitsForEveryVMAndStopsOnALostOne(t *testing.T) {
	r := newTestRun("a", "b")
	r.take(runMsg{vm: r.vms[0], news: newsExited, code: 0})
	if r.phase != RunWorkload {
		t.Fatalf("after one of two ended: %s", r.phase)
	}
	r = newTestRun("a", "b")
	r.vms[1].attempted = false
	r.take(runMsg{vm: r.vms[1], news: newsStartFail, err: io.ErrUnexpectedEOF})
	if r.phase != RunStoppingWorkload || r.exit != exitFailed || r.end != RunFailed {
		t.Errorf("a lost VM: phase %s exit %d end %s; want stopping_workload, 1, failed", r.phase, r.exit, r.end)
	}
	// b never started: only a's runner must confirm.
	r.take(runMsg{vm: r.vms[0], news: newsConfirmed})
	if r.phase != RunCollecting {
		t.Errorf("once a confirmed: %s, want collecting", r.phase)
	}
}

// A stop's confirmations are counted per VM; a workload that ended counts.
func TestRunStopNeedsEveryRunnersConfirmation(t *testing.T) {
	r := newTestRun("a", "b", "c")
	r.step(runMsg{ev: RunEvInterruptAgain}, nil)
	if r.phase != RunStoppingWorkload || r.exit != exitSIGINT {
		t.Fatalf("second Ctrl+C: %s exit %d", r.phase, r.exit)
	}
	r.take(runMsg{vm: r.vms[0], news: newsConfirmed})
	r.take(runMsg{vm: r.vms[2], news: newsExited, code: 0})
	if r.phase != RunStoppingWorkload {
		t.Fatalf("two of three stopped: %s", r.phase)
	}
	r.take(runMsg{vm: r.vms[1], news: newsConfirmed})
	if r.phase != RunCollecting || r.exit != exitSIGINT || r.end != RunAborted {
		t.Errorf("all confirmed: %s exit %d end %s", r.phase, r.exit, r.end)
	}
	// A deadline of an earlier stop is not this one's.
	r = newTestRun("a")
	r.step(runMsg{ev: RunEvTerminate}, nil)
	r.take(runMsg{ev: RunEvStopUnconfirmed, gen: r.stopGen + 1})
	if r.phase != RunStoppingWorkload {
		t.Errorf("a stale deadline moved the run to %s", r.phase)
	}
	r.take(runMsg{ev: RunEvStopUnconfirmed, gen: r.stopGen})
	if r.phase != RunStopFailed || r.exit != exitStopFailed {
		t.Errorf("unconfirmed: %s exit %d; want stop_failed, 4", r.phase, r.exit)
	}
}

// --destroy decides which ends destroy the VMs the run made.
func TestRunCleanupGating(t *testing.T) {
	cases := []struct {
		when string
		end  RunPhase
		exit int
		want bool
	}{
		{"passing", RunFinished, 0, true}, {"passing", RunFinished, 7, false}, {"passing", RunAborted, 130, true},
		{"passing", RunFailed, 1, false}, {"passing", RunStopFailed, 4, false},
		{"always", RunFinished, 7, true}, {"always", RunFailed, 3, true}, {"always", RunStopFailed, 4, false},
		{"never", RunFinished, 0, false}, {"never", RunAborted, 130, false},
	}
	for _, c := range cases {
		r := newTestRun("a")
		r.o.DestroyWhen, r.end, r.exit = c.when, c.end, c.exit
		if got := r.destroys(); got != c.want {
			t.Errorf("--destroy %s, end %s, exit %d: destroys %v, want %v", c.when, c.end, c.exit, got, c.want)
		}
	}
}

// A stop in the collection or the teardown does not turn a run that
// already failed, or whose workload failed, or that a stop already aborted,
// into a fresh abort: its VMs stay kept under --destroy passing, and its exit
// code stays the one decided first. Only a passing run becomes aborted.
func TestRunLateStopKeepsAnEndAlreadyDecided(t *testing.T) {
	cases := []struct {
		name     string
		phase    RunPhase
		end      RunPhase
		exit     int
		ev       RunEvent
		wantEnd  RunPhase
		wantExit int
		destroys bool
	}{
		{"workload lost, stop in collecting", RunCollecting, RunFailed, exitFailed, RunEvInterruptAgain, RunFailed, exitFailed, false},
		{"workload failed, stop in collecting", RunCollecting, RunFinished, 7, RunEvTerminate, RunFinished, 7, false},
		{"workload failed, stop in teardown", RunTeardown, RunFinished, 7, RunEvInterruptAgain, RunFinished, 7, false},
		{"aborted by SIGINT, SIGTERM in collecting", RunCollecting, RunAborted, exitSIGINT, RunEvTerminate, RunAborted, exitSIGINT, true},
		{"passed, stop in teardown", RunTeardown, RunFinished, exitOK, RunEvHangup, RunAborted, exitSIGHUP, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newTestRun("a")
			r.phase, r.end, r.exit = c.phase, c.end, c.exit
			r.step(runMsg{ev: c.ev}, nil)
			if r.end != c.wantEnd || r.exit != c.wantExit || r.destroys() != c.destroys {
				t.Errorf("end %s exit %d destroys %v; want end %s exit %d destroys %v",
					r.end, r.exit, r.destroys(), c.wantEnd, c.wantExit, c.destroys)
			}
			r.stopWork()
		})
	}
}

// A stop asked for while a VM's runner is being started (its start's news
// not yet taken by the loop) still reaches that guest: the runner, started
// after the loop asked, must find the request and never start the workload.
func TestRunStopReachesARunnerNotYetCounted(t *testing.T) {
	g, s := newLocalGuest(t, "", "")
	r := newTestRun("a")
	t.Cleanup(r.follow)
	v := r.vms[0]
	v.attempted, v.ssh = false, s // its newsStarted is still in the channel
	r.step(runMsg{ev: RunEvInterruptAgain}, nil)
	stop := filepath.Join(g.home, runDir(r.id), "stop")
	waitFor(t, 5*time.Second, "stop request in the guest", func() bool { return fileExists(stop) })
	mustStart(t, s, r.id, time.Second, "sh", "-c", "touch ran")
	st, _ := pollUntil(t, s, r.id, 10*time.Second, "exit", exited)
	if !st.StopConfirmed || fileExists(filepath.Join(g.home, "ran")) {
		t.Errorf("a runner started after the stop: %+v, workload ran %v", st, fileExists(filepath.Join(g.home, "ran")))
	}
}

// --workload PLAYBOOK whose --sync fails on one VM of several: the playbook
// never ran, so nothing is waited for; the run fails at once instead of
// waiting out the stop timeout and ending stop_failed.
func TestRunPlaybookWorkloadSyncFailureFails(t *testing.T) {
	r := newTestRun("a", "b")
	t.Cleanup(r.follow)
	r.o.Workload, r.o.Sync = "/nonexistent/work.yml", []string{t.TempDir()}
	for _, v := range r.vms {
		v.attempted = false // a.ssh is nil: its sync fails
	}
	r.playbookWorkload(r.workCtx)
	for n := len(r.events); n > 0; n-- {
		r.take(<-r.events)
	}
	if r.phase != RunCollecting || r.end != RunFailed || r.exit != exitFailed {
		t.Errorf("phase %s end %s exit %d; want collecting, failed, 1", r.phase, r.end, r.exit)
	}
	r.stopWork()
}

// A --collect path that has no name of its own to land under is refused
// before anything is made, not found out after the whole workload ran.
func TestValidateRunRefusesACollectWithoutAName(t *testing.T) {
	for _, p := range []string{"/", "~", "~/", ".", "..", "/tmp/.."} {
		o := defaultOptions()
		o.Collect = []string{p}
		if err := validateRun(o, []string{"true"}); err == nil {
			t.Errorf("--collect %q was taken", p)
		}
	}
	o := defaultOptions()
	o.Collect = []string{"/var/log/app", "out/report.xml"}
	if err := validateRun(o, []string{"true"}); err != nil {
		t.Errorf("--collect of named paths: %v", err)
	}
}

// A teardown that fails after a workload that failed leaves the workload's
// status the run's; after one that passed, the run exits 1.
func TestRunTeardownFailureKeepsTheWorkloadsStatus(t *testing.T) {
	for _, c := range []struct{ workload, want int }{{7, 7}, {0, exitFailed}} {
		r := newTestRun("a")
		r.take(runMsg{vm: r.vms[0], news: newsExited, code: c.workload})
		r.phase = RunTeardown
		r.step(runMsg{ev: RunEvTeardownFailed}, nil)
		if r.exit != c.want || r.end != RunFailed {
			t.Errorf("workload %d, teardown failed: exit %d end %s; want %d, failed", c.workload, r.exit, r.end, c.want)
		}
	}
}
