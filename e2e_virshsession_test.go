//go:build e2e

package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// A session's answers are a virsh process's, byte for byte, failures too.
func TestE2EVirshSessionAnswersAsOneProcess(t *testing.T) {
	ctx := context.Background()
	s := newSessionRunner(execRunner{}, "virsh")
	defer s.Close()
	long := strings.Repeat("x", 3000) // longer than readline's line: echoed scrolled
	cases := [][]string{
		{"uri"},
		{"list", "--all", "--name"},
		{"vol-list", "vmup"},
		{"domstate", "e2e-no-such-vm"},
		{"vol-path", "--pool", "vmup", long},
		{"dumpxml", "e2e-no-such-vm"},
		{"vol-info", "--pool", "vmup", "no-such-volume.qcow2"},
		{"domcapabilities", "--virttype", "qemu"},
	}
	for _, args := range cases {
		argv := append([]string{"virsh", "-c", uri}, args...)
		if _, ok := s.sessionable(Cmd{Args: argv}); !ok {
			t.Fatalf("%v: not sessionable", args)
		}
		want, werr := execRunner{}.Run(ctx, Cmd{Args: argv})
		got, gerr := s.Run(ctx, Cmd{Args: argv})
		if string(got.Stdout) != string(want.Stdout) || string(got.Stderr) != string(want.Stderr) {
			t.Errorf("%.60v:\nsession stdout %q stderr %q\nprocess stdout %q stderr %q", args,
				trim(got.Stdout), trim(got.Stderr), trim(want.Stdout), trim(want.Stderr))
		}
		var we, ge *ExitError
		if errors.As(werr, &we) != errors.As(gerr, &ge) || (werr == nil) != (gerr == nil) {
			t.Errorf("%.60v: session error %v, process error %v", args, gerr, werr)
		}
		if gerr != nil && classify(gerr) != nil && errors.Is(classify(werr), errNotFound) != errors.Is(classify(gerr), errNotFound) {
			t.Errorf("%.60v: not found told apart differently: %v / %v", args, gerr, werr)
		}
	}
	if len(s.byURI) != 1 {
		t.Fatalf("sessions: %d, want 1", len(s.byURI))
	}

	// At once from many goroutines: each gets its own answer.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("e2e-no-such-vm-%d", i)
			_, err := s.Run(ctx, Cmd{Args: []string{"virsh", "-c", uri, "domstate", name}})
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("domstate %s: %v", name, err)
			}
		}()
	}
	wg.Wait()

	// A cancelled command ends its session; the next command gets another.
	old := s.byURI[uri].s
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Run(cctx, Cmd{Args: []string{"virsh", "-c", uri, "uri"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	old.kill()
	start := time.Now()
	if res, err := s.Run(ctx, Cmd{Args: []string{"virsh", "-c", uri, "uri"}}); err != nil || strings.TrimSpace(string(res.Stdout)) != uri {
		t.Errorf("after its session was killed: %q %v", res.Stdout, err)
	}
	if s.byURI[uri].s == old {
		t.Error("the killed session is still used")
	}
	t.Logf("a new session and one command: %v", time.Since(start))

	per := func(r Runner) time.Duration {
		start := time.Now()
		for range 10 {
			r.Run(ctx, Cmd{Args: []string{"virsh", "-c", uri, "domstate", "e2e-no-such-vm"}})
		}
		return time.Since(start) / 10
	}
	t.Logf("FIGURE a virsh command: %v in a session, %v as a process of its own", per(s), per(execRunner{}))
}

func trim(b []byte) string {
	s := string(b)
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
