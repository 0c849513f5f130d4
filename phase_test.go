package main

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The table restated from the issue, row by row, independently of phase.go.
func TestTransitionRows(t *testing.T) {
	type row struct {
		phase Phase
		event Event
		want  Transition
	}
	T := func(next Phase, exit int, acts ...Action) Transition {
		return Transition{Next: next, Actions: acts, Exit: exit}
	}
	var rows []row
	add := func(p Phase, e Event, tr Transition) { rows = append(rows, row{p, e, tr}) }

	// Preparing: any signal undoes this run's partial work.
	add(Preparing, EvInterrupt, T(Wiping, 130, ActStopWork, ActRemovePartial))
	add(Preparing, EvInterruptAgain, T(Wiping, 130, ActStopWork, ActRemovePartial))
	add(Preparing, EvTerminate, T(Wiping, 143, ActStopWork, ActRemovePartial))
	add(Preparing, EvHangup, T(Wiping, 129, ActStopWork, ActRemovePartial))
	add(Preparing, EvPreparedFirstBoot, T(Starting, 0, ActStartFirstBoot))
	add(Preparing, EvPreparedBoot, T(Booting, 0, ActStartBoot))
	add(Preparing, EvPreparedRunning, T(Running, 0, ActEnterRunning))
	add(Preparing, EvPrepareFailed, T(Wiping, 1, ActReportFailure, ActRemovePartial))
	add(Preparing, EvPrepareRejected, T(Wiping, 2, ActRemovePartial))

	// First boot: a first Ctrl+C only warns.
	for _, p := range []Phase{Starting, Provisioning} {
		add(p, EvInterrupt, T(p, 0, ActWarnConfirm))
		add(p, EvInterruptAgain, T(Wiping, 130, ActStopWork, ActWipe))
		add(p, EvTerminate, T(Wiping, 143, ActStopWork, ActWipe))
		add(p, EvHangup, T(Wiping, 129, ActStopWork, ActWipe))
		add(p, EvConfirmExpired, T(p, 0, ActSayNotConfirmed))
	}
	add(Starting, EvReady, T(Provisioning, 0, ActRunPlaybook))
	add(Starting, EvBootTimeout, T(Failed, 1, ActStopWork, ActReportFailure))
	add(Starting, EvBootFailed, T(Failed, 1, ActStopWork, ActReportFailure))
	add(Provisioning, EvProvisioned, T(Running, 0, ActEnterRunning))
	add(Provisioning, EvProvisionFailed, T(Failed, 3, ActReportFailure))
	add(Provisioning, EvRecordFailed, T(Failed, 1, ActReportFailure))

	// After the first boot no signal can wipe: every one shuts down.
	for _, p := range []Phase{Booting, Running} {
		for _, e := range []Event{EvInterrupt, EvInterruptAgain, EvTerminate, EvHangup} {
			add(p, e, T(Stopping, 0, ActStopWork, ActShutdown))
		}
		add(p, EvDomainStopped, T(Stopped, 0, ActStopWork, ActSayStoppedExternally))
	}
	add(Booting, EvReady, T(Running, 0, ActEnterRunning))
	add(Booting, EvBootTimeout, T(Failed, 1, ActStopWork, ActReportFailure))
	add(Booting, EvBootFailed, T(Failed, 1, ActStopWork, ActReportFailure))
	add(Running, EvDetach, T(Detached, 0))

	for _, e := range []Event{EvInterrupt, EvInterruptAgain, EvTerminate, EvHangup, EvShutdownTimeout} {
		add(Stopping, e, T(Stopping, 0, ActForceOff))
	}
	add(Stopping, EvDomainStopped, T(Stopped, 0))
	add(Stopping, EvForceOffFailed, T(StopFailed, 4, ActReportFailure))

	for _, e := range []Event{EvInterrupt, EvInterruptAgain, EvTerminate, EvHangup} {
		add(Wiping, e, T(Wiping, 0, ActSayAlreadyAborting))
	}
	add(Wiping, EvWipeDone, T(Aborted, 0))
	add(Wiping, EvWipeFailed, T(Failed, 1, ActReportFailure))
	add(Wiping, EvCompletedMeanwhile, T(Stopping, 0, ActShutdown))

	seen := map[key]bool{}
	for _, r := range rows {
		t.Run(fmt.Sprintf("%s/%s", r.phase, r.event), func(t *testing.T) {
			got, ok := Step(r.phase, r.event)
			if !ok {
				t.Fatalf("Step(%s, %s) is ignored; want %+v", r.phase, r.event, r.want)
			}
			if diff := cmp.Diff(r.want, got); diff != "" {
				t.Errorf("Step(%s, %s) mismatch (-want +got):\n%s", r.phase, r.event, diff)
			}
		})
		seen[key{r.phase, r.event}] = true
	}
	if len(seen) != len(transitions) {
		for k := range transitions {
			if !seen[k] {
				t.Errorf("phase.go has a row this test does not state: %s/%s", k.Phase, k.Event)
			}
		}
	}
}

