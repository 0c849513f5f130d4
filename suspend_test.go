package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The rows of suspending and resetting, one by one.
func TestRowsOfSuspendAndReset(t *testing.T) {
	cases := []struct {
		p    Phase
		e    Event
		want Transition
	}{
		{Booting, EvSuspend, to(Suspending, exitOK, ActStopWork, ActSave)},
		{Running, EvSuspend, to(Suspending, exitOK, ActStopWork, ActSave)},
		{Suspending, EvInterrupt, to(Suspending, keep, ActSayBusySaving)},
		{Suspending, EvInterruptAgain, to(Suspending, keep, ActSayBusySaving)},
		{Suspending, EvTerminate, to(Suspending, keep, ActSayBusySaving)},
		{Suspending, EvHangup, to(Suspending, keep, ActSayBusySaving)},
		{Suspending, EvSaved, to(Saved, keep)},
		{Suspending, EvSaveFailed, to(StopFailed, exitStopFailed, ActReportFailure)},
		{Suspending, EvDomainStopped, to(Stopped, keep)},
		{Preparing, EvPreparedReset, to(Resetting, keep, ActReset)},
		{Resetting, EvInterrupt, to(Resetting, keep, ActSayBusyResetting)},
		{Resetting, EvInterruptAgain, to(Resetting, keep, ActSayBusyResetting)},
		{Resetting, EvTerminate, to(Resetting, keep, ActSayBusyResetting)},
		{Resetting, EvHangup, to(Resetting, keep, ActSayBusyResetting)},
		{Resetting, EvResetDone, to(Booting, keep, ActStartBoot)},
		{Resetting, EvResetFailed, to(Failed, exitFailed, ActReportFailure)},
	}
	for _, c := range cases {
		got, ok := Step(c.p, c.e)
		if !ok {
			t.Errorf("%s/%s: no row", c.p, c.e)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%s/%s (-want +got):\n%s", c.p, c.e, diff)
		}
	}
	// A half-made VM is never saved; a shutdown under way is not turned into a
	// save; down --suspend's repeated requests are quietly ignored.
	for _, p := range []Phase{Preparing, Starting, Provisioning, Stopping, Wiping, Suspending, Resetting} {
		if _, ok := Step(p, EvSuspend); ok {
			t.Errorf("%s handles suspend", p)
		}
	}
}

func TestSignalEventSuspends(t *testing.T) {
	if got := signalEvent(syscall.SIGUSR1, false, false); got != EvSuspend {
		t.Errorf("SIGUSR1 = %s, want suspend", got)
	}
	for _, sig := range []string{"INT", "TERM", "HUP"} {
		if got := signalEvent(sigByName[sig], false, true); got != EvSuspend {
			t.Errorf("%s under --suspend-on-stop after the first boot = %s, want suspend", sig, got)
		}
	}
	if got := signalEvent(syscall.SIGUSR2, false, true); got != EvStop {
		t.Errorf("SIGUSR2 (down's stop request) under --suspend-on-stop = %s, want stop", got)
	}
	if got := signalEvent(sigForceStop, false, true); got != EvForceStop {
		t.Errorf("sigForceStop (down --force) under --suspend-on-stop = %s, want force_stop", got)
	}
	if got := signalEvent(syscall.SIGINT, true, false); got != EvInterruptAgain {
		t.Errorf("SIGINT in the window without stopSaves = %s", got)
	}
}

func (h *harness) down(args ...string) int {
	h.t.Helper()
	o, _, err := parseCommand("down", append([]string{"v1"}, args...))
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	return runDown(env, o)
}

func (h *harness) reset(args ...string) chan int {
	h.t.Helper()
	o, _, err := parseCommand("reset", append([]string{"v1"}, args...))
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	done := make(chan int, 1)
	go func() { done <- runReset(env, o) }()
	return done
}

// saveByHand leaves v1 as `down --suspend` does.
func (h *harness) saved() {
	h.t.Helper()
	if code := h.down("--suspend"); code != 0 {
		h.t.Fatalf("down --suspend: exit %d\n%s", code, h.stderr)
	}
}

