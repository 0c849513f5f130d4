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

// Item 2: Running (and so detached, exit 0) is entered only once the
// completed first boot is on disk: a crash at any moment after it cannot make
// a later up take the VM for an interrupted first boot.
func TestRunningEnteredOnlyAfterFirstBootIsDurable(t *testing.T) {
	h := newHarness(t)
	paths := pathsFor(h.env.Home, "v1")
	checked := false
	h.events.onEvent = func(ev jsonEvent) {
		if ev.Event == "phase" && strings.HasSuffix(ev.Message, "-> running") {
			checked = true
			if j, err := readJournal(paths); err != nil || j == nil || !j.FirstBootDone {
				t.Errorf("Running entered while the journal on disk says first_boot_done=false (%+v, %v)", j, err)
			}
		}
	}
	if code := h.wait(h.up(h.upArgs("-d")...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if !checked {
		t.Fatal("no phase event into running")
	}
}

// seedOf returns the seed volume the domain's definition attaches, "" for none.
func (h *harness) seedOf(name string) string {
	xml := h.fake.world.XML[name]
	for _, part := range strings.Split(xml, "<disk ")[1:] {
		if strings.Contains(part, `dev="vdb"`) {
			return "vmup/" + filepath.Base(between(part, `file="`, `"`))
		}
	}
	return ""
}

// Item 2: the seed of later boots is made and attached before the first one
// goes: when that fails, the VM keeps a working seed (and says so).
func TestSeedKeptWhenItsReplacementFails(t *testing.T) {
	h := newHarness(t)
	h.fake.onPlaybook = func() {
		h.fake.mu.Lock()
		h.fake.world.Fail["vol-upload"] = "error: cannot upload volume: No space left on device"
		h.fake.world.Fail["vol-create-as"] = "error: Failed to create vol: No space left on device"
		h.fake.world.Fail["define"] = "error: Failed to define domain: No space left on device"
		h.fake.mu.Unlock()
	}
	if code := h.wait(h.up(h.upArgs("-d")...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	seed := h.seedOf("v1")
	if seed == "" || !h.fake.world.Volumes[seed] || !h.fake.world.Uploaded[seed] {
		t.Errorf("the domain's seed %q is missing or empty (volumes %v, uploaded %v)", seed, h.fake.world.Volumes, h.fake.world.Uploaded)
	}
	if !strings.Contains(h.stderr.String(), "vmup: warning:") {
		t.Errorf("no warning that the seed was not replaced:\n%s", h.stderr)
	}
	if !h.journal().FirstBootDone {
		t.Error("the completed first boot is not recorded")
	}
}

// After the first boot the domain boots from a seed without the host's
// private key, and the first one is gone.
func TestSeedReplacedAfterFirstBoot(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	seed := h.seedOf("v1")
	if seed == "" || seed == "vmup/v1-seed.iso" || !h.fake.world.Uploaded[seed] {
		t.Errorf("the domain's seed after the first boot is %q (uploaded %v)", seed, h.fake.world.Uploaded)
	}
	if h.fake.world.Volumes["vmup/v1-seed.iso"] {
		t.Error("the first-boot seed, which holds the host's private key, is still there")
	}
}

// Item 3: a failed first boot kept by the user stays kept through `down`; the
// next up retries it (without --image) and wipes nothing.
func TestDownAfterFailedFirstBootKeepsIt(t *testing.T) {
	h := newHarness(t)
	h.fake.playbook = "fail"
	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitProvision {
		t.Fatalf("up: exit %d, want 3\n%s", code, h.stderr)
	}
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("down", []string{"v1"})
	if code := runDown(env, o); code != 0 {
		t.Fatalf("down: exit %d\n%s", code, h.stderr)
	}
	h.fake.playbook = "ok"
	h.fake.calls = nil
	for _, args := range [][]string{{"v1", "-d"}, {"v1", "-d", "--image", h.image}} {
		if code := h.wait(h.up(args...)); code != 0 && code != exitProvision {
			t.Fatalf("up %v: exit %d\n%s", args, code, h.stderr)
		}
		h.fake.playbook = "fail"
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && (c[1] == "undefine" || c[1] == "vol-delete" && c[len(c)-1] == "v1.qcow2") {
			t.Errorf("a retry removed the kept VM: %v", c)
		}
	}
	if h.has("recovering") || strings.Contains(h.stderr.String(), "interrupted") {
		t.Errorf("a kept failed first boot was taken for an interrupted one:\n%s", h.stderr)
	}
	if !h.journal().FirstBootDone {
		t.Error("the retried first boot is not recorded as complete")
	}
}

// Item 2, full disk: the playbook fills VMUP_HOME (a small tmpfs). Recording
// the completed first boot needs no space then; the next up, after space was
// freed, boots the VM and removes nothing.
func TestFullDiskStillRecordsCompletedFirstBoot(t *testing.T) {
	r := newBinaryRun(t, "fill", "-d")
	os.MkdirAll(r.home, 0o700)
	if err := unix.Mount("tmpfs", r.home, "tmpfs", 0, "size=2m,mode=0700"); err != nil {
		t.Skipf("mounting a small tmpfs needs root: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(r.home, unix.MNT_DETACH) })
	r.cmd.Stderr = &testLogWriter{t: t}
	r.readEvents()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d on a full disk: exit %d, want 0", code)
	}
	data, _ := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json"))
	if !strings.Contains(string(data), `"first_boot_done": true`) {
		t.Errorf("the completed first boot is not on disk:\n%s", data)
	}
	os.Remove(filepath.Join(r.home, "filler"))
	out, code := r.vmup("up", "v1", "-d")
	if code != 0 || strings.Contains(out, "interrupted") || r.called("virsh undefine") {
		t.Errorf("the next up: exit %d, undefine %v\n%s", code, r.called("virsh undefine"), out)
	}
}

// Two Ctrl+C once the first boot is recorded complete (the seed being
// replaced: phase keeping) keep the VM: it is shut down, never removed.
// (A confirmed abort that beats the controller's news of the record ends in
// completed_meanwhile, the same way: the table's rows.)
func TestConfirmedAbortAfterCompletionKeepsVM(t *testing.T) {
	h := newHarness(t)
	h.env.Poll = 5 * time.Millisecond
	h.fake.onCall = func(args []string) {
		if args[0] == "virsh" && args[1] == "define" && strings.HasSuffix(args[2], "/domain-later.xml") {
			h.sigs <- syscall.SIGINT
			h.sigs <- syscall.SIGINT
			h.events.waitFor(t, "stop_once_kept", "")
		}
	}
	if code := h.wait(h.up(h.upArgs()...)); code != exitOK {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && (c[1] == "undefine" || c[1] == "vol-delete" && c[len(c)-1] == "v1.qcow2") {
			t.Errorf("a completed first boot was removed: %v", c)
		}
	}
	if h.has("aborting") || h.fake.world.Domains["v1"] != "shut off" {
		t.Errorf("want the VM kept and shut off; domain %q, events %v", h.fake.world.Domains["v1"], h.events.names())
	}
	if !h.journal().FirstBootDone {
		t.Error("the journal lost the completed first boot")
	}
}

func (h *harness) destroy() int {
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("destroy", []string{"v1"})
	return runDestroy(env, o)
}

// Item 19: destroy removes what someone made by hand with virsh too: internal
// snapshots and a managed save image. Never half.
func TestDestroyRemovesSnapshotsAndSavedState(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Snapshots["v1"] = []string{"before-upgrade internal", "later internal"}
	h.fake.world.ManagedSave["v1"], h.fake.world.Domains["v1"] = true, "shut off"
	if code := h.destroy(); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	if _, ok := h.fake.world.Domains["v1"]; ok || len(h.fake.world.Snapshots["v1"]) > 0 {
		t.Errorf("left: domain %v, snapshots %v", h.fake.world.Domains, h.fake.world.Snapshots)
	}
	for v := range h.fake.world.Volumes {
		if strings.HasPrefix(v, "vmup/v1") {
			t.Errorf("volume %s left", v)
		}
	}
}

// Item 19: external snapshots name files vmup did not make: destroy refuses
// before it changes anything, and says what to do.
func TestDestroyRefusesExternalSnapshotsBeforeChangingAnything(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Snapshots["v1"] = []string{"backup external"}
	h.fake.calls = nil
	if code := h.destroy(); code != exitFailed {
		t.Fatalf("destroy: exit %d, want 1\n%s", code, h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && (c[1] == "destroy" || c[1] == "undefine" || c[1] == "vol-delete" || c[1] == "snapshot-delete") {
			t.Errorf("destroy changed something before refusing: %v", c)
		}
	}
	if h.fake.world.Domains["v1"] != "running" || !strings.Contains(h.stderr.String(), "vmup: hint:") {
		t.Errorf("domain %q; stderr:\n%s", h.fake.world.Domains["v1"], h.stderr)
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Journal()); err != nil {
		t.Errorf("the VM's state is gone: %v", err)
	}
}

// Item 16: when define fails in Preparing, the volumes this run made go,
// the seed with the guest's private host key among them.
func TestFailedDefineRemovesWhatTheRunMade(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Fail["define"] = "error: Failed to define domain from domain.xml\nerror: unsupported configuration"
	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitFailed {
		t.Fatalf("exit %d, want 1\n%s", code, h.stderr)
	}
	for v := range h.fake.world.Volumes {
		if !strings.HasPrefix(v, "vmup/vmup-base-") {
			t.Errorf("volume %s left behind", v)
		}
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Dir); !os.IsNotExist(err) {
		t.Errorf("state dir (with the private key) left behind: %v", err)
	}
	if !strings.Contains(h.stderr.String(), "vmup: error: preparing VM v1 failed") {
		t.Errorf("no error line:\n%s", h.stderr)
	}
}

// A socket left by a killed up's ControlMaster is gone before the next master
// starts: ssh refuses to listen on an existing path.
func TestStaleControlSocketRemovedBeforeMaster(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	sock := pathsFor(h.env.Home, "v1").ControlSocket()
	os.WriteFile(sock, nil, 0o600)
	h.fake.onCall = func(args []string) {
		if args[0] == "ssh" && len(args) > 1 && args[1] == "master" {
			if _, err := os.Stat(sock); err == nil {
				t.Error("the ControlMaster started with a stale socket in place")
			}
		}
	}
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
}

// A failed first boot is retried as it was made: new settings are refused
// (exit 2) rather than dropped without a word.
func TestRetriedFirstBootRefusesNewSettings(t *testing.T) {
	h := newHarness(t)
	h.fake.playbook = "fail"
	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitProvision {
		t.Fatalf("up: exit %d, want 3\n%s", code, h.stderr)
	}
	h.fake.calls = nil
	if code := h.wait(h.up("v1", "-d", "--memory", "4096")); code != exitUsage {
		t.Fatalf("retry with --memory: exit %d, want 2\n%s", code, h.stderr)
	}
	if !strings.Contains(h.stderr.String(), "vmup: hint:") {
		t.Errorf("no hint:\n%s", h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "ansible-playbook" || c[0] == "virsh" && c[1] != "uri" && c[1] != "domstate" {
			t.Errorf("a refused retry ran %v", c)
		}
	}
}
