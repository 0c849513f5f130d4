//go:build e2e

package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Last (in a file of its own that sorts last: Go runs the tests file by
// file): nothing of the whole suite is left — no e2e domain, VM volume, NVRAM
// or process of a test's VM (the suite makes no network namespace at all).
func TestE2EZNothingLeft(t *testing.T) {
	doms, _ := virsh("list", "--all", "--name")
	vols, _ := virsh("vol-list", "vmup")
	for _, line := range strings.Split(doms+"\n"+vols, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "e2e-") {
			t.Errorf("left behind: %s", f[0])
		}
	}
	// Template disks there before the suite's first VM are not its own.
	for _, vol := range templateVolumes() {
		t.Errorf("template disk left behind: %s", vol)
	}
	if nvram, _ := filepath.Glob("/var/lib/libvirt/qemu/nvram/e2e-*"); len(nvram) > 0 {
		t.Errorf("NVRAM left behind: %v", nvram)
	}
	if procs := processesMentioning("/TestE2E"); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Logf("network namespaces present (none made by this suite): %s", out)
	}
}