func TestDownSuspendSavesTheVM(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.calls = nil
	h.saved()
	// The VM runs as its first boot started it: the save names the first
	// boot's seed, deleted since, and is made to name the later one. A save
	// virsh reported done is not asked about again.
	h.checkCalls(seq("virsh uri", "virsh domstate v1 --reason", "virsh managedsave v1",
		"virsh managedsave-dumpxml v1 --security-info", "virsh vol-path --pool vmup v1-seed-boot.iso",
		"virsh managedsave-define v1 $HOME/vms/v1/managedsave.xml"))
	if x := h.fake.world.SaveXML["v1"]; strings.Contains(x, "v1-seed.iso") || !strings.Contains(x, "v1-seed-boot.iso") {
		t.Errorf("the saved definition does not name the seed of later boots:\n%s", x)
	}
	if !h.fake.world.ManagedSave["v1"] || h.journal().Phase != Saved {
		t.Errorf("managed save %v, journal phase %s; want a save and phase saved", h.fake.world.ManagedSave["v1"], h.journal().Phase)
	}
	// status shows it saved; down of a saved VM keeps it saved.
	if s, _ := statusOf(t.Context(), h.env, "v1"); s.Domain != "saved" || s.Phase != "saved" {
		t.Errorf("status = %+v; want domain and phase saved", s)
	}
	if code := h.down(); code != 0 || !h.fake.world.ManagedSave["v1"] {
		t.Errorf("down of a saved VM: exit %d, still saved %v", code, h.fake.world.ManagedSave["v1"])
	}
}

// A VM resumed from a save runs from the repointed definition: its next
// save names no first boot's seed, and asks libvirt nothing about seeds.
func TestSecondSaveAsksNothingOfSeeds(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.saved()
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	h.fake.calls = nil
	h.saved()
	h.checkCalls(seq("virsh uri", "virsh domstate v1 --reason", "virsh managedsave v1",
		"virsh managedsave-dumpxml v1 --security-info"))
	if x := h.fake.world.SaveXML["v1"]; strings.Contains(x, "v1-seed.iso") || !strings.Contains(x, "v1-seed-boot.iso") {
		t.Errorf("the saved definition does not name the seed of later boots:\n%s", x)
	}
}

// A VM saved by hand in its first boot's run names the first seed, deleted
// since; a hand's `virsh start` of it fails, and libvirt then says "shut off
// (failed)" and keeps the save. up sees the save all the same: it repoints
// it and resumes the VM.
func TestUpResumesASaveAStartFailedOn(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	w := h.fake.world
	w.ManagedSave["v1"], w.SaveXML["v1"], w.Domains["v1"] = true, w.Live["v1"], "shut off"
	if !strings.Contains(w.SaveXML["v1"], "v1-seed.iso") {
		t.Fatalf("the first boot's live definition names no first seed:\n%s", w.SaveXML["v1"])
	}
	w.StartFailed["v1"] = true
	h.fake.calls = nil
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	if w.Domains["v1"] != "running" || w.ManagedSave["v1"] || !strings.Contains(h.stderr.String(), "resumed from its saved state") {
		t.Errorf("domain %s, still saved %v; stderr:\n%s", w.Domains["v1"], w.ManagedSave["v1"], h.stderr)
	}
	if !slices.ContainsFunc(h.calls(), func(c []string) bool {
		return c[1] == "qemu-agent-command" && strings.Contains(c[len(c)-1], "guest-exec")
	}) {
		t.Errorf("the resumed guest's clock was not set: %v", h.calls())
	}
}

// A save that overruns --shutdown-timeout is aborted in libvirt, not only
// in virsh, and the VM keeps running: exit 4.
func TestSaveOverrunIsAbortedInLibvirt(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.SaveHangs = true
	code := h.down("--suspend", "--shutdown-timeout", "300ms")
	if code != exitStopFailed {
		t.Fatalf("exit %d, want 4\n%s", code, h.stderr)
	}
	if h.fake.world.SaveAborted != 1 {
		t.Errorf("domjobabort ended %d save jobs, want 1", h.fake.world.SaveAborted)
	}
	if h.fake.world.Domains["v1"] != "running" || h.fake.world.ManagedSave["v1"] {
		t.Errorf("domain %s, saved %v; want it running, unsaved", h.fake.world.Domains["v1"], h.fake.world.ManagedSave["v1"])
	}
	for _, want := range []string{"could not save VM v1", "it keeps running", "vmup: hint: free space in pool vmup"} {
		if !strings.Contains(h.stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, h.stderr)
		}
	}
}

