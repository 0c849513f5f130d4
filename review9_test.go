package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A vmup killed between `virsh managedsave` and `managedsave-define` leaves
// a save whose definition names the first boot's seed, deleted since: the
// next up must make it restorable, not fail at `virsh start` forever.
func TestSaveKilledBeforeItsDefinitionWasRepointedStillRestores(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	w := h.fake.world
	// What libvirt holds after the crash: the live definition, as saved.
	w.ManagedSave["v1"], w.Domains["v1"], w.SaveXML["v1"] = true, "shut off", w.Live["v1"]
	if !strings.Contains(w.SaveXML["v1"], "v1-seed.iso") {
		t.Fatalf("setup: the live definition does not name the first seed:\n%s", w.SaveXML["v1"])
	}
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("up of a VM saved by a killed vmup: exit %d, want 0 (restored)\n%s", code, h.stderr)
	}
	if w.ManagedSave["v1"] || w.Domains["v1"] != "running" {
		t.Errorf("not restored: saved %v, domain %s", w.ManagedSave["v1"], w.Domains["v1"])
	}
}

// A save that libvirt made but whose definition could not be repointed is
// a saved VM, not a running one: down must not say "it keeps running" (nor
// exit 4, "a save that failed: the VM keeps running").
func TestSaveThatCannotRepointIsNotReportedAsRunning(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Fail["managedsave-define"] = "error: operation failed: cannot write /var/lib/libvirt/qemu/save/v1.save: No space left on device"
	code := h.down("--suspend")
	if !h.fake.world.ManagedSave["v1"] {
		t.Fatalf("setup: libvirt did not save")
	}
	if code == exitStopFailed || strings.Contains(h.stderr.String(), "it keeps running") {
		t.Errorf("a saved VM was reported as running: exit %d\n%s", code, h.stderr)
	}
	if code != 0 || !strings.Contains(h.stderr.String(), "vmup: warning: VM v1 is saved, but its saved definition still names") {
		t.Errorf("exit %d, want 0 with a warning\n%s", code, h.stderr)
	}
	delete(h.fake.world.Fail, "managedsave-define")
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Errorf("the next up did not restore it: exit %d\n%s", code, h.stderr)
	}
}

// --discard-saved drops the guest's memory for good: an up refused for
// another reason (a disk that would shrink) must leave the save alone, as
// every refusal is checked before anything changes.
func TestDiscardSavedKeepsTheSaveWhenTheRunIsRefused(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	if code := h.wait(h.up("v1", "-d", "--disk", "8")); code != 0 {
		t.Fatalf("grow: exit %d\n%s", code, h.stderr)
	}
	h.saved()
	code := h.wait(h.up("v1", "-d", "--discard-saved", "--disk", "4"))
	if code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	if !h.fake.world.ManagedSave["v1"] {
		t.Errorf("a refused up discarded the saved state:\n%s", h.stderr)
	}
}

// The guest powers itself off just as a save is asked for: the save fails
// ("domain is not running") and the domain is shut off. The run must end
// promptly and not claim the VM keeps running.
func TestSaveOfADomainThatShutOffEndsPromptly(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.onCall = func(args []string) {
		if args[0] == "virsh" && args[1] == "managedsave" {
			h.fake.mu.Lock()
			h.fake.world.Domains["v1"] = "shut off"
			h.fake.mu.Unlock()
		}
	}
	done := h.up("v1")
	h.events.waitFor(t, "waiting", "")
	h.sigs <- syscall.SIGUSR1
	select {
	case code := <-done:
		// The guest powered off instead: stopped, not a failed stop.
		if code != 0 || h.journal().Phase != Stopped {
			t.Errorf("exit %d, phase %s; want 0, stopped", code, h.journal().Phase)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the save of a shut-off domain still polls after 10s\n%s", h.stderr)
	}
	if strings.Contains(h.stderr.String(), "it keeps running") || !strings.Contains(h.stderr.String(), "it is shut off, not saved") {
		t.Errorf("a shut-off VM was reported as running:\n%s", h.stderr)
	}
}

// A reset that fails must leave the journal describing the domain's
// definition, whatever libvirt left: a revert refused up front keeps the
// domain's; one whose start failed has already made the snapshot's the
// domain's. Else the next up waits for SSH on a port the guest lacks.
func TestFailedResetKeepsTheJournalTrue(t *testing.T) {
	for _, how := range []string{"refused", "start failed"} {
		h := newHarness(t)
		h.createDetached()
		h.fake.world.Domains["v1"] = "shut off"
		if code := h.wait(h.up("v1", "-d", "--memory", "4096")); code != 0 {
			t.Fatalf("re-up: exit %d\n%s", code, h.stderr)
		}
		if how == "refused" {
			h.fake.world.Fail["snapshot-revert"] = "error: Failed to revert snapshot vmup-provisioned\nerror: operation invalid: domain has active block job"
		} else {
			delete(h.fake.world.Volumes, "vmup/v1-seed-boot.iso") // the snapshot's definition names it
		}
		if code := h.wait(h.reset()); code != exitFailed {
			t.Fatalf("%s: reset: exit %d, want 1\n%s", how, code, h.stderr)
		}
		j, x := h.journal(), h.fake.world.XML["v1"]
		if !strings.Contains(x, fmt.Sprintf(">%d<", j.MemoryMiB)) {
			t.Errorf("%s: after a failed reset the journal says memory %d; the domain's definition:\n%s", how, j.MemoryMiB, x)
		}
	}
}

// A provisioned snapshot deleted by hand: reset must say so before it
// changes anything, not drop the saved state and then fail.
func TestResetWithoutItsSnapshotChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.saved()
	w := h.fake.world
	w.Snapshots["v1"] = nil
	delete(w.SnapshotXML, "v1/vmup-provisioned")
	code := h.wait(h.reset())
	if code == 0 {
		t.Fatalf("reset without a snapshot: exit 0\n%s", h.stderr)
	}
	if !w.ManagedSave["v1"] {
		t.Errorf("a reset that could not work discarded the saved state (exit %d)\n%s", code, h.stderr)
	}
}

