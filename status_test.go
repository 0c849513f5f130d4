package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// virshCost is what one virsh call costs on a real host: a connection to
// libvirtd and back (the issue measured 21 ms per VM for status).
const virshCost = 20 * time.Millisecond

// costlyRunner is the fake runner with a fixed cost per virsh call.
type costlyRunner struct {
	*fakeRunner
	cost time.Duration
}

func (c costlyRunner) Run(ctx context.Context, cmd Cmd) (Result, error) {
	if filepath.Base(cmd.Args[0]) == "virsh" {
		time.Sleep(c.cost) // models the call's cost, not a synchronisation
	}
	return c.fakeRunner.Run(ctx, cmd)
}

// fakeVM writes the journal of a VM made and shut off (or running) as
// `vmup up -d` leaves it, and defines its domain in the fake world.
func fakeVM(tb testing.TB, home string, w *fakeWorld, name, connect, domain string, port int, edit func(j *Journal)) {
	tb.Helper()
	paths := pathsFor(home, name)
	if err := ensureDir(paths.Dir); err != nil {
		tb.Fatal(err)
	}
	j := &Journal{Name: name, Phase: Detached, FailedIn: noPhase, FirstBootDone: true, User: "vmup", Network: "user",
		Connect: connect, Pool: "vmup", SSHHost: "127.0.0.1", SSHPort: port, CPUs: 2, MemoryMiB: 2048, DiskGiB: 20}
	if edit != nil {
		edit(j)
	}
	if err := writeJournal(paths, j); err != nil {
		tb.Fatal(err)
	}
	if domain != "" {
		w.Domains[name], w.Owned[name] = domain, true
	}
}

// withStdout sends what f prints on stdout to a file and returns it.
func withStdout(tb testing.TB, f func()) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "stdout")
	file, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = file
	defer func() { os.Stdout = saved; file.Close() }()
	f()
	data, _ := os.ReadFile(path)
	return string(data)
}

// BenchmarkStatus times `vmup status` of 1, 10 and 100 VMs against a fake
// virsh whose every call costs virshCost, next to the cost of one call.
// Run: go test -bench Status -run XXX .
func BenchmarkStatus(b *testing.B) {
	b.Run("one-virsh-call", func(b *testing.B) {
		r := costlyRunner{newFakeRunner(), virshCost}
		r.world.Domains["vm000"] = "running"
		v := newVirsh(r, "qemu:///session")
		for b.Loop() {
			if _, err := v.DomState(context.Background(), "vm000"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(r.recorded()))/float64(b.N), "virsh-calls/op")
	})
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			r := costlyRunner{newFakeRunner(), virshCost}
			home := b.TempDir()
			for i := range n {
				state := "running"
				if i%2 == 1 {
					state = "shut off"
				}
				fakeVM(b, home, r.world, fmt.Sprintf("vm%03d", i), "qemu:///session", state, 2200+i, nil)
			}
			env := Env{Runner: r, Home: home, Out: newOutput(&nopWriter{}, nil, "")}
			o, _, err := parseCommand("status", nil)
			if err != nil {
				b.Fatal(err)
			}
			var runs int
			withStdout(b, func() {
				for b.Loop() {
					runs++
					if code := runStatus(env, o); code != exitOK {
						b.Fatalf("status: exit %d", code)
					}
				}
			})
			b.ReportMetric(float64(len(r.recorded()))/float64(runs), "virsh-calls/op")
		})
	}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