// The next up restores the saved VM and sets the guest's clock: by date
// through the guest agent, else by the agent's guest-set-time (an agent
// that blocks guest-exec), else (no agent) over SSH.
func TestUpResumesSavedVMAndSetsItsClock(t *testing.T) {
	for _, agent := range []string{"exec", "set-time", "none"} {
		h := newHarness(t)
		h.createDetached()
		h.saved()
		h.fake.world.NoAgent = agent == "none"
		h.fake.world.NoAgentExec = agent == "set-time"
		h.fake.calls = nil
		if code := h.wait(h.up("v1", "-d")); code != 0 {
			t.Fatalf("up: exit %d\n%s", code, h.stderr)
		}
		calls := h.calls()
		if !slices.ContainsFunc(calls, func(c []string) bool { return slices.Equal(c, argv("virsh start v1")) }) ||
			h.fake.world.ManagedSave["v1"] {
			t.Errorf("the saved VM was not restored: %v", calls)
		}
		agentCall := func(what string) bool {
			return slices.ContainsFunc(calls, func(c []string) bool {
				return c[1] == "qemu-agent-command" && strings.Contains(c[len(c)-1], what)
			})
		}
		byExec := agentCall(`"guest-exec-status"`) && agentCall(`"arg":["-u","-s","@`)
		bySetTime := agentCall(`"guest-set-time"`)
		bySSH := slices.ContainsFunc(h.fake.rawCalls(), func(c []string) bool {
			return filepath.Base(c[0]) == "ssh" && strings.Contains(c[len(c)-1], "sudo -n date -u -s @")
		})
		if got := fmt.Sprint(byExec, bySetTime, bySSH); got != fmt.Sprint(agent == "exec", agent == "set-time", agent == "none") {
			t.Errorf("agent %s: clock set by guest-exec, guest-set-time, SSH: %s", agent, got)
		}
		if !strings.Contains(h.stderr.String(), "resumed from its saved state") || strings.Contains(h.stderr.String(), "warning") {
			t.Errorf("stderr:\n%s", h.stderr)
		}
	}
}

// A restore brings back the saved definition: new settings or a taken SSH
// port are refused, and the saved state is kept; --discard-saved boots afresh.
func TestResumeRefusesWhatItCannotHonour(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.saved()
	code := h.wait(h.up("v1", "-d", "--memory", "4096"))
	if code != exitUsage || !strings.Contains(h.stderr.String(), "--discard-saved") {
		t.Errorf("new settings: exit %d, want 2 with a hint naming --discard-saved\n%s", code, h.stderr)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+itoa(h.journal().SSHPort))
	if err != nil {
		t.Fatal(err)
	}
	h.stderr.Reset()
	code = h.wait(h.up("v1", "-d"))
	l.Close()
	if code != exitUsage || !strings.Contains(h.stderr.String(), "is taken") {
		t.Errorf("taken SSH port: exit %d, want 2\n%s", code, h.stderr)
	}
	if !h.fake.world.ManagedSave["v1"] || h.fake.world.Domains["v1"] != "shut off" {
		t.Fatalf("a refused resume changed the saved VM")
	}
	h.fake.calls = nil
	if code := h.wait(h.up("v1", "-d", "--memory", "4096", "--discard-saved")); code != 0 {
		t.Fatalf("--discard-saved: exit %d\n%s", code, h.stderr)
	}
	if c := h.calls(); !slices.ContainsFunc(c, func(c []string) bool { return slices.Equal(c, argv("virsh managedsave-remove v1")) }) {
		t.Errorf("the saved state was not discarded: %v", c)
	}
	if j := h.journal(); j.MemoryMiB != 4096 {
		t.Errorf("memory %d after --discard-saved, want 4096", j.MemoryMiB)
	}
}

// --suspend-on-stop: Ctrl+C saves; a second Ctrl+C while saving is
// acknowledged and changes nothing; the run ends 0 with the VM saved.
func TestSuspendOnStopSavesAndIgnoresSecondCtrlC(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	saving, release := make(chan struct{}), make(chan struct{})
	h.fake.onCall = func(args []string) {
		if args[0] == "virsh" && args[1] == "managedsave" {
			close(saving)
			<-release
		}
	}
	done := h.up("v1", "--suspend-on-stop")
	h.events.waitFor(t, "waiting", "")
	h.sigs <- syscall.SIGINT
	<-saving
	h.sigs <- syscall.SIGINT
	h.events.waitFor(t, "already_saving", "")
	close(release)
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	if !h.fake.world.ManagedSave["v1"] || h.journal().Phase != Saved {
		t.Errorf("not saved: %v, phase %s", h.fake.world.ManagedSave["v1"], h.journal().Phase)
	}
	if slices.ContainsFunc(h.calls(), func(c []string) bool { return c[0] == "virsh" && (c[1] == "shutdown" || c[1] == "destroy") }) {
		t.Errorf("a save was turned into a shutdown: %v", h.calls())
	}
}

