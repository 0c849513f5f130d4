package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// destroyV1 runs `vmup destroy v1` and returns its exit code.
func (h *harness) destroyV1() int {
	h.t.Helper()
	h.fake.calls = nil
	h.stderr.Reset()
	return h.run("destroy", "v1")
}

// changes lists the recorded calls that change libvirt.
func (h *harness) changes() [][]string {
	var out [][]string
	for _, c := range h.calls() {
		if c[0] == "virsh" && slices.Contains([]string{"destroy", "undefine", "vol-delete", "snapshot-delete"}, c[1]) {
			out = append(out, c)
		}
	}
	return out
}

// checkUntouched asserts that v1, as createDetached left it, is all there.
func (h *harness) checkUntouched() {
	h.t.Helper()
	w := h.fake.world
	if w.Domains["v1"] != "running" || !w.Volumes["vmup/v1.qcow2"] || !w.Volumes["vmup/v1-seed-boot.iso"] {
		h.t.Errorf("v1 was touched: domains %v, volumes %v", w.Domains, w.Volumes)
	}
	if c := h.changes(); len(c) > 0 {
		h.t.Errorf("changed %v", c)
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Journal()); err != nil {
		h.t.Errorf("the state is gone: %v", err)
	}
}

// A running VM is destroyed before it is undefined; its internal snapshot
// (the provisioned state) goes with the metadata and its disk, not by a
// snapshot-delete of its own.
func TestDestroyRunningVM(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	if snaps := h.fake.world.Snapshots["v1"]; len(snaps) != 1 {
		t.Fatalf("v1's snapshots %v, want the provisioned one", snaps)
	}
	if code := h.destroyV1(); code != exitOK {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(destroyCalls(true, completedVolumes...))
	w := h.fake.world
	if _, ok := w.Domains["v1"]; ok || w.Volumes["vmup/v1.qcow2"] || w.Volumes["vmup/v1-seed-boot.iso"] {
		t.Errorf("left: domains %v, volumes %v", w.Domains, w.Volumes)
	}
}

// A domain vmup did not create, or one with external snapshots (files vmup
// did not make), is refused before anything is changed, and says why.
func TestDestroyRefusesBeforeChangingAnything(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(w *fakeWorld)
		want  []string
	}{
		{"not vmup's", func(w *fakeWorld) { w.Owned["v1"] = false },
			[]string{"vmup: error: domain v1 was not created by vmup; not touching it"}},
		{"external snapshots", func(w *fakeWorld) { w.Snapshots["v1"] = append(w.Snapshots["v1"], "mine external") },
			[]string{"vmup: error: domain v1 has external snapshots that vmup did not make (mine); nothing was removed",
				"vmup: hint: remove them with `virsh -c qemu:///system snapshot-delete v1 NAME`"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.createDetached()
			c.setup(h.fake.world)
			if code := h.destroyV1(); code != exitFailed {
				t.Errorf("destroy: exit %d, want %d", code, exitFailed)
			}
			for _, want := range c.want {
				if !strings.Contains(h.stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, h.stderr)
				}
			}
			h.checkUntouched()
		})
	}
}

// One volume that cannot be deleted does not keep the others: each is
// tried, the failures are reported on one line, exit 1, and the state stays
// for a retry, which then finishes.
func TestDestroyTriesEveryVolume(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	w := h.fake.world
	w.Fail["vol-delete --pool vmup v1.qcow2"] = "error: Failed to delete vol v1.qcow2\nerror: cannot unlink file '/pool/vmup/v1.qcow2': Permission denied"
	if code := h.destroyV1(); code != exitFailed {
		t.Errorf("destroy: exit %d, want %d", code, exitFailed)
	}
	h.checkCalls(destroyCalls(true, completedVolumes...))
	if !w.Volumes["vmup/v1.qcow2"] || w.Volumes["vmup/v1-seed-boot.iso"] {
		t.Errorf("volumes %v: want v1.qcow2 alone left", w.Volumes)
	}
	if !strings.Contains(h.stderr.String(), "vmup: error: virsh: error: cannot unlink file '/pool/vmup/v1.qcow2': Permission denied\n") {
		t.Errorf("stderr:\n%s", h.stderr)
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Journal()); err != nil {
		t.Errorf("the state is gone: %v", err)
	}

	// Both failing: both are told, in one line.
	delete(w.Fail, "vol-delete --pool vmup v1.qcow2")
	w.Volumes["vmup/v1-seed-boot.iso"] = true
	w.Busy["vmup/v1.qcow2"], w.Busy["vmup/v1-seed-boot.iso"] = 1, 1
	if code := h.destroyV1(); code != exitFailed {
		t.Errorf("destroy: exit %d, want %d", code, exitFailed)
	}
	if !strings.Contains(h.stderr.String(), "volume 'v1.qcow2' is still in use.; volume busy: virsh: error: Requested operation is not valid: volume 'v1-seed-boot.iso' is still in use.\n") {
		t.Errorf("stderr:\n%s", h.stderr)
	}

	if code := h.destroyV1(); code != exitOK {
		t.Fatalf("destroy again: exit %d\n%s", code, h.stderr)
	}
	// The domain went with the first try: no questions about it matter now.
	h.checkCalls(concat(anyOrder(seq("virsh uri"), wipeAsks(completedVolumes...)), anyOrder(seq(
		"virsh vol-delete --pool vmup v1.qcow2", "virsh vol-delete --pool vmup v1-seed-boot.iso"))))
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Dir); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
}

