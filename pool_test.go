package main

import (
	"context"
	"sync"
	"testing"
	"time"
)

// The VMs of an environment prepare at once, each making sure of the pool:
// one defines and starts it, and the other, which found none a moment
// before, must not fail on "already exists" or "already active". (CI, stop
// 19: `pool 'vmup' is not active` failed one of two session VMs.)
func TestEnsurePoolTwiceAtOnce(t *testing.T) {
	f := newFakeRunner()
	// Both look before either defines: each waits a moment for the other's look.
	var looked sync.WaitGroup
	looked.Add(2)
	var once [2]sync.Once
	n := 0
	var mu sync.Mutex
	f.onCall = func(args []string) {
		if len(args) > 1 && args[1] == "pool-info" {
			mu.Lock()
			i := n
			n++
			mu.Unlock()
			if i < 2 {
				once[i].Do(looked.Done)
				done := make(chan struct{})
				go func() { looked.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(300 * time.Millisecond): // serialized: the other looks later
				}
			}
		}
	}
	v := newVirsh(f, "qemu:///session")
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- v.EnsurePool(context.Background(), "vmup", "/pool/vmup") }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("EnsurePool: %v", err)
		}
	}
	if !f.world.Pools["vmup"] || f.world.PoolInactive["vmup"] {
		t.Errorf("pool defined %v, inactive %v; want running", f.world.Pools["vmup"], f.world.PoolInactive["vmup"])
	}
}
