package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// Every pair of a non-terminal phase of a run is handled or deliberately
// ignored, never both, and no event is listed twice.
func TestRunTableCoversEveryPair(t *testing.T) {
	for p := RunPhase(0); p < numRunPhases; p++ {
		if p.Terminal() {
			if len(runTable[p]) > 0 || len(runIgnored[p]) > 0 {
				t.Errorf("terminal phase %s has rows or ignores", p)
			}
			continue
		}
		seen := map[RunEvent]bool{}
		for _, e := range runIgnored[p] {
			if seen[e] {
				t.Errorf("%s ignores %s twice", p, e)
			}
			seen[e] = true
		}
		for e := RunEvent(0); e < numRunEvents; e++ {
			_, handled := runTable[p][e]
			if handled == seen[e] {
				t.Errorf("%s/%s: handled=%v ignored=%v; want exactly one", p, e, handled, seen[e])
			}
		}
	}
}

func TestRunPhaseNames(t *testing.T) {
	for p := RunPhase(0); p < numRunPhases; p++ {
		if n := p.String(); n == "" || n == "unknown" {
			t.Errorf("run phase %d has no name", p)
		}
	}
	for e := RunEvent(0); e < numRunEvents; e++ {
		if n := e.String(); n == "" || n == "unknown" {
			t.Errorf("run event %d has no name", e)
		}
	}
	for a := RunAction(0); a < numRunActions; a++ {
		if a.String() == "" {
			t.Errorf("run action %d has no name", a)
		}
	}
}

// Pair by pair, the rows that decide where a run ends and with what code.
func TestRunTableRows(t *testing.T) {
	type row struct {
		p    RunPhase
		e    RunEvent
		next RunPhase
		exit int
		end  RunPhase
		acts []RunAction
	}
	rows := []row{
		// Setup: the VMs' own rows decide; their end is the run's event.
		{RunSetup, RunEvInterrupt, RunSetup, keep, runKeepEnd, []RunAction{RunActForward}},
		{RunSetup, RunEvInterruptAgain, RunSetup, keep, runKeepEnd, []RunAction{RunActForward}},
		{RunSetup, RunEvTerminate, RunSetup, keep, runKeepEnd, []RunAction{RunActForward}},
		{RunSetup, RunEvHangup, RunSetup, keep, runKeepEnd, []RunAction{RunActForward}},
		{RunSetup, RunEvSetupStopping, RunStoppingSetup, keep, RunAborted, nil},
		{RunSetup, RunEvSetupPassed, RunWorkload, keep, runKeepEnd, []RunAction{RunActStartWorkload}},
		{RunSetup, RunEvSetupFailed, RunCleanup, fromEvent, RunFailed, []RunAction{RunActCleanup}},
		{RunSetup, RunEvSetupAborted, RunCleanup, fromEvent, RunAborted, []RunAction{RunActCleanup}},
		{RunStoppingSetup, RunEvInterrupt, RunStoppingSetup, keep, runKeepEnd, []RunAction{RunActForward}},
		{RunStoppingSetup, RunEvSetupAborted, RunCleanup, fromEvent, RunAborted, []RunAction{RunActCleanup}},
		{RunStoppingSetup, RunEvSetupFailed, RunCleanup, fromEvent, RunFailed, []RunAction{RunActCleanup}},
		{RunStoppingSetup, RunEvSetupPassed, RunCleanup, exitFailed, RunFailed, []RunAction{RunActCleanup}},
		// Workload: the first Ctrl+C only warns; the second stops through the runners.
		{RunWorkload, RunEvInterrupt, RunWorkload, keep, runKeepEnd, []RunAction{RunActWarnConfirm}},
		{RunWorkload, RunEvConfirmExpired, RunWorkload, keep, runKeepEnd, []RunAction{RunActSayNotConfirmed}},
		{RunWorkload, RunEvInterruptAgain, RunStoppingWorkload, exitSIGINT, RunAborted, []RunAction{RunActRequestStop}},
		{RunWorkload, RunEvTerminate, RunStoppingWorkload, exitSIGTERM, RunAborted, []RunAction{RunActRequestStop}},
		{RunWorkload, RunEvHangup, RunStoppingWorkload, exitSIGHUP, RunAborted, []RunAction{RunActRequestStop}},
		{RunWorkload, RunEvWorkloadPassed, RunCollecting, fromEvent, RunFinished, []RunAction{RunActCollect}},
		{RunWorkload, RunEvWorkloadFailed, RunCollecting, fromEvent, RunFinished, []RunAction{RunActCollect}},
		{RunWorkload, RunEvWorkloadLost, RunStoppingWorkload, exitFailed, RunFailed, []RunAction{RunActRequestStop}},
		{RunStoppingWorkload, RunEvInterrupt, RunStoppingWorkload, keep, runKeepEnd, []RunAction{RunActSayStopping}},
		{RunStoppingWorkload, RunEvTerminate, RunStoppingWorkload, keep, runKeepEnd, []RunAction{RunActSayStopping}},
		{RunStoppingWorkload, RunEvStopConfirmed, RunCollecting, keep, runKeepEnd, []RunAction{RunActCollect}},
		{RunStoppingWorkload, RunEvStopUnconfirmed, RunStopFailed, exitStopFailed, RunStopFailed, []RunAction{RunActReportUnconfirmed}},
		// Results come back whichever way the workload ended; then teardown, then cleanup.
		{RunCollecting, RunEvInterrupt, RunCollecting, keep, runKeepEnd, []RunAction{RunActWarnConfirm}},
		{RunCollecting, RunEvInterruptAgain, RunCollecting, exitSIGINT, RunAborted, []RunAction{RunActStopCollect}},
		{RunCollecting, RunEvCollected, RunTeardown, keep, runKeepEnd, []RunAction{RunActTeardown}},
		{RunTeardown, RunEvInterrupt, RunTeardown, keep, runKeepEnd, []RunAction{RunActWarnConfirm}},
		{RunTeardown, RunEvTerminate, RunStoppingTeardown, exitSIGTERM, RunAborted, []RunAction{RunActStopTeardown}},
		{RunTeardown, RunEvTeardownPassed, RunCleanup, keep, runKeepEnd, []RunAction{RunActCleanup}},
		{RunTeardown, RunEvTeardownFailed, RunCleanup, fromEvent, RunFailed, []RunAction{RunActCleanup}},
		{RunStoppingTeardown, RunEvHangup, RunStoppingTeardown, keep, runKeepEnd, []RunAction{RunActSayStopping}},
		{RunStoppingTeardown, RunEvTeardownFailed, RunCleanup, keep, runKeepEnd, []RunAction{RunActCleanup}},
		{RunCleanup, RunEvInterruptAgain, RunCleanup, keep, runKeepEnd, []RunAction{RunActSayStopping}},
		{RunCleanup, RunEvCleaned, runToEnd, keep, runKeepEnd, nil},
	}
	for _, r := range rows {
		got, ok := RunStep(r.p, r.e)
		if !ok {
			t.Errorf("%s/%s is ignored; want → %s", r.p, r.e, r.next)
			continue
		}
		if got.Next != r.next || got.Exit != r.exit || got.End != r.end || !slices.Equal(got.Actions, r.acts) {
			t.Errorf("%s/%s = → %s exit %d end %s %v; want → %s exit %d end %s %v",
				r.p, r.e, got.Next, got.Exit, got.End, got.Actions, r.next, r.exit, r.end, r.acts)
		}
	}
}

