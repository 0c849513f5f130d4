package main

import (
	"os/exec"
	"slices"
	"strings"
	"syscall"
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
		if j := h.journal(); j == nil || !j.FirstBootDone || j.Phase != Detached {
			t.Errorf("the VM's journal is gone or changed: %+v", j)
		}

		// With the right checksum the reset goes through: the old VM is wiped first.
		h.fake.calls = nil
		if code := h.wait(h.up(h.upArgs("--reset", "-d")...)); code != 0 {
			t.Fatalf("reset: exit %d\n%s", code, h.stderr)
		}
		if d := h.deletes(); len(d) < 4 || !cmp.Equal(d[:2], seq("virsh destroy v1",
			"virsh undefine v1 --snapshots-metadata --managed-save --nvram")) ||
			!sameCalls(d[2:4], seq("virsh vol-delete --pool vmup v1.qcow2", "virsh vol-delete --pool vmup v1-seed-boot.iso")) {
			t.Errorf("reset deleted %v", d)
		}
		if j := h.journal(); !j.FirstBootDone || !slices.Equal(j.Volumes, []string{"v1.qcow2", "v1-seed-boot.iso"}) {
			t.Errorf("journal after the reset: %+v", j)
		}
	})
}

// A journal is read from disk: the volumes it names are deleted only if they
// are names vmup gives this VM's volumes.
func TestWipeDeletesOnlyTheVMsVolumeNames(t *testing.T) {
	for vol, ok := range map[string]bool{
		"v1.qcow2": true, "v1-seed.iso": true, "v1-seed-boot.iso": true, "v1-seed-2.iso": false, "v1-kernel": true, "v1-initrd": true,
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
	// Such a journal is not valid: destroy goes by the name alone, and takes
	// the VM's volumes from libvirt's definition of its domain.
	if code := h.run("destroy", "v1"); code != exitOK {
		t.Errorf("destroy: exit %d, want 0\n%s", code, h.stderr)
	}
	for _, d := range h.deletes() {
		if slices.Contains(d, "debian.qcow2") {
			t.Errorf("deleted %v on a journal naming debian.qcow2", d)
		}
	}
	if !h.fake.world.Volumes["vmup/debian.qcow2"] || !strings.Contains(h.stderr.String(), "vmup: warning: VM v1: state.json is not valid") {
		t.Errorf("debian.qcow2 gone, or no warning:\n%s", h.stderr)
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

// killedUpload leaves what a SIGKILLed `up NAME` leaves during its base
// upload: a journal naming the base, and a base volume with part of the image.
func (h *harness) killedUpload(name string) (base string) {
	h.t.Helper()
	base = "vmup-base-" + h.imgHash + ".qcow2"
	w := h.fake.world
	w.Pools["vmup"] = true
	w.Volumes["vmup/"+base] = true
	w.Content["vmup/"+base] = []byte("fake im")
	dead := exec.Command("true")
	dead.Run()
	paths := pathsFor(h.env.Home, name)
	if err := ensureDir(paths.Dir); err != nil {
		h.t.Fatal(err)
	}
	j := &Journal{Name: name, Phase: Preparing, FailedIn: noPhase, PID: dead.Process.Pid, User: "vmup", Network: "user",
		Connect: "qemu:///system", Pool: "vmup", UploadingBase: base}
	if err := writeJournal(paths, j); err != nil {
		h.t.Fatal(err)
	}
	return base
}

func (h *harness) upVM(name string, extra ...string) chan int {
	return h.up(append([]string{name, "--image", h.image, "--playbook", h.play, "--domain-type", "qemu",
		"--network", "user", "--disk", "4", "-d"}, extra...)...)
}

func (h *harness) called(cmd string) bool {
	for _, c := range h.calls() {
		if cmp.Equal(c, argv(cmd)) {
			return true
		}
	}
	return false
}

// A base volume whose upload was cut off is never used, and a base that a
// volume in the pool is backed by is never deleted.
func TestPartialBaseNeverShared(t *testing.T) {
	t.Run("next up re-uploads", func(t *testing.T) {
		h := newHarness(t)
		base := h.killedUpload("web")
		if code := h.wait(h.upVM("db")); code != 0 {
			t.Fatalf("up db: exit %d\n%s", code, h.stderr)
		}
		if strings.Contains(h.stderr.String(), "cached") {
			t.Errorf("up db took the partial base for cached:\n%s", h.stderr)
		}
		if !h.called("virsh vol-upload --pool vmup " + base + " /dev/stdin") {
			t.Errorf("no new upload of %s; calls %v", base, h.calls())
		}
		if got := string(h.fake.world.Content["vmup/"+base]); got != "fake image" {
			t.Errorf("db's base holds %q, want the whole image", got)
		}
		if h.fake.world.Backing["vmup/db.qcow2"] != "/pool/vmup/"+base {
			t.Errorf("db.qcow2 is backed by %q", h.fake.world.Backing["vmup/db.qcow2"])
		}

		// web's recovery finds the base complete now, and in use: it stays.
		h.fake.calls = nil
		if code := h.wait(h.upVM("web")); code != 0 {
			t.Fatalf("up web: exit %d\n%s", code, h.stderr)
		}
		if h.called("virsh vol-delete --pool vmup "+base) || !h.fake.world.Volumes["vmup/"+base] {
			t.Errorf("web's recovery deleted the base db is backed by; calls %v", h.calls())
		}
	})
	t.Run("recovery keeps a base in use", func(t *testing.T) {
		// db.qcow2 was built on the partial base (as vmup did before the
		// completeness mark): web's recovery must not pull it from under db.
		h := newHarness(t)
		base := h.killedUpload("web")
		h.fake.world.Volumes["vmup/db.qcow2"] = true
		h.fake.world.Backing["vmup/db.qcow2"] = "/pool/vmup/" + base
		code := h.wait(h.upVM("web"))
		if h.called("virsh vol-delete --pool vmup "+base) || !h.fake.world.Volumes["vmup/"+base] {
			t.Errorf("web's recovery deleted the base db.qcow2 is backed by; calls %v", h.calls())
		}
		// Its content is not the image: nothing is built on it.
		if code != exitFailed || !strings.Contains(h.stderr.String(), "db.qcow2") {
			t.Errorf("exit %d, want 1 naming db.qcow2\n%s", code, h.stderr)
		}
		if h.fake.world.Volumes["vmup/web.qcow2"] || h.fake.world.Volumes["vmup/"+base+".complete"] {
			t.Errorf("built on the partial base: %v", h.fake.world.Volumes)
		}
	})
	t.Run("a complete base without mark is verified", func(t *testing.T) {
		// A base uploaded before vmup marked complete bases, with a VM on it.
		h := newHarness(t)
		base := "vmup-base-" + h.imgHash + ".qcow2"
		w := h.fake.world
		w.Pools["vmup"], w.Volumes["vmup/"+base], w.Content["vmup/"+base] = true, true, []byte("fake image")
		w.Volumes["vmup/db.qcow2"], w.Backing["vmup/db.qcow2"] = true, "/pool/vmup/"+base
		if code := h.wait(h.upVM("web")); code != 0 {
			t.Fatalf("exit %d\n%s", code, h.stderr)
		}
		if !w.Volumes["vmup/"+base+".complete"] || h.called("virsh vol-delete --pool vmup "+base) {
			t.Errorf("volumes %v; calls %v", w.Volumes, h.calls())
		}
	})
}

// destroy of a VM whose up was killed while uploading the base deletes the
// partial base, unless it is complete or a volume is backed by it.
func TestDestroyRemovesPartialBase(t *testing.T) {
	h := newHarness(t)
	base := h.killedUpload("web")
	if code := h.run("destroy", "web"); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	if h.fake.world.Volumes["vmup/"+base] {
		t.Errorf("the partial base %s is left; calls %v", base, h.calls())
	}

	h = newHarness(t)
	base = h.killedUpload("web")
	h.fake.world.Volumes["vmup/"+base+".complete"] = true
	h.killedUpload("db")
	h.fake.world.Volumes["vmup/db.qcow2"] = true
	h.fake.world.Backing["vmup/db.qcow2"] = "/pool/vmup/" + base
	for _, name := range []string{"web", "db"} {
		if code := h.run("destroy", name); code != 0 {
			t.Fatalf("destroy %s: exit %d\n%s", name, code, h.stderr)
		}
		if !h.fake.world.Volumes["vmup/"+base] {
			t.Fatalf("destroy %s deleted the complete base %s", name, base)
		}
		delete(h.fake.world.Volumes, "vmup/"+base+".complete") // db's destroy: no mark, but a volume on it
	}
}

// An interrupted upload's volume is deleted once libvirt lets go of it: a
// killed virsh can leave libvirtd's job holding the volume for a moment.
func TestPartialVolumeDeletedOnceLibvirtLetsGo(t *testing.T) {
	h := newHarness(t)
	base := "vmup/vmup-base-" + h.imgHash + ".qcow2"
	h.fake.world.Busy[base] = 3
	h.fake.uploadStarted = make(chan []string, 1)
	done := h.up(h.upArgs()...)
	<-h.fake.uploadStarted
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != exitSIGINT {
		t.Fatalf("exit %d, want 130\n%s", code, h.stderr)
	}
	if h.fake.world.Volumes[base] {
		t.Errorf("the partial base %s is left; calls %v", base, h.deletes())
	}
	if len(h.fake.world.Volumes) != 0 {
		t.Errorf("left behind: %v", h.fake.world.Volumes)
	}
}
