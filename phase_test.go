package main

import (
	"slices"
	"testing"
)

// Every pair of a non-terminal phase is handled or deliberately ignored,
// never both, and no event is listed twice.
func TestTableCoversEveryPair(t *testing.T) {
	for p := Phase(0); p < numPhases; p++ {
		if p.Terminal() {
			continue
		}
		seen := map[Event]bool{}
		for _, e := range ignored[p] {
			if seen[e] {
				t.Errorf("%s ignores %s twice", p, e)
			}
			seen[e] = true
		}
		for e := Event(0); e < numEvents; e++ {
			_, handled := table[p][e]
			if handled == seen[e] {
				t.Errorf("%s/%s: handled=%v ignored=%v; want exactly one", p, e, handled, seen[e])
			}
		}
	}
}

func TestTerminalPhasesHaveNoRows(t *testing.T) {
	for p := Phase(0); p < numPhases; p++ {
		if p.Terminal() && (len(table[p]) > 0 || len(ignored[p]) > 0) {
			t.Errorf("terminal phase %s has rows or ignores", p)
		}
	}
}

// The seed bug: once Running was reached, no signal may lead to Wiping, and
// no path from Booting or Running reaches a wipe at all.
func TestNoWipeAfterFirstBoot(t *testing.T) {
	reach := map[Phase]bool{Booting: true, Running: true}
	for changed := true; changed; {
		changed = false
		for p := range reach {
			for _, tr := range table[p] {
				if !reach[tr.Next] {
					reach[tr.Next], changed = true, true
				}
			}
		}
	}
	for p := range reach {
		for e, tr := range table[p] {
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

// A signal's row sets the exit code the way shells report that signal, or
// leaves it: no signal ever turns a run into a plain failure.
func TestSignalRowsExitCodes(t *testing.T) {
	want := map[Event][]int{
		EvInterrupt: {exitSIGINT, exitOK, keep}, EvInterruptAgain: {exitSIGINT, exitOK, keep},
		EvTerminate: {exitSIGTERM, exitOK, keep}, EvHangup: {exitSIGHUP, exitOK, keep},
		EvStop: {exitSIGTERM, exitOK, keep}, EvForceStop: {exitSIGTERM, exitOK, keep},
	}
	for p := Phase(0); p < numPhases; p++ {
		for e, codes := range want {
			if tr, ok := table[p][e]; ok && !slices.Contains(codes, tr.Exit) {
				t.Errorf("%s/%s exits %d", p, e, tr.Exit)
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
		if got := signalEvent(sigByName[c.sig], c.window, false); got != c.want {
			t.Errorf("signalEvent(%s, window=%v) = %s, want %s", c.sig, c.window, got, c.want)
		}
	}
}