// Every phase × event pair is handled or deliberately ignored, never both.
func TestTableCoversEveryPair(t *testing.T) {
	for p := Phase(0); p < numPhases; p++ {
		for e := Event(0); e < numEvents; e++ {
			_, handled := transitions[key{p, e}]
			if handled == ignored[key{p, e}] {
				t.Errorf("%s/%s: handled=%v ignored=%v; want exactly one", p, e, handled, ignored[key{p, e}])
			}
		}
	}
}

func TestTerminalPhasesHaveNoRows(t *testing.T) {
	for k := range transitions {
		if k.Phase.Terminal() {
			t.Errorf("terminal phase %s has a row for %s", k.Phase, k.Event)
		}
	}
}

// The seed bug: once Running was reached, no signal may lead to Wiping, and
// no path from Booting or Running reaches a wipe at all.
func TestNoWipeAfterFirstBoot(t *testing.T) {
	reach := map[Phase]bool{Booting: true, Running: true}
	for changed := true; changed; {
		changed = false
		for k, tr := range transitions {
			if reach[k.Phase] && !reach[tr.Next] {
				reach[tr.Next], changed = true, true
			}
		}
	}
	for p := range reach {
		for e := Event(0); e < numEvents; e++ {
			tr, ok := Step(p, e)
			if !ok {
				continue
			}
			if tr.Next == Wiping || tr.Next.FirstBoot() {
				t.Errorf("%s/%s leads to %s after the first boot completed", p, e, tr.Next)
			}
			for _, a := range tr.Actions {
				if a == ActWipe || a == ActRemovePartial || a == ActWarnConfirm {
					t.Errorf("%s/%s does %s after the first boot completed", p, e, a)
				}
			}
		}
	}
}

func TestPhaseNames(t *testing.T) {
	for p := Phase(0); p < numPhases; p++ {
		got, ok := parsePhase(p.String())
		if !ok || got != p {
			t.Errorf("parsePhase(%q) = %v, %v", p.String(), got, ok)
		}
	}
	for e := Event(0); e < numEvents; e++ {
		if e.String() == "" || e.String() == "unknown" {
			t.Errorf("event %d has no name", e)
		}
	}
}

func TestSignalEvent(t *testing.T) {
	cases := []struct {
		sig    string
		window bool
		want   Event
	}{
		{"INT", false, EvInterrupt}, {"INT", true, EvInterruptAgain},
		{"TERM", false, EvTerminate}, {"TERM", true, EvTerminate},
		{"HUP", false, EvHangup},
	}
	for _, c := range cases {
		if got := signalEvent(sigByName[c.sig], c.window); got != c.want {
			t.Errorf("signalEvent(%s, window=%v) = %s, want %s", c.sig, c.window, got, c.want)
		}
	}
}
