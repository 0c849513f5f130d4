package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// lockHolder only looks: it neither keeps the lock nor rewrites its pid, so
// `vmup status` beside a running `up` changes nothing.
func TestLockHolderOnlyLooks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks", "v1.lock")
	if _, held := lockHolder(path); held {
		t.Fatal("a missing lock file counts as held")
	}
	l, _, err := tryLock(path, "up")
	if err != nil {
		t.Fatal(err)
	}
	if rec, held := lockHolder(path); !held || rec.PID != os.Getpid() || rec.Command != "up" {
		t.Errorf("lockHolder = %+v, %v; want pid %d of up, true", rec, held, os.Getpid())
	}
	l.Unlock()
	if _, held := lockHolder(path); held {
		t.Error("a released lock counts as held")
	}
	// After a probe the lock is free for a real taker.
	l2, _, err := tryLock(path, "up")
	if err != nil {
		t.Fatalf("lock after probes: %v", err)
	}
	l2.Unlock()
}

// Only an `up` proven by its lock record is ever signalled: the recorded pid
// must still have the recorded start time, run `vmup up`, and the lock must
// still be held. Nothing else named by a lock file is signalled.
func TestOnlyAProvenUpIsSignalled(t *testing.T) {
	dir := t.TempDir()
	self, _ := os.Executable()
	child := filepath.Join(dir, "fake-child")
	if err := os.Symlink(self, child); err != nil {
		t.Fatal(err)
	}
	startProc := func(argv ...string) (*exec.Cmd, uint64, chan struct{}) {
		cmd := exec.Command(argv[0], argv[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		waitCmdline(t, cmd.Process.Pid, argv[0])
		start, err := procStart(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, start, exited
	}
	sleep, sleepStart, sleepExited := startProc("/bin/sleep", "60")
	up, upStart, _ := startProc(child, "up", "v1") // argv like `vmup up v1`
	path := filepath.Join(dir, "locks", "v1.lock")
	holder, _, err := tryLock(path, "up") // this test holds the lock
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		record string
		proven bool
	}{
		{fmt.Sprintf("%d\n", sleep.Process.Pid), false}, // an older vmup's bare pid, reused since
		{fmt.Sprintf("%d %d up\n", sleep.Process.Pid, sleepStart+1), false},
		{fmt.Sprintf("%d %d up\n", sleep.Process.Pid, sleepStart), false}, // not `vmup up`
		{fmt.Sprintf("%d %d destroy\n", up.Process.Pid, upStart), false},
		{fmt.Sprintf("%d %d up\n", up.Process.Pid, upStart+1), false},
		{fmt.Sprintf("%d %d up extra\n", up.Process.Pid, upStart), false},
		{fmt.Sprintf("%d %d up\n", up.Process.Pid, upStart), true},
	}
	for _, c := range cases {
		os.WriteFile(path, []byte(c.record), 0o600)
		if rec, ok := upHolding(path); ok != c.proven {
			t.Errorf("record %q: upHolding = %+v, %v; want %v", c.record, rec, ok, c.proven)
		}
	}
	holder.Unlock()
	os.WriteFile(path, []byte(cases[len(cases)-1].record), 0o600)
	if _, ok := upHolding(path); ok {
		t.Error("an up that no longer holds the lock counts as its holder")
	}

	// The signal itself goes to nobody whose start time differs.
	stale := lockRecord{PID: sleep.Process.Pid, Start: sleepStart + 1, Command: "up"}
	if err := stale.signal(unix.SIGUSR2); err != unix.ESRCH {
		t.Errorf("a stop request to a reused pid: %v, want ESRCH", err)
	}
	select {
	case <-sleepExited:
		t.Errorf("pid %d, reused by a sleep, was signalled", sleep.Process.Pid)
	default:
	}
}

// status names the lock's holder from its record.
func TestStatusNamesLockHolder(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	lock, _, err := tryLock(pathsFor(h.env.Home, "v1").Lock, "destroy")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	env := h.env
	env.Out = h.out()
	s, _ := statusOf(context.Background(), env, "v1")
	if s.PID != os.Getpid() || s.Holder != "destroy" || s.Phase != "detached" {
		t.Errorf("status = %+v; want pid %d, holder destroy, phase detached", s, os.Getpid())
	}
}
