package main

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// masterRunner fails every ssh master with stderr once vmup asked it (-O
// check) whether it is up, as a master does that is still connecting.
type masterRunner struct {
	stderr  string
	masters atomic.Int32
	checked chan struct{}
}

func (r *masterRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	fail := &ExitError{Args: c.Args, ExitCode: 255, Stderr: r.stderr}
	if c.Started == nil { // -O check
		select {
		case r.checked <- struct{}{}:
		default:
		}
		return Result{ExitCode: 255}, fail
	}
	c.Started(1)
	r.masters.Add(1)
	select {
	case <-r.checked:
	case <-ctx.Done():
	}
	return Result{ExitCode: 255}, fail
}

// A clone's sshd serves its pinned key already: another key ends the wait
// at once, where a booting VM's waits on (its first host key may be the
// image's own, until cloud-init writes vmup's).
func TestWaitMasterHostKeyRefused(t *testing.T) {
	for _, final := range []bool{true, false} {
		r := &masterRunner{checked: make(chan struct{}), stderr: "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n"}
		s := newSSH(r, "v1", "vmup", pathsFor(t.TempDir(), "v1"), Endpoint{Host: "127.0.0.1", Port: 2222})
		s.keyFinal = final
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := s.WaitMaster(ctx, ctx, 10*time.Millisecond, func(context.Context) error { return nil })
		cancel()
		switch {
		case final && (err == nil || !strings.Contains(err.Error(), "another host key")):
			t.Errorf("keyFinal: %v, want the host key named", err)
		case final && r.masters.Load() != 1:
			t.Errorf("keyFinal: %d masters started, want 1", r.masters.Load())
		case !final && err != context.DeadlineExceeded:
			t.Errorf("booting: %v, want waiting until the deadline", err)
		}
	}
}

// markerWriter closes its channel once, on the marker as a whole line, in
// whatever pieces it comes, and keeps every byte.
func TestMarkerWriter(t *testing.T) {
	for _, c := range []struct {
		pieces []string
		seen   bool
	}{
		{[]string{"motd\nvmup-identity ke", "ys\nvmup-identity done sshd=rexec\n"}, true},
		{[]string{"vmup-identity keys\n"}, true},
		{[]string{"xvmup-identity keys\n"}, false},
		{[]string{"vmup-identity keys"}, false},
	} {
		seen := make(chan struct{})
		w := &markerWriter{marker: "vmup-identity keys\n", seen: seen}
		for _, p := range c.pieces {
			w.Write([]byte(p))
			w.Write([]byte("")) // closes nothing twice
		}
		select {
		case <-seen:
			if !c.seen {
				t.Errorf("%q: seen", c.pieces)
			}
		default:
			if c.seen {
				t.Errorf("%q: not seen", c.pieces)
			}
		}
		if got := w.buf.String(); got != strings.Join(c.pieces, "") {
			t.Errorf("kept %q", got)
		}
	}
}

// The clone's SSH forward replaces the template's: a saved definition
// without vmup's user netdev is refused, never restored with the
// template VM's forward.
func TestTemplateNetdev(t *testing.T) {
	got, err := templateNetdev(`<qemu:arg value='user,id=vmupnet,restrict=on,hostfwd=tcp:127.0.0.1:4022-:22'/>`)
	if err != nil || got != "user,id=vmupnet,restrict=on,hostfwd=tcp:127.0.0.1:4022-:22" {
		t.Errorf("got %q, %v", got, err)
	}
	if got, err := templateNetdev(`<interface type='network'><source network='default'/></interface>`); err == nil {
		t.Errorf("no user netdev: got %q, want an error", got)
	}
}
