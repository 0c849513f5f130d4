//go:build e2e && bench

package main

import (
	"testing"
	"time"
)

// TestBenchTemplate (`make bench`): a VM from a template to Ready against a
// first boot of the same recipe (QEMU TCG, 1 GiB; goal ≤ 5 s and a ratio ≤
// 0.1), and `vmup run --template … -- true` end to end from the cached
// template. Medians of 3 clones; one first boot (it makes the template).
func TestBenchTemplate(t *testing.T) {
	a := newE2E(t, "benchtpla")
	// Runs before the VMs' own cleanups: then no template of this home is left.
	t.Cleanup(func() {
		a.vmup(5*time.Minute, "destroy", "benchtpla")
		a.vmup(time.Minute, "prune", "--keep-templates", "0s")
	})
	args := a.upArgs("marker.yml", "-d", "--template")
	first := timed(func() { a.must(15*time.Minute, args...) })
	var clones, runs []time.Duration
	for _, name := range []string{"benchtplb", "benchtplc", "benchtpld"} {
		c := a.sameHome(name)
		cargs := c.upArgs("marker.yml", "-d", "--template")
		clones = append(clones, timed(func() { c.must(5*time.Minute, cargs...) }))
		c.must(5*time.Minute, "destroy", name)
	}
	for range 3 {
		rargs := a.upArgs("marker.yml", "--template", "--results", a.home+"/results", "--", "true")
		rargs[0], rargs[1] = "run", "benchtplrun"
		r := a.sameHome("benchtplrun")
		runs = append(runs, timed(func() { r.must(5*time.Minute, rargs...) }))
	}
	clone, run := median(clones), median(runs)
	t.Logf("BENCH first boot with --template (boot, cloud-init, playbook, template made): %s s", seconds(first))
	t.Logf("BENCH VM from a template to Ready: %s s (goal ≤ 5 s); ratio to the first boot %.3f (goal ≤ 0.1)",
		seconds(clone), clone.Seconds()/first.Seconds())
	t.Logf("BENCH `vmup run --template … -- true` from the cached template, end to end: %s s", seconds(run))
}
