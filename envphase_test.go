package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// Every pair of a non-terminal phase of the environment is handled or
// deliberately ignored, never both, and no event is listed twice.
func TestEnvTableCoversEveryPair(t *testing.T) {
	for p := EnvPhase(0); p < numEnvPhases; p++ {
		if p.Terminal() {
			if len(envTable[p]) > 0 || len(envIgnored[p]) > 0 {
				t.Errorf("terminal phase %s has rows or ignores", p)
			}
			continue
		}
		seen := map[EnvEvent]bool{}
		for _, e := range envIgnored[p] {
			if seen[e] {
				t.Errorf("%s ignores %s twice", p, e)
			}
			seen[e] = true
		}
		for e := EnvEvent(0); e < numEnvEvents; e++ {
			_, handled := envTable[p][e]
			if handled == seen[e] {
				t.Errorf("%s/%s: handled=%v ignored=%v; want exactly one", p, e, handled, seen[e])
			}
		}
	}
}

func TestEnvPhaseNames(t *testing.T) {
	for p := EnvPhase(0); p < numEnvPhases; p++ {
		if n := p.String(); n == "" || n == "unknown" {
			t.Errorf("env phase %d has no name", p)
		}
	}
	for e := EnvEvent(0); e < numEnvEvents; e++ {
		if n := e.String(); n == "" || n == "unknown" {
			t.Errorf("env event %d has no name", e)
		}
	}
	for a := EnvAction(0); a < numEnvActions; a++ {
		if a.String() == "" {
			t.Errorf("env action %d has no name", a)
		}
	}
}

// A signal's row exits as shells report that signal, with 0 (a shutdown of
// VMs whose first boots completed), or leaves the code.
func TestEnvSignalRowsExitCodes(t *testing.T) {
	want := map[EnvEvent][]int{
		EnvEvInterrupt: {exitOK, keep}, EnvEvInterruptAgain: {exitSIGINT, exitOK, keep},
		EnvEvTerminate: {exitSIGTERM, exitOK, keep}, EnvEvHangup: {exitSIGHUP, exitOK, keep},
		EnvEvStop: {exitSIGTERM, exitOK, keep}, EnvEvForceStop: {exitSIGTERM, exitOK, keep}, EnvEvSuspend: {exitOK, keep},
	}
	for p := EnvPhase(0); p < numEnvPhases; p++ {
		for e, codes := range want {
			if tr, ok := envTable[p][e]; ok && !slices.Contains(codes, tr.Exit) {
				t.Errorf("%s/%s exits %d", p, e, tr.Exit)
			}
		}
	}
}

// reachable is every phase some path of rows leads to from the given ones.
func envReachable(from ...EnvPhase) map[EnvPhase]bool {
	reach := map[EnvPhase]bool{}
	for _, p := range from {
		reach[p] = true
	}
	for changed := true; changed; {
		changed = false
		for p := range reach {
			for _, tr := range envTable[p] {
				if !reach[tr.Next] {
					reach[tr.Next], changed = true, true
				}
			}
		}
	}
	return reach
}

// Once a VM or the playbook failed, or a stop began, no playbook runs and
// nothing is recorded complete; once the first boots completed, no Ctrl+C
// warns of an abort: each only stops.
func TestEnvNoPlaybookAfterFailureNoAbortAfterKeeping(t *testing.T) {
	for p := range envReachable(EnvFailing, EnvStopping) {
		for e, tr := range envTable[p] {
			if tr.Next == EnvSetupPlaybook || tr.Next == EnvKeeping || slices.Contains(tr.Actions, EnvActRunPlaybook) {
				t.Errorf("%s/%s leads to the playbook after a failure or a stop", p, e)
			}
		}
	}
	for p := range envReachable(EnvKeeping) {
		for e, tr := range envTable[p] {
			if tr.Next == EnvFirstBoots || tr.Next == EnvSetupPlaybook || slices.Contains(tr.Actions, EnvActWarnConfirm) ||
				slices.Contains(tr.Actions, EnvActRunPlaybook) || tr.Exit == exitSIGINT {
				t.Errorf("%s/%s goes back to a first boot after the playbook passed", p, e)
			}
		}
	}
	// The playbook is stopped wherever a signal ends a run it may be in.
	for e, tr := range envTable[EnvSetupPlaybook] {
		if tr.Next == EnvStopping && !slices.Contains(tr.Actions, EnvActStopPlaybook) {
			t.Errorf("setup_playbook/%s stops the run without stopping the playbook", e)
		}
	}
}

const (
	envTableBegin = "<!-- BEGIN environment table: generated from envphase.go by `go test -run TestReadmeEnvTable -update` -->\n"
	envTableEnd   = "<!-- END environment table -->"
)

// The README's environment table is the code's (-update rewrites it).
func TestReadmeEnvTable(t *testing.T) {
	checkReadmeGenerated(t, envTableBegin, envTableEnd, envPhaseTableMarkdown(),
		"README.md's environment table differs from envphase.go; run `go test -run TestReadmeEnvTable -update`")
}

// Every action of the environment's table is explained in the README.
func TestReadmeExplainsEveryEnvAction(t *testing.T) {
	readme, _ := os.ReadFile("README.md")
	_, legend, _ := strings.Cut(string(readme), "Actions in the environment's table:")
	legend, _, _ = strings.Cut(legend, envTableBegin)
	for _, a := range envActionNames {
		if !strings.Contains(legend, "`"+a+"`") {
			t.Errorf("README's environment legend lacks the action %q", a)
		}
	}
}
