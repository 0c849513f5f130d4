package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Ctrl+C (or a closed terminal's SIGHUP) during `vmup destroy` kills it
// between `virsh destroy` and `undefine`: a half-destroyed VM.
func TestCtrlCDuringDestroyNeverHalfDestroys(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	waiting, open := r.gate("undefine")
	d, out := r.start("destroy", "v1")
	waiting()
	unix.Kill(-d.Process.Pid, syscall.SIGINT) // the terminal's Ctrl+C to the foreground job
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "goes on until it is done"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) || d.ProcessState != nil {
			break // the old code died at once
		}
	}
	open()
	d.Wait()
	w := loadWorld(filepath.Join(r.dir, "world.json"))
	_, domain := w.Domains["v1"]
	vols := 0
	for v := range w.Volumes {
		if len(v) > 7 && v[:7] == "vmup/v1" {
			vols++
		}
	}
	_, stateErr := os.Stat(filepath.Join(r.home, "vms", "v1", "state.json"))
	t.Logf("destroy exit %d (%v); domain defined %v (%s); v1 volumes %d; state.json present %v\n%s",
		d.ProcessState.ExitCode(), d.ProcessState, domain, w.Domains["v1"], vols, stateErr == nil, out)
	if domain || vols > 0 || stateErr == nil {
		t.Errorf("Ctrl+C left a half-destroyed VM")
	}
}

// `down` decides "not in its first boot" from state.json, which a
// retried first boot holds back while it prepares; if the up enters starting
// between that read and the SIGTERM, the kept VM is wiped.
func TestDownRacingARetriedFirstBootStress(t *testing.T) {
	if os.Getenv("VMUP_STRESS") == "" {
		t.Skip("a stress test: set VMUP_STRESS=1")
	}
	r := startVmup(t, "fail", "-d")
	if code := r.exitCode(); code != exitProvision {
		t.Fatalf("up -d: exit %d", code)
	}
	for i := 0; i < 60; i++ {
		if _, err := os.Stat(filepath.Join(r.home, "vms", "v1")); err != nil {
			t.Fatalf("iteration %d: the kept VM v1 was wiped (state dir gone)", i)
		}
		waiting, open := r.gate("domstate")
		up, upOut := r.start("up", "v1", "-d")
		waiting()
		open()
		time.Sleep(time.Duration(i%15) * time.Millisecond)
		out, code := r.vmup("down", "v1")
		up.Wait()
		if up.ProcessState.ExitCode() == exitSIGTERM && code == 0 {
			if r.called("virsh undefine v1") {
				t.Fatalf("iteration %d: down (exit %d) made the retried first boot wipe the kept VM\n%s\nup:\n%s", i, code, out, upOut)
			}
		}
	}
}
