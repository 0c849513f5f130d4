package main

import (
	"slices"
	"testing"
)

// Cloning is a first boot until the clone is recorded complete: each of its
// rows, pair by pair.
func TestCloningRows(t *testing.T) {
	cases := []struct {
		ev   Event
		next Phase
		exit int
		acts []Action
	}{
		{EvInterrupt, Cloning, keep, []Action{ActWarnConfirm}},
		{EvConfirmExpired, Cloning, keep, []Action{ActSayNotConfirmed}},
		{EvInterruptAgain, Wiping, exitSIGINT, []Action{ActStopWork, ActWipe}},
		{EvTerminate, Wiping, exitSIGTERM, []Action{ActStopWork, ActWipe}},
		{EvHangup, Wiping, exitSIGHUP, []Action{ActStopWork, ActWipe}},
		{EvStop, Wiping, exitSIGTERM, []Action{ActStopWork, ActWipe}},
		{EvForceStop, Wiping, exitSIGTERM, []Action{ActStopWork, ActWipe}},
		{EvCloned, Running, keep, []Action{ActEnterRunning}},
		{EvCloneFailed, Failed, exitFailed, []Action{ActStopWork, ActReportFailure}},
		{EvRecordFailed, Failed, exitFailed, []Action{ActReportFailure}},
	}
	for _, c := range cases {
		tr, ok := Step(Cloning, c.ev)
		if !ok || tr.Next != c.next || tr.Exit != c.exit || !slices.Equal(tr.Actions, c.acts) {
			t.Errorf("cloning/%s = %+v (%v), want %s exit %d %v", c.ev, tr, ok, c.next, c.exit, c.acts)
		}
	}
	if n := len(table[Cloning]); n != len(cases) {
		t.Errorf("cloning has %d rows, the test %d", n, len(cases))
	}
	if tr, ok := Step(Preparing, EvPreparedClone); !ok || tr.Next != Cloning || !slices.Equal(tr.Actions, []Action{ActClone}) {
		t.Errorf("preparing/prepared_clone = %+v", tr)
	}
	for p := Phase(0); p < numPhases; p++ {
		for _, ev := range []Event{EvPreparedClone, EvCloned, EvCloneFailed} {
			if _, ok := Step(p, ev); ok && p != Preparing && p != Cloning {
				t.Errorf("%s/%s has a row: only preparing and cloning deal with a clone", p, ev)
			}
		}
	}
	if !Cloning.FirstBoot() || Cloning.Terminal() || Cloning.AfterFirstBoot() {
		t.Error("cloning is a first boot's phase")
	}
}

// A vmup killed while cloning, or a clone that failed: the next up wipes it
// and starts clean (its template makes it again).
func TestDiedMidCloneStartsClean(t *testing.T) {
	for _, j := range []Journal{{Phase: Cloning}, {Phase: Failed, FailedIn: Cloning}} {
		if !diedMidFirstBoot(&j) {
			t.Errorf("journal %s/%s: not started clean", j.Phase, j.FailedIn)
		}
	}
	if diedMidFirstBoot(&Journal{Phase: Failed, FailedIn: Starting}) {
		t.Error("a failed first boot is kept, as before")
	}
}