// state.json is not trusted: a disk-only provisioned state needs the disk
// it froze, and the NVRAM copy needs UEFI; a user network needs a port.
func TestJournalValidatesProvisionedAgainstTheVM(t *testing.T) {
	good := func() *Journal {
		return &Journal{Name: "v1", User: "vmup", Network: "user", Connect: "qemu:///system", Pool: "vmup",
			Firmware: "uefi", FirstBootDone: true, DiskVolume: runDiskVolume("v1"),
			Provisioned: &Provisioned{Kind: "disk", NVRAM: "/var/lib/libvirt/qemu/nvram/v1_VARS.fd", Network: "user", SSHHost: "127.0.0.1", SSHPort: 2222,
				CPUs: 2, MemoryMiB: 2048, DiskGiB: 4}}
	}
	if err := validateJournal(good(), "v1"); err != nil {
		t.Fatalf("a good journal: %v", err)
	}
	bad := map[string]func(j *Journal){
		"disk state without its overlay": func(j *Journal) { j.DiskVolume = "" },
		"nvram copy without uefi":        func(j *Journal) { j.Firmware = "bios"; j.Provisioned.Kind = "memory"; j.DiskVolume = "" },
		"user network without a port":    func(j *Journal) { j.Provisioned.SSHPort = 0 },
		"memory state under uefi":        func(j *Journal) { j.Provisioned.Kind, j.Provisioned.NVRAM = "memory", "" },
	}
	for what, f := range bad {
		j := good()
		f(j)
		if err := validateJournal(j, "v1"); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}

// The NVRAM path comes from libvirt's definition, which anyone with access
// to libvirt may change: a reset must not write the kept NVRAM to (or
// delete) a file outside libvirt's NVRAM directory.
func TestResetWritesNVRAMOnlyWhereLibvirtKeepsIt(t *testing.T) {
	h := newHarness(t)
	h.withNVRAMDir()
	if code := h.wait(h.up(h.upArgs("-d", "--firmware", "uefi")...)); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	elsewhere := filepath.Join(t.TempDir(), "etc-cron.d")
	os.MkdirAll(elsewhere, 0o755)
	victim := filepath.Join(elsewhere, "v1_VARS")
	h.fake.world.NVRAMFile = map[string]string{"v1": victim}
	os.WriteFile(victim, []byte("victim"), 0o600)
	h.wait(h.reset())
	if data, _ := os.ReadFile(victim); string(data) != "victim" {
		t.Errorf("reset wrote the kept NVRAM to %s, which the domain's definition named", victim)
	}
}

// A disk reset that fails after it deleted the VM's overlay: its hint says
// `vmup up` starts the VM as it is, which must then be true.
func TestFailedDiskResetLeavesAStartableVM(t *testing.T) {
	h := newHarness(t)
	h.withNVRAMDir()
	if code := h.wait(h.up(h.upArgs("-d", "--firmware", "uefi")...)); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	h.fake.world.Fail["vol-create-as vmup v1-run.qcow2"] = "error: Failed to create vol v1-run.qcow2\nerror: cannot allocate 4294967296 bytes in file '/pool/vmup/v1-run.qcow2': No space left on device"
	if code := h.wait(h.reset()); code != exitFailed {
		t.Fatalf("reset: exit %d, want 1\n%s", code, h.stderr)
	}
	delete(h.fake.world.Fail, "vol-create-as vmup v1-run.qcow2")
	if !strings.Contains(h.stderr.String(), "`vmup up v1` to start it as it is") {
		t.Fatalf("setup: hint changed:\n%s", h.stderr)
	}
	h.stderr.Reset()
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Errorf("`vmup up v1` after the failed reset, as its hint says: exit %d\n%s", code, h.stderr)
	}
}

// `vmup down` (not --suspend) asks for a shutdown. Against a foreground up
// started with --suspend-on-stop, its SIGTERM is taken for a stop that
// saves: the VM ends saved, and down (which leaves a saved VM saved) reports
// success; no command then shuts that VM down.
func TestBinaryDownShutsDownAnUpThatSuspendsOnStop(t *testing.T) {
	r := startVmup(t, "ok", "--suspend-on-stop")
	r.waitEvent("ready")
	out, code := r.vmup("down", "v1")
	if code != 0 {
		t.Fatalf("down: exit %d\n%s", code, out)
	}
	r.exitCode()
	if !r.called("virsh shutdown v1 --mode acpi") || r.called("virsh managedsave v1") {
		t.Errorf("down saved the VM instead of shutting it down:\n%s", out)
	}
}

// Under --suspend-on-stop the foreground up says what Ctrl+C does: it saves.
func TestSuspendOnStopSaysCtrlCSaves(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	done := h.up("v1", "--suspend-on-stop")
	h.events.waitFor(t, "waiting", "")
	h.sigs <- syscall.SIGINT
	h.wait(done)
	if !h.fake.world.ManagedSave["v1"] {
		t.Fatalf("setup: Ctrl+C did not save\n%s", h.stderr)
	}
	if !strings.Contains(h.stderr.String(), "Press Ctrl+C to save the VM") {
		t.Errorf("the waiting line does not say that Ctrl+C saves:\n%s", h.stderr)
	}
}
