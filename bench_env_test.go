//go:build e2e && bench

package main

import (
	"testing"
	"time"
)

// TestBenchEnvironment (`make bench`): three VMs' first boot with the
// playbook as one environment (first boots in parallel, one playbook) against
// three single `vmup up -d` of the same settings one after another, in one
// run, as a ratio. The goal on a 2-core TCG host is 0.6 or less.
func TestBenchEnvironment(t *testing.T) {
	e := newEnvE2E(t, "benchenv")
	e.writeFile(map[string][]string{"b1": {"web"}, "b2": {"web"}, "b3": {"db"}})
	env := timed(func() {
		if _, _, code := e.vmup(30*time.Minute, "up", "-d"); code != 0 {
			t.Fatalf("up -d of the environment: exit %d", code)
		}
	})
	if _, _, code := e.vmup(10*time.Minute, "destroy"); code != 0 {
		t.Fatalf("destroy of the environment: exit %d", code)
	}
	var singles time.Duration
	for _, name := range []string{"benchsingle1", "benchsingle2", "benchsingle3"} {
		s := newE2E(t, name)
		args := s.upArgs("env.yml", "-d")
		for i, a := range args { // the environment's settings: no restriction, 768 MiB, 1 vCPU
			switch a {
			case "--restrict-network":
				args[i] = "--restrict-network=false"
			case "--memory":
				args[i+1] = "768"
			}
		}
		args = append(args, "--cpus", "1", "--boot-timeout", "10m")
		singles += timed(func() { s.must(15*time.Minute, args...) })
		s.must(5*time.Minute, "destroy", name)
	}
	t.Logf("BENCH environment of 3, first boot with the playbook: %s s; 3 single ups one after another: %s s; ratio %.2f (goal ≤ 0.6)",
		seconds(env), seconds(singles), env.Seconds()/singles.Seconds())
}
