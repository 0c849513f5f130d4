package main

import (
	"bytes"
	"context"
	"os"
	"sync"
	"syscall"
	"testing"
)

// A re-up that is rejected (or interrupted) before it changed anything leaves
// state.json as it was: it describes the VM, not the failed command.
func TestRejectedReupKeepsJournalPhase(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	before, _ := os.ReadFile(paths.Journal())
	check := func(what string, phase Phase) {
		t.Helper()
		if j := h.journal(); j.Phase != phase {
			t.Errorf("%s: journal phase %q, want %q", what, j.Phase, phase)
		}
		if after, _ := os.ReadFile(paths.Journal()); !bytes.Equal(before, after) {
			t.Errorf("%s: state.json was rewritten:\n%s\nwas:\n%s", what, after, before)
		}
	}

	// Running: changed settings are refused.
	if code := h.wait(h.up("v1", "--memory", "4096")); code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	check("rejected while running", Detached)
	if s, _ := statusOf(context.Background(), h.env, "v1"); s.Phase != "detached" {
		t.Errorf("status phase %q, want detached", s.Phase)
	}

	// Shut off: a shrinking disk is refused.
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("down", []string{"v1"})
	if code := runDown(env, o); code != 0 {
		t.Fatalf("down: exit %d", code)
	}
	before, _ = os.ReadFile(paths.Journal())
	if code := h.wait(h.up("v1", "-d", "--disk", "2")); code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	check("rejected while shut off", Stopped)

	// Interrupted while preparing, before anything changed: the domain's state
	// is held until the interrupt was taken.
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.fake.onCall = func(args []string) {
		if args[0] == "virsh" && args[1] == "domstate" {
			once.Do(func() { close(held); <-release })
		}
	}
	done := h.up("v1", "-d")
	<-held
	h.sigs <- syscall.SIGINT
	h.events.waitFor(t, "aborting", "Interrupted while preparing")
	close(release)
	if code := h.wait(done); code != exitSIGINT {
		t.Fatalf("exit %d, want 130\n%s", code, h.stderr)
	}
	check("interrupted while preparing", Stopped)
}
