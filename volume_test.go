package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// deletes lists the vol-delete and undefine calls recorded so far.
func (h *harness) deletes() [][]string {
	var out [][]string
	for _, c := range h.calls() {
		if c[0] == "virsh" && (c[1] == "vol-delete" || c[1] == "undefine" || c[1] == "destroy") {
			out = append(out, c)
		}
	}
	return out
}

func (h *harness) run(cmd string, args ...string) int {
	h.t.Helper()
	o, _, err := parseCommand(cmd, args)
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	switch cmd {
	case "destroy":
		return runDestroy(env, o)
	}
	h.t.Fatalf("no such command %s", cmd)
	return -1
}

// --reset with a wrong checksum deletes nothing: every check that can fail
// runs before the old VM, or a volume of its name, is touched.
func TestResetValidatesBeforeDeleting(t *testing.T) {
	wrong := strings.Repeat("0", 64)
	t.Run("foreign volume", func(t *testing.T) {
		h := newHarness(t)
		h.fake.world.Pools["default"] = true
		h.fake.world.Volumes["default/v1.qcow2"] = true
		code := h.wait(h.up(h.upArgs("--pool", "default", "--reset", "--image-sha256", wrong)...))
		if code != exitUsage {
			t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
		}
		if !h.fake.world.Volumes["default/v1.qcow2"] {
			t.Error("the foreign volume default/v1.qcow2 was deleted")
		}
		if d := h.deletes(); len(d) != 0 {
			t.Errorf("deleted %v before the checksum failed", d)
		}
	})
	t.Run("vmup's own VM", func(t *testing.T) {
		h := newHarness(t)
		h.createDetached()
		h.fake.calls = nil
		code := h.wait(h.up(h.upArgs("--reset", "--image-sha256", wrong)...))
		if code != exitUsage {
			t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
		}
		if d := h.deletes(); len(d) != 0 {
			t.Errorf("deleted %v before the checksum failed", d)
		}
		if h.fake.world.Domains["v1"] != "running" || !h.fake.world.Volumes["vmup/v1.qcow2"] {
			t.Errorf("the VM was touched: domains %v volumes %v", h.fake.world.Domains, h.fake.world.Volumes)
		}
		if j := h.journal(); j == nil || !j.FirstBootDone || j.Phase != "detached" {
			t.Errorf("the VM's journal is gone or changed: %+v", j)
		}

		// With the right checksum the reset goes through: the old VM is wiped first.
		h.fake.calls = nil
		if code := h.wait(h.up(h.upArgs("--reset", "-d")...)); code != 0 {
			t.Fatalf("reset: exit %d\n%s", code, h.stderr)
		}
		if d := h.deletes(); len(d) < 4 || !cmp.Equal(d[:4], seq("virsh destroy v1", "virsh undefine v1",
			"virsh vol-delete --pool vmup v1.qcow2", "virsh vol-delete --pool vmup v1-seed.iso")) {
			t.Errorf("reset deleted %v", d)
		}
		if j := h.journal(); !j.FirstBootDone || !slices.Equal(j.Volumes, []string{"v1.qcow2", "v1-seed.iso"}) {
			t.Errorf("journal after the reset: %+v", j)
		}
	})
}

// A journal is read from disk: the volumes it names are deleted only if they
// are names vmup gives this VM's volumes.
func TestWipeDeletesOnlyTheVMsVolumeNames(t *testing.T) {
	for vol, ok := range map[string]bool{
		"v1.qcow2": true, "v1-seed.iso": true, "v1-seed-2.iso": true, "v1-kernel": true, "v1-initrd": true,
		"v2.qcow2": false, "v1.raw": false, "vmup-base-0123456789abcdef.qcow2": false, "v1-seed.iso/../x": false,
		"../v1.qcow2": false, "v1-seed-.iso": false, "": false,
	} {
		if got := validVMVolume("v1", vol); got != ok {
			t.Errorf("validVMVolume(v1, %q) = %v, want %v", vol, got, ok)
		}
	}
	if validVMVolume("../x", "../x.qcow2") {
		t.Error("an invalid VM name has valid volumes")
	}

	h := newHarness(t)
	h.createDetached()
	j := h.journal()
	j.Volumes = append(j.Volumes, "debian.qcow2")
	writeJournal(pathsFor(h.env.Home, "v1"), j)
	h.fake.world.Volumes["vmup/debian.qcow2"] = true
	h.fake.calls = nil
	if code := h.run("destroy", "v1"); code != exitFailed {
		t.Errorf("destroy: exit %d, want 1\n%s", code, h.stderr)
	}
	if d := h.deletes(); len(d) != 0 || !h.fake.world.Volumes["vmup/debian.qcow2"] {
		t.Errorf("deleted %v on a journal naming debian.qcow2", d)
	}
}

// A volume of the VM's name that vmup did not record making is never
// deleted: not by the up that finds it, a later up, or destroy.
func TestForeignVolumeNeverDeleted(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	h.fake.world.Volumes["vmup/v1.qcow2"] = true
	code := h.wait(h.up(h.upArgs("-d")...))
	if code != exitFailed {
		t.Fatalf("exit %d, want 1\n%s", code, h.stderr)
	}
	for _, want := range []string{"vmup: error: ", "volume v1.qcow2 in pool vmup", "vmup: hint: ", "vol-delete --pool vmup v1.qcow2"} {
		if !strings.Contains(h.stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, h.stderr)
		}
	}
	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitFailed {
		t.Errorf("second up: exit %d, want 1\n%s", code, h.stderr)
	}
	if code := h.run("destroy", "v1"); code != 0 {
		t.Errorf("destroy: exit %d\n%s", code, h.stderr)
	}
	if !h.fake.world.Volumes["vmup/v1.qcow2"] {
		t.Errorf("the foreign volume vmup/v1.qcow2 was deleted; calls %v", h.deletes())
	}
	for _, c := range h.deletes() {
		if c[len(c)-1] == "v1.qcow2" {
			t.Errorf("tried to delete it: %v", c)
		}
	}

	// A VM vmup made, beside a foreign volume of a name vmup might have used.
	h = newHarness(t)
	h.createDetached()
	h.fake.world.Volumes["vmup/v1-kernel"] = true
	if code := h.run("destroy", "v1"); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	if !h.fake.world.Volumes["vmup/v1-kernel"] {
		t.Error("destroy deleted v1-kernel, which vmup never made for v1")
	}
	if h.fake.world.Volumes["vmup/v1.qcow2"] || h.fake.world.Volumes["vmup/v1-seed.iso"] {
		t.Errorf("destroy left the VM's own volumes: %v", h.fake.world.Volumes)
	}
}
