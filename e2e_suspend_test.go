//go:build e2e

package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guestClockSkew is how far the guest's clock is from the host's.
func (e *e2e) guestClockSkew() time.Duration {
	e.t.Helper()
	out := e.must(time.Minute, "ssh", e.name, "--", "date", "+%s.%N")
	host := time.Now()
	secs, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		e.t.Fatalf("guest date: %q", out)
	}
	skew := host.Sub(time.Unix(0, int64(secs*1e9))).Abs()
	e.t.Logf("guest clock off by %s", skew)
	return skew
}

// checkProvisionedOnce: the playbook's marker is there and it ran once.
func (e *e2e) checkProvisionedOnce() {
	e.t.Helper()
	if out := e.must(time.Minute, "ssh", e.name, "--", "cat", "/var/tmp/vmup-marker"); !strings.Contains(out, "provisioned by vmup") {
		e.t.Errorf("marker: %q", out)
	}
	if out := e.must(time.Minute, "ssh", e.name, "--", "cat", "/var/tmp/vmup-runs"); strings.Count(out, "run") != 1 {
		e.t.Errorf("the playbook ran %d times, want 1", strings.Count(out, "run"))
	}
}

func (e *e2e) domStateReason() string {
	out, _ := virsh("domstate", "--reason", e.name)
	return out
}

// up → playbook → down --suspend → up (resumed, clock set over SSH: the agent
// is stopped) → a change in the guest → reset (gone; marker there; clock set
// by the agent) → a foreground up saved by `down --suspend` from elsewhere →
// one saved by its own Ctrl+C under --suspend-on-stop → destroy of the saved
// VM with its provisioned snapshot: nothing left.
func TestE2ESuspendResumeReset(t *testing.T) {
	e := newE2E(t, "e2e-sr")
	e.must(10*time.Minute, e.upArgs("marker.yml", "-d")...)
	if snaps, _ := virsh("snapshot-list", e.name, "--name"); !strings.Contains(snaps, "vmup-provisioned") {
		t.Fatalf("no provisioned snapshot after the first boot: %q", snaps)
	}
	e.must(time.Minute, "ssh", e.name, "--", "sudo", "systemctl", "stop", "qemu-guest-agent")

	start := time.Now()
	e.must(3*time.Minute, "down", "--suspend", e.name)
	t.Logf("TIMING down --suspend: %.1fs", time.Since(start).Seconds())
	if st := e.domStateReason(); st != "shut off (saved)" {
		t.Fatalf("after down --suspend the domain is %q", st)
	}
	if out, _, _ := e.vmup(time.Minute, "status", e.name); !strings.Contains(out, "saved") {
		t.Errorf("status does not show the VM saved:\n%s", out)
	}
	// The guest's clock stands still while it is saved: let it fall behind.
	time.Sleep(15 * time.Second)
	start = time.Now()
	_, stderr, code := e.vmup(5*time.Minute, "up", e.name, "-d")
	if code != 0 || !strings.Contains(stderr, "resumed from its saved state") || strings.Contains(stderr, "Provisioning") {
		t.Fatalf("up of the saved VM: exit %d\n%s", code, stderr)
	}
	t.Logf("TIMING re-up by resume to ready: %.1fs", time.Since(start).Seconds())
	if skew := e.guestClockSkew(); skew > 3*time.Second {
		t.Errorf("after the resume the guest's clock is %s off (set over SSH)", skew)
	}
	e.checkProvisionedOnce()

	e.must(time.Minute, "ssh", e.name, "--", "sudo", "sh", "-c", "'echo changed > /var/tmp/changed; rm /var/tmp/vmup-marker'")
	time.Sleep(10 * time.Second) // the provisioned state's clock falls further behind
	start = time.Now()
	_, stderr, code = e.vmup(5*time.Minute, "reset", e.name)
	if code != 0 {
		t.Fatalf("reset: exit %d\n%s", code, stderr)
	}
	t.Logf("TIMING reset to ready: %.1fs", time.Since(start).Seconds())
	if out, _, _ := e.vmup(time.Minute, "ssh", e.name, "--", "test", "-e", "/var/tmp/changed", "&&", "echo", "still-there"); strings.Contains(out, "still-there") {
		t.Errorf("the change made after the first boot survived the reset")
	}
	e.checkProvisionedOnce()
	if skew := e.guestClockSkew(); skew > 3*time.Second {
		t.Errorf("after the reset the guest's clock is %s off", skew)
	}

	// A foreground up asked to save by `down --suspend` from another terminal: both end 0.
	f := e.startUp("up", e.name)
	f.waitEvent("waiting", "", 5*time.Minute)
	start = time.Now()
	e.must(3*time.Minute, "down", "--suspend", e.name)
	if code := f.exitCode(time.Minute); code != 0 {
		t.Errorf("the foreground up asked to save: exit %d, want 0", code)
	}
	t.Logf("TIMING down --suspend of a foreground up: %.1fs", time.Since(start).Seconds())
	if st := e.domStateReason(); st != "shut off (saved)" {
		t.Fatalf("after down --suspend of a foreground up the domain is %q", st)
	}

	// --suspend-on-stop: Ctrl+C saves; a second one while saving is acknowledged.
	f = e.startUp("up", e.name, "--suspend-on-stop")
	f.waitEvent("waiting", "", 5*time.Minute)
	f.signalGroup(syscall.SIGINT)
	f.waitEvent("saving", "", time.Minute)
	f.signalGroup(syscall.SIGINT)
	if code := f.exitCode(time.Minute); code != 0 {
		t.Errorf("Ctrl+C under --suspend-on-stop: exit %d, want 0", code)
	}
	if st := e.domStateReason(); st != "shut off (saved)" {
		t.Fatalf("after Ctrl+C under --suspend-on-stop the domain is %q", st)
	}

	start = time.Now()
	e.must(3*time.Minute, "destroy", e.name)
	t.Logf("TIMING destroy of a saved VM with a provisioned snapshot: %.1fs", time.Since(start).Seconds())
	e.checkNothingLeft()
}