// SIGUSR1 (what `down --suspend` sends) saves a foreground up's VM.
func TestSIGUSR1SavesForegroundUp(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	done := h.up("v1")
	h.events.waitFor(t, "waiting", "")
	h.sigs <- syscall.SIGUSR1
	if code := h.wait(done); code != 0 || !h.fake.world.ManagedSave["v1"] {
		t.Fatalf("exit %d, saved %v\n%s", code, h.fake.world.ManagedSave["v1"], h.stderr)
	}
}

// A failed save leaves the VM running, exit 4 with a hint.
func TestFailedSaveKeepsVMRunning(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Fail["managedsave"] = "error: operation failed: /var/lib/libvirt/qemu/save/v1.save: No space left on device"
	done := h.up("v1", "--suspend-on-stop")
	h.events.waitFor(t, "waiting", "")
	h.sigs <- syscall.SIGTERM
	if code := h.wait(done); code != exitStopFailed {
		t.Fatalf("exit %d, want 4\n%s", code, h.stderr)
	}
	if h.fake.world.Domains["v1"] != "running" {
		t.Errorf("the VM is %s after a failed save, want running", h.fake.world.Domains["v1"])
	}
	if !strings.Contains(h.stderr.String(), "vmup: error: could not save VM v1") || !strings.Contains(h.stderr.String(), "vmup: hint: free space") {
		t.Errorf("stderr:\n%s", h.stderr)
	}
}

// A completed first boot keeps a memory snapshot whose definition names the
// seed of later boots; reset reverts to it, sets the clock and brings the
// provisioned settings back.
func TestResetRevertsToProvisionedSnapshot(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	p := h.journal().Provisioned
	if p == nil || p.Kind != "memory" || p.MemoryMiB != 2048 {
		t.Fatalf("provisioned = %+v; want a memory state with memory 2048", p)
	}
	snap := h.fake.world.SnapshotXML["v1/vmup-provisioned"]
	if strings.Contains(snap, "v1-seed.iso") || !strings.Contains(snap, "v1-seed-boot.iso") {
		t.Errorf("the snapshot's definition does not name the seed of later boots:\n%s", snap)
	}
	// Settings changed since, and the VM saved: reset drops the save.
	h.fake.world.Domains["v1"] = "shut off"
	if code := h.wait(h.up("v1", "-d", "--memory", "4096")); code != 0 {
		t.Fatalf("re-up: exit %d\n%s", code, h.stderr)
	}
	h.saved()
	h.fake.calls = nil
	if code := h.wait(h.reset()); code != 0 {
		t.Fatalf("reset: exit %d\n%s", code, h.stderr)
	}
	// The agent sets the clock while SSH is waited for: in any order with those calls.
	calls := h.calls()
	i := slices.IndexFunc(calls, func(c []string) bool { return c[1] == "qemu-agent-command" })
	if i < 7 {
		t.Fatalf("the clock is not set after the revert: %v", calls)
	}
	// By date through guest-exec: its start and its status.
	h.fake.calls = slices.DeleteFunc(h.fake.calls, func(c []string) bool { return c[1] == "qemu-agent-command" })
	h.checkCalls(seq(
		"virsh uri",
		"virsh domstate v1 --reason",
		"virsh snapshot-list v1 --internal --name",
		"virsh domstate v1 --reason",
		"virsh managedsave-remove v1",
		"virsh snapshot-revert v1 vmup-provisioned --running --force",
		"virsh domstate v1 --reason",
		"ssh master",
		"ssh -O check",
	))
	h.events.waitFor(t, "settings_restored", "memory 2048, not 4096")
	if j := h.journal(); j.MemoryMiB != 2048 || j.Phase != Detached {
		t.Errorf("journal memory %d phase %s; want 2048, detached", j.MemoryMiB, j.Phase)
	}
}

func TestResetWithoutProvisionedStateRefused(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	j := h.journal()
	j.Provisioned = nil
	writeJournal(paths, j)
	h.fake.calls = nil
	if code := h.wait(h.reset()); code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	if !strings.Contains(h.stderr.String(), "VM v1 has no provisioned state to reset to") || len(h.calls()) != 0 {
		t.Errorf("calls %v\n%s", h.calls(), h.stderr)
	}
}

