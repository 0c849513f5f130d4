package main

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// squat takes a loopback port, as another program would.
func squat(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// upUntilEnd runs up and returns its exit code; a run that gets to ready
// instead is stopped, and reported as -1.
func (h *harness) upUntilEnd(args ...string) int {
	h.t.Helper()
	done := h.up(args...)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-done:
			return code
		default:
		}
		if h.has("ready") {
			h.sigs <- syscall.SIGINT
			h.wait(done)
			return -1
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("up neither ended nor got ready: %v", h.events.names())
	return -1
}

// unusedPort returns a loopback port that was free a moment ago.
func unusedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func natArgs(args []string) []string {
	for i, a := range args {
		if a == "user" {
			args[i] = "nat"
		}
	}
	return args
}

// A forward whose host port is taken is an error before the VM starts, on
// either network, never a warning beside a ready line that lists it.
func TestTakenForwardPortIsAnError(t *testing.T) {
	for _, network := range []string{"user", "nat"} {
		t.Run(network, func(t *testing.T) {
			h := newHarness(t)
			port := squat(t)
			args := h.upArgs("--forward", fmt.Sprintf("%d:80", port))
			if network == "nat" {
				args = natArgs(args)
			} else {
				args = append(args, "-d")
			}
			if code := h.upUntilEnd(args...); code != exitUsage {
				t.Errorf("exit %d, want 2\n%s", code, h.stderr)
			}
			if !strings.Contains(h.stderr.String(), fmt.Sprintf("vmup: error: --forward 127.0.0.1:%d:80: cannot listen on 127.0.0.1:%d", port, port)) ||
				!strings.Contains(h.stderr.String(), "vmup: hint: ") {
				t.Errorf("no error naming the port:\n%s", h.stderr)
			}
			if len(h.fake.world.Domains) != 0 || len(h.fake.world.Volumes) != 0 {
				t.Errorf("made %v %v", h.fake.world.Domains, h.fake.world.Volumes)
			}
		})
	}
}

// A re-up of a shut-off NAT VM whose forward port was taken meanwhile does not start it.
func TestTakenForwardPortIsAnErrorOnReup(t *testing.T) {
	h := newHarness(t)
	port := squat(t)
	free := unusedPort(t)
	if code := h.upUntilEnd(natArgs(h.upArgs("--forward", fmt.Sprintf("%d:80", free)))...); code != -1 {
		t.Fatalf("first up: exit %d\n%s", code, h.stderr)
	}
	// The forward was served while up ran.
	j := h.journal()
	j.Forwards = []string{fmt.Sprintf("127.0.0.1:%d:80", port)}
	writeJournal(pathsFor(h.env.Home, "v1"), j)
	h.fake.calls = nil
	h.stderr.Reset()
	h.events = newEventLog()
	if code := h.upUntilEnd("v1"); code != exitUsage {
		t.Errorf("exit %d, want 2\n%s", code, h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && c[1] == "start" {
			t.Error("the VM was started")
		}
	}
}

// The ready line lists only forwards that are served: a NAT VM's are not
// once vmup detaches.
func TestReadyLineListsOnlyServedForwards(t *testing.T) {
	h := newHarness(t)
	free := unusedPort(t)
	if code := h.upUntilEnd(natArgs(h.upArgs("--forward", fmt.Sprintf("%d:80", free)))...); code != -1 {
		t.Fatalf("first up: exit %d\n%s", code, h.stderr)
	}
	h.events.waitFor(t, "ready", fmt.Sprintf("127.0.0.1:%d -> 80", free))
	h.events = newEventLog()
	h.stderr.Reset()
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("up -d: exit %d\n%s", code, h.stderr)
	}
	h.events.waitFor(t, "ready", "")
	for _, ev := range h.events.names() {
		if strings.HasPrefix(ev, "ready:") && strings.Contains(ev, "-> 80") {
			t.Errorf("a forward that is not served is listed: %s", ev)
		}
	}
	if !strings.Contains(h.stderr.String(), "vmup: warning: ") {
		t.Errorf("no word that the forwards are not served:\n%s", h.stderr)
	}
}
