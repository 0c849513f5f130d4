//go:build e2e && bench

package main

import (
	"syscall"
	"testing"
	"time"
)

// TestBenchRun (`make bench`): what `vmup run` costs beyond the workload.
// On one running VM, medians of 5: `vmup run NAME -- true` against a plain
// `vmup ssh NAME -- true` (goal: at most 1 s more); and from the second
// Ctrl+C in a workload whose trap exits at once to every runner's
// confirmation (goal: at most 2 s).
func TestBenchRun(t *testing.T) {
	e := newE2E(t, "benchrun")
	args := e.upArgs("marker.yml", "-d")
	for i, a := range args {
		if a == "--memory" {
			args[i+1] = "768"
		}
	}
	e.must(15*time.Minute, append(args, "--cpus", "1")...)
	var runs, sshs, stops []time.Duration
	for range 5 {
		sshs = append(sshs, timed(func() { e.must(time.Minute, "ssh", "benchrun", "--", "true") }))
		runs = append(runs, timed(func() { e.must(2*time.Minute, "run", "benchrun", "--results", e.home+"/results", "--", "true") }))
	}
	for range 3 {
		f := e.startRun([]string{"run", "benchrun", "--results", e.home + "/results", "--",
			"sh", "-c", "trap 'exit 0' INT; touch /tmp/bench-ready; while :; do sleep 1; done"})
		f.waitEvent("run_phase", "workload", time.Minute)
		e.waitGuestFile("benchrun", "/tmp/bench-ready", time.Minute)
		e.vmupQuiet(time.Minute, "ssh", "benchrun", "--", "rm", "-f", "/tmp/bench-ready")
		f.signalGroup(syscall.SIGINT)
		f.waitEvent("confirm_stop", "", 10*time.Second)
		f.signalGroup(syscall.SIGINT)
		asked := time.Now()
		f.waitEvent("run_phase", "collecting", time.Minute)
		stops = append(stops, time.Since(asked))
		if code := f.exitCode(2 * time.Minute); code != 130 {
			t.Fatalf("two Ctrl+C: exit %d", code)
		}
	}
	run, ssh, stop := median(runs), median(sshs), median(stops)
	t.Logf("BENCH `vmup run NAME -- true` on a running VM: %s s; `vmup ssh NAME -- true`: %s s; run beyond ssh: %s s (goal ≤ 1 s)",
		seconds(run), seconds(ssh), seconds(run-ssh))
	t.Logf("BENCH second Ctrl+C in a workload whose trap exits at once, to every runner confirmed: %s s (goal ≤ 2 s)", seconds(stop))
}