// Once a stop was asked of the runners, no workload starts again and no
// signal does more than be acknowledged; an unconfirmed stop never cleans
// up; every confirmed stop and every ended workload still collects.
func TestRunTableStopRules(t *testing.T) {
	for _, p := range []RunPhase{RunStoppingWorkload, RunStoppingTeardown, RunCleanup} {
		for _, e := range []RunEvent{RunEvInterrupt, RunEvInterruptAgain, RunEvTerminate, RunEvHangup} {
			tr := runTable[p][e]
			if tr.Next != p || tr.Exit != keep || !slices.Equal(tr.Actions, []RunAction{RunActSayStopping}) {
				t.Errorf("%s/%s does more than acknowledge: %+v", p, e, tr)
			}
		}
	}
	for p := RunPhase(0); p < numRunPhases; p++ {
		for e, tr := range runTable[p] {
			if p != RunSetup && slices.Contains(tr.Actions, RunActStartWorkload) {
				t.Errorf("%s/%s starts a workload", p, e)
			}
			if tr.Next == RunStopFailed && slices.Contains(tr.Actions, RunActCleanup) {
				t.Errorf("%s/%s cleans up after an unconfirmed stop", p, e)
			}
		}
	}
	if tr := runTable[RunStoppingWorkload][RunEvStopConfirmed]; !slices.Contains(tr.Actions, RunActCollect) {
		t.Error("a confirmed stop does not collect")
	}
}

const (
	runTableBegin = "<!-- BEGIN run table: generated from runphase.go by `go test -run TestReadmeRunTable -update` -->\n"
	runTableEnd   = "<!-- END run table -->"
)

// The README's run table is the code's (-update rewrites it).
func TestReadmeRunTable(t *testing.T) {
	checkReadmeGenerated(t, runTableBegin, runTableEnd, runPhaseTableMarkdown(),
		"README.md's run table differs from runphase.go; run `go test -run TestReadmeRunTable -update`")
}

// Every action of the run's table is explained in the README.
func TestReadmeExplainsEveryRunAction(t *testing.T) {
	readme, _ := os.ReadFile("README.md")
	_, legend, _ := strings.Cut(string(readme), "Actions in the run's table:")
	legend, _, _ = strings.Cut(legend, runTableBegin)
	for _, a := range runActionNames {
		if !strings.Contains(legend, "`"+a+"`") {
			t.Errorf("README's run legend lacks the action %q", a)
		}
	}
}