// Without a journal vmup deletes no volume: the disks stay, and so internal
// snapshots are deleted from them one by one, as before the domain goes.
func TestDestroyWithoutJournalDeletesInternalSnapshots(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	os.RemoveAll(pathsFor(h.env.Home, "v1").Dir)
	if code := h.destroyV1(); code != exitOK {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(concat(anyOrder(seq("virsh uri"), wipeAsks()), seq("virsh destroy v1",
		"virsh snapshot-delete v1 vmup-provisioned", "virsh undefine v1 --snapshots-metadata --managed-save --nvram")))
	if w := h.fake.world; !w.Volumes["vmup/v1.qcow2"] || !w.Volumes["vmup/v1-seed-boot.iso"] {
		t.Errorf("volumes %v: a VM without a journal has none vmup may delete", w.Volumes)
	}
}

// A disk added by hand outside the VM's volumes is not deleted: the
// internal snapshots are deleted from it first.
func TestDestroyWithADiskOfItsOwn(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	w := h.fake.world
	w.XML["v1"] = strings.Replace(w.XML["v1"], "</devices>",
		"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/data.qcow2'/><target dev='vdc'/></disk></devices>", 1)
	if code := h.destroyV1(); code != exitOK {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	want := destroyCalls(true, completedVolumes...)
	i := slices.IndexFunc(want, func(c []string) bool { return c[1] == "undefine" })
	h.checkCalls(slices.Insert(want, i, argv("virsh snapshot-delete v1 vmup-provisioned")))
}

// The questions before a wipe are asked at once, and so are the volumes'
// deletions: each waits here until all of its group have begun, which
// calls made one after another never do.
func TestDestroyAsksAndDeletesAtOnce(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	var mu sync.Mutex
	started := map[string]int{}
	all := map[string]chan struct{}{"ask": make(chan struct{}), "delete": make(chan struct{})}
	size := map[string]int{"ask": 7, "delete": 2} // uri and wipeAsks; two volumes
	h.fake.onCall = func(args []string) {
		group := "ask"
		switch {
		case args[0] != "virsh":
			return
		case args[1] == "vol-delete":
			group = "delete"
		case !slices.Contains([]string{"uri", "metadata", "domstate", "snapshot-list", "dumpxml", "vol-list"}, args[1]):
			return
		}
		mu.Lock()
		if started[group]++; started[group] == size[group] {
			close(all[group])
		}
		mu.Unlock()
		select {
		case <-all[group]:
		case <-time.After(5 * time.Second):
			t.Errorf("%v waited alone: its group's calls are not made at once", args)
		}
	}
	if code := h.destroyV1(); code != exitOK {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(destroyCalls(true, completedVolumes...))
}

// hungLibvirt is a libvirtd that answers nothing: every virsh runs until cancelled.
type hungLibvirt struct{}

func (hungLibvirt) Run(ctx context.Context, c Cmd) (Result, error) {
	<-ctx.Done()
	return Result{ExitCode: -1}, ctx.Err()
}

// The questions asked beside `virsh uri` keep its timeout and its hints:
// a hung libvirt is said to be one, at its timeout, and a missing virsh
// is said to be missing.
func TestDestroyChecksLibvirtAsBefore(t *testing.T) {
	defer func(d time.Duration) { libvirtTimeout = d }(libvirtTimeout)
	libvirtTimeout = 100 * time.Millisecond
	h := newHarness(t)
	h.createDetached()
	h.env.Runner = hungLibvirt{}
	start := time.Now()
	code := h.destroyV1()
	if took := time.Since(start); code != exitFailed || took > 5*time.Second {
		t.Errorf("exit %d after %s, want %d at once", code, took, exitFailed)
	}
	if got := h.stderr.String(); !strings.Contains(got, "vmup: error: libvirt did not answer within 100ms") ||
		!strings.Contains(got, "vmup: hint: check that libvirtd runs") {
		t.Errorf("stderr:\n%s", got)
	}

	t.Setenv("VMUP_VIRSH", filepath.Join(t.TempDir(), "virsh"))
	h.env.Runner = execRunner{}
	if code := h.destroyV1(); code != exitFailed || !strings.Contains(h.stderr.String(), "install libvirt's client") {
		t.Errorf("exit %d, want 1 with the install hint:\n%s", code, h.stderr)
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Journal()); err != nil {
		t.Errorf("the state is gone: %v", err)
	}
}