// Ctrl+C during a reset is acknowledged; the reset runs to its end.
func TestResetIsNeverCutShort(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	reverting, release := make(chan struct{}), make(chan struct{})
	h.fake.onCall = func(args []string) {
		if args[0] == "virsh" && args[1] == "snapshot-revert" {
			close(reverting)
			<-release
		}
	}
	done := h.reset()
	<-reverting
	h.sigs <- syscall.SIGINT
	h.sigs <- syscall.SIGTERM
	h.events.waitFor(t, "already_resetting", "")
	close(release)
	code := h.wait(done)
	if code != 0 && code != exitOK {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if h.fake.world.Domains["v1"] != "running" {
		t.Errorf("after an interrupted reset the VM is %s", h.fake.world.Domains["v1"])
	}
}

// Under UEFI the provisioned state is the disk: NAME.qcow2 frozen under
// NAME-run.qcow2, and the NVRAM copied; reset makes the overlay anew, puts
// the NVRAM back and boots; destroy removes the overlay too.
func TestResetUEFIFrozenDiskAndNVRAM(t *testing.T) {
	h := newHarness(t)
	h.withNVRAMDir()
	if code := h.wait(h.up(h.upArgs("-d", "--firmware", "uefi")...)); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	j := h.journal()
	if p := j.Provisioned; p == nil || p.Kind != "disk" || p.NVRAM != h.fake.world.nvram("v1") || j.DiskVolume != "v1-run.qcow2" {
		t.Fatalf("provisioned %+v, disk volume %q; want a disk state with NVRAM on v1-run.qcow2", p, j.DiskVolume)
	}
	if h.fake.world.Frozen["v1"] != "/pool/vmup/v1-run.qcow2" || h.fake.world.Backing["vmup/v1-run.qcow2"] != "/pool/vmup/v1.qcow2" {
		t.Errorf("frozen %q backing %q", h.fake.world.Frozen["v1"], h.fake.world.Backing["vmup/v1-run.qcow2"])
	}
	nvram := h.fake.world.nvram("v1")
	os.WriteFile(nvram, []byte("boot entries written later"), 0o600)
	h.fake.calls = nil
	if code := h.wait(h.reset()); code != 0 {
		t.Fatalf("reset: exit %d\n%s", code, h.stderr)
	}
	if data, _ := os.ReadFile(nvram); string(data) != "template" {
		t.Errorf("NVRAM after reset = %q, want the provisioned copy", data)
	}
	calls := h.calls()
	for _, want := range []string{"virsh destroy v1", "virsh vol-delete --pool vmup v1-run.qcow2",
		"virsh vol-create-as vmup v1-run.qcow2 4294967296 --format qcow2 --backing-vol v1.qcow2 --backing-vol-format qcow2",
		"virsh define $HOME/vms/v1/domain-reset.xml", "virsh start v1"} {
		if !slices.ContainsFunc(calls, func(c []string) bool { return slices.Equal(c, argv(want)) }) {
			t.Errorf("reset did not run %q: %v", want, calls)
		}
	}
	if xml, _ := os.ReadFile(filepath.Join(h.env.Home, "vms", "v1", "domain.xml")); !strings.Contains(string(xml), "v1-run.qcow2") {
		t.Errorf("the redefined domain does not run on the overlay:\n%s", xml)
	}
	o, _, _ := parseCommand("destroy", []string{"v1"})
	env := h.env
	env.Out = h.out()
	if code := runDestroy(env, o); code != 0 {
		t.Fatalf("destroy: exit %d", code)
	}
	for pv := range h.fake.world.Volumes {
		if strings.HasPrefix(pv, "vmup/v1") {
			t.Errorf("volume %s left after destroy", pv)
		}
	}
}

// withNVRAMDir gives UEFI domains an NVRAM dir that stands for libvirt's.
func (h *harness) withNVRAMDir() string {
	dir := h.t.TempDir()
	h.fake.world.NVRAMDir = dir
	old := libvirtNVRAMDir
	libvirtNVRAMDir = func(string) string { return dir }
	h.t.Cleanup(func() { libvirtNVRAMDir = old })
	return dir
}

// A reset killed between its journal and its revert leaves them out of
// step: the next up of the shut-off VM defines the domain from the journal.
func TestUpAfterKilledResetRedefinesFromTheJournal(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	paths := pathsFor(h.env.Home, "v1")
	j := h.journal()
	j.Phase = Resetting
	writeJournal(paths, j)
	h.fake.calls = nil
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	if !slices.ContainsFunc(h.calls(), func(c []string) bool { return slices.Equal(c, argv("virsh define $HOME/vms/v1/domain.xml")) }) {
		t.Errorf("the domain was not defined from the journal: %v", h.calls())
	}
}
