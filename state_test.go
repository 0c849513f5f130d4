package main

import (
	"os"
	"path/filepath"
	"testing"
)

// lockHolder only looks: it neither keeps the lock nor rewrites its pid, so
// `vmup status` beside a running `up` changes nothing.
func TestLockHolderOnlyLooks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks", "v1.lock")
	if _, held := lockHolder(path); held {
		t.Fatal("a missing lock file counts as held")
	}
	l, _, err := tryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if pid, held := lockHolder(path); !held || pid != os.Getpid() {
		t.Errorf("lockHolder = %d, %v; want %d, true", pid, held, os.Getpid())
	}
	l.Unlock()
	if _, held := lockHolder(path); held {
		t.Error("a released lock counts as held")
	}
	// After a probe the lock is free for a real taker.
	l2, _, err := tryLock(path)
	if err != nil {
		t.Fatalf("lock after probes: %v", err)
	}
	l2.Unlock()
}
