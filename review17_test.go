// A hostile review of issue 17 (templates): the making and the cloning
// driven end to end through the fake libvirt, and the defects found.
package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// templateHarness is a harness whose disk has bytes to copy into a template.
func templateHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.fake.world.Content["vmup/v1.qcow2"] = []byte("QFI\xfb the first boot's writes")
	return h
}

// makeTemplateVM brings v1 up with --template -d: a first boot that keeps a template.
func (h *harness) makeTemplateVM() *TemplateRecord {
	h.t.Helper()
	if code := h.wait(h.up(h.upArgs("--template", "-d")...)); code != 0 {
		h.t.Fatalf("up --template: exit %d\n%s", code, h.stderr)
	}
	if !h.has("template_made") {
		h.t.Fatalf("no template made; events %v\n%s", h.events.names(), h.stderr)
	}
	infos, err := listTemplates(h.env.Home)
	if err != nil || len(infos) != 1 || infos[0].Record == nil {
		h.t.Fatalf("templates = %+v, %v; want one whole", infos, err)
	}
	return infos[0].Record
}

// cloneArgs are upArgs for another VM of the same recipe.
func (h *harness) cloneArgs(name string, extra ...string) []string {
	args := h.upArgs(append([]string{"--template"}, extra...)...)
	args[0] = name
	return args
}

func (h *harness) journalOf(name string) *Journal {
	h.t.Helper()
	j, err := readJournal(pathsFor(h.env.Home, name))
	if err != nil || j == nil {
		h.t.Fatalf("journal of %s: %v, %v", name, j, err)
	}
	return j
}

// The whole way through the fakes: a first boot keeps its template and runs
// on from it; a second VM of the recipe is cloned, runs, and is recorded
// complete with the template's key.
func TestReviewTemplateMadeAndCloned(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	if w.Domains["v1"] != "running" || !slices.Equal(w.Saves, []string{"v1"}) || !slices.Equal(w.Restores, []string{"v1"}) {
		t.Fatalf("v1 %s, saves %v, restores %v; want v1 saved once and running again from it", w.Domains["v1"], w.Saves, w.Restores)
	}
	if !w.Volumes["vmup/"+rec.DiskVolume] || string(w.Content["vmup/"+rec.DiskVolume]) != string(w.Content["vmup/v1.qcow2"]) {
		t.Fatalf("template disk %s: %v %q", rec.DiskVolume, w.Volumes["vmup/"+rec.DiskVolume], w.Content["vmup/"+rec.DiskVolume])
	}
	if j := h.journal(); j.Provisioned == nil || !j.FirstBootDone {
		t.Errorf("v1's journal: provisioned %v, first boot done %v", j.Provisioned, j.FirstBootDone)
	}

	if code := h.wait(h.up(h.cloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("clone: exit %d\n%s", code, h.stderr)
	}
	if !h.has("provisioned_from_template") || w.Domains["c1"] != "running" || w.Identities != 1 {
		t.Fatalf("c1 %s, identities %d; events %v\n%s", w.Domains["c1"], w.Identities, h.events.names(), h.stderr)
	}
	j := h.journalOf("c1")
	if !j.FirstBootDone || j.Template != rec.Key || j.Phase != Detached {
		t.Errorf("c1's journal: done %v, template %q, phase %s", j.FirstBootDone, j.Template, j.Phase)
	}
	if b := w.Backing["vmup/c1.qcow2"]; b != "/pool/vmup/"+rec.DiskVolume {
		t.Errorf("c1's disk is backed by %q; want the template's disk", b)
	}
	if live := w.Live["c1"]; strings.Contains(live, "/v1") || !strings.Contains(live, "<name>c1</name>") {
		t.Errorf("c1 runs under a definition that names v1's files:\n%s", live)
	}
	if slices.ContainsFunc(j.Volumes, isTemplateVolume) {
		t.Errorf("c1's journal lists the template's disk among its own volumes: %v", j.Volumes)
	}

	// Its destroy leaves the template and its disk alone.
	o, _, err := parseCommand("destroy", []string{"c1"})
	if err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	if code := runDestroy(env, o); code != 0 {
		t.Fatalf("destroy c1: exit %d\n%s", code, h.stderr)
	}
	if !w.Volumes["vmup/"+rec.DiskVolume] {
		t.Errorf("destroy of a clone deleted the template's disk")
	}
	if _, err := readTemplate(h.env.Home, rec.Key); err != nil {
		t.Errorf("template after the clone's destroy: %v", err)
	}
}

// `vmup reset` of a clone (its provisioned state is its template): the
// clone is restored from the template again, with a new identity, on an
// overlay made anew; the template stays, and is let go.
func TestReviewResetOfAClone(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	if code := h.wait(h.up(h.cloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("clone: exit %d\n%s", code, h.stderr)
	}
	paths := pathsFor(h.env.Home, "c1")
	pinned, _ := os.ReadFile(paths.KnownHosts())
	w.Content["vmup/c1.qcow2"] = []byte("written since")
	o, _, err := parseCommand("reset", []string{"c1"})
	if err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	if code := runReset(env, o); code != 0 {
		t.Fatalf("reset of a clone: exit %d\n%s", code, h.stderr)
	}
	if w.Domains["c1"] != "running" || w.Identities != 2 || w.Restores[len(w.Restores)-1] != "c1" {
		t.Errorf("c1 %s, identities %d, restores %v", w.Domains["c1"], w.Identities, w.Restores)
	}
	if len(w.Content["vmup/c1.qcow2"]) != 0 || w.Backing["vmup/c1.qcow2"] != "/pool/vmup/"+rec.DiskVolume {
		t.Errorf("c1's disk after reset: %q on %q; want a new overlay on the template's disk", w.Content["vmup/c1.qcow2"], w.Backing["vmup/c1.qcow2"])
	}
	if now, _ := os.ReadFile(paths.KnownHosts()); string(now) == string(pinned) {
		t.Errorf("c1's pinned host key did not change with its new identity")
	}
	if _, err := readTemplate(h.env.Home, rec.Key); err != nil || templateLockHeld(h.env.Home, rec.Key) {
		t.Errorf("template after the reset: %v, held %v", err, templateLockHeld(h.env.Home, rec.Key))
	}
}

// A vmup killed after `virsh save` and before the restore (the worst step
// of the making): the VM is shut off, its first boot recorded complete, a
// making dir holds its memory and notes the template disk being copied.
// The next up boots it from its disk (the VM is kept), and prune then
// deletes the making dir and the noted volume, and nothing of v1.
func TestReviewMakerKilledAfterSave(t *testing.T) {
	h := templateHarness(t)
	h.fake.playbook = "ok"
	h.createDetached()
	w := h.fake.world
	// The state such a crash leaves.
	paths := pathsFor(h.env.Home, "v1")
	j := h.journal()
	j.Phase, j.PID, j.Provisioned = Keeping, deadPID(t), nil
	if err := writeJournal(paths, j); err != nil {
		t.Fatal(err)
	}
	w.Domains["v1"] = "shut off"
	w.Snapshots["v1"] = nil
	key := tkey(1)
	m, err := beginTemplate(h.env.Home, key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(m.Dir(), "memory.save"), []byte("saved"), 0o600)
	vol := templateDiskVolume(key)
	if err := m.NoteDiskVolume(j.Connect, "vmup", vol); err != nil {
		t.Fatal(err)
	}
	w.Volumes["vmup/"+vol], w.Backing["vmup/"+vol] = true, "/pool/vmup/vmup-base-"+h.imgHash+".qcow2"
	m.crash()
	h.fake.calls = nil

	if code := h.wait(h.up("v1", "-d")); code != 0 || w.Domains["v1"] != "running" {
		t.Fatalf("next up of v1: exit %d, domain %s\n%s", code, w.Domains["v1"], h.stderr)
	}
	if j := h.journal(); !j.FirstBootDone {
		t.Errorf("v1 lost its completed first boot: %+v", j)
	}
	s := &pruneSetup{t: t, fake: h.fake, home: h.env.Home, stderr: h.stderr, events: h.events}
	h.fake.calls = nil
	if code := s.prune(false); code != 0 {
		t.Fatalf("prune: exit %d\n%s", code, h.stderr)
	}
	if del := s.deleted(); !slices.Equal(del, []string{vol}) {
		t.Errorf("prune deleted %v; want only the half-made template's disk %s", del, vol)
	}
	if es := entries(t, templatesDir(h.env.Home)); len(es) != 0 {
		t.Errorf("templates/ after prune: %v", es)
	}
}

// deadPID is the pid of a process that has ended.
func deadPID(t *testing.T) int {
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

// prune decides which templates are backed from the journals and volumes it
// read before it holds any template. A clone made of the old template while
// prune reads the pool (its hold taken and released meanwhile, its journal
// and disk made after prune read them) is not seen: prune then deletes the
// disk a running clone is an overlay on. pruneTemplates' contract is that
// backed is asked while the template is held: the journals read then.
func TestReviewPruneSeesACloneMadeWhileItScans(t *testing.T) {
	s := newPruneSetup(t)
	now := time.Now()
	oldKey, newKey := tkey(21), tkey(22)
	old := makeTestTemplate(t, s.home, oldKey, now.Add(-3*time.Hour))
	makeTestTemplate(t, s.home, newKey, now.Add(-time.Hour)) // same image and playbook: old is replaced
	base := old.BaseVolume
	s.vol(base, "", longAgo)
	s.vol(old.DiskVolume, base, longAgo)
	newRec, _ := readTemplate(s.home, newKey)
	s.vol(newRec.DiskVolume, base, longAgo)
	s.journal("a", func(j *Journal) { j.Template = newKey; j.BaseVolume = base })
	s.vol("a.qcow2", newRec.DiskVolume, longAgo)

	cloned := false
	s.fake.onCall = func(args []string) {
		if cloned || len(args) < 2 || args[1] != "vol-dumpxml" {
			return
		}
		cloned = true
		// Between prune's look at the journals and the pool and its lock on
		// the template: `up c1 --template` holds it, makes its disk and its
		// journal, restores (touching last-used), and lets go.
		release, err := holdTemplate(s.home, oldKey)
		if err != nil {
			t.Errorf("hold: %v", err)
			return
		}
		s.journal("c1", func(j *Journal) { j.Template, j.BaseVolume, j.Phase = oldKey, base, Detached })
		s.fake.mu.Lock()
		s.vol("c1.qcow2", old.DiskVolume, 0)
		s.fake.mu.Unlock()
		touchTemplate(s.home, oldKey)
		release()
	}
	if code := s.prune(false); code != 0 {
		t.Fatalf("prune: exit %d\n%s", code, s.stderr)
	}
	if !cloned {
		t.Fatal("prune read no volume")
	}
	if slices.Contains(s.deleted(), old.DiskVolume) || !s.has(old.DiskVolume) {
		t.Errorf("prune deleted template disk %s while VM c1 is backed by it (deleted %v)\n%s", old.DiskVolume, s.deleted(), s.stderr)
	}
	if _, err := readTemplate(s.home, oldKey); err != nil {
		t.Errorf("the template c1 is cloned from is gone: %v", err)
	}
}

// The template's disk is made by vol-create-as with the VM disk's virtual
// capacity (20 GiB by default) and no --allocation: libvirt then allocates
// the whole capacity (fallocate, or zeros written where the filesystem has
// no fallocate), so each template takes the VM's full disk size on the
// host, not "what the first boot wrote". The copy needs no allocation.
func TestReviewTemplateDiskIsNotPreallocated(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	for _, c := range h.calls() {
		if len(c) > 3 && c[1] == "vol-create-as" && c[3] == rec.DiskVolume {
			i := slices.Index(c, "--allocation")
			if i < 0 || i+1 >= len(c) || c[i+1] != "0" {
				t.Errorf("template disk made by %q: without --allocation 0, libvirt allocates its whole capacity", strings.Join(c, " "))
			}
			return
		}
	}
	t.Fatalf("no vol-create-as of %s in %v", rec.DiskVolume, h.calls())
}

// Ctrl+C twice while a clone's memory is restored: the clone is wiped (its
// own volumes, domain and state), the template and its disk stay, and the
// template's hold is let go (prune could lock it).
func TestReviewCloneAbortedDuringRestore(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	h.fake.onCall = func(args []string) {
		if len(args) > 1 && args[1] == "restore" {
			h.sigs <- sigByName["INT"]
			h.events.waitFor(t, "confirm_abort", "")
			h.sigs <- sigByName["INT"]
			h.events.waitFor(t, "aborting", "")
		}
	}
	done := h.up(h.cloneArgs("c1")...)
	code := h.wait(done)
	h.fake.onCall = nil
	if code != exitSIGINT {
		t.Fatalf("exit %d, want %d\n%s", code, exitSIGINT, h.stderr)
	}
	if _, ok := w.Domains["c1"]; ok || w.Volumes["vmup/c1.qcow2"] {
		t.Errorf("c1 left behind: domain %v, disk %v", w.Domains["c1"], w.Volumes["vmup/c1.qcow2"])
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "c1").Dir); !os.IsNotExist(err) {
		t.Errorf("c1's state dir: %v", err)
	}
	if !w.Volumes["vmup/"+rec.DiskVolume] || w.Domains["v1"] != "running" {
		t.Errorf("template disk %v, v1 %s", w.Volumes["vmup/"+rec.DiskVolume], w.Domains["v1"])
	}
	if _, err := readTemplate(h.env.Home, rec.Key); err != nil {
		t.Errorf("template after the aborted clone: %v", err)
	}
	if templateLockHeld(h.env.Home, rec.Key) {
		t.Errorf("the aborted clone still holds the template")
	}
}

// Two clones of one template at once: each rewrites the one save image's
// header and restores from it under the template's restore lock, so each
// runs its own definition.
func TestReviewTwoClonesAtOnce(t *testing.T) {
	h := templateHarness(t)
	h.makeTemplateVM()
	w := h.fake.world
	a := h.up(h.cloneArgs("c1", "-d")...)
	// The other with its own output: two Outputs on one buffer race in the harness.
	o, _, err := parseCommand("up", h.cloneArgs("c2", "-d"))
	if err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = newOutput(&lockedWriter{w: &bytes.Buffer{}}, newEventLog(), "v1")
	b := make(chan int, 1)
	go func() { b <- runUp(env, o) }()
	if ca, cb := h.wait(a), h.wait(b); ca != 0 || cb != 0 {
		t.Fatalf("clones: exit %d and %d\n%s", ca, cb, h.stderr)
	}
	for _, n := range []string{"c1", "c2"} {
		if w.Domains[n] != "running" || !strings.Contains(w.Live[n], "<name>"+n+"</name>") || !strings.Contains(w.Live[n], "/"+n+".qcow2") {
			t.Errorf("%s is %s, running:\n%s", n, w.Domains[n], w.Live[n])
		}
	}
}

// A vmup killed while it cloned (its journal says cloning, its pid is gone):
// up.go's diedMidFirstBoot says such a clone "is made again from its
// template", but findTemplate uses no template when an earlier first boot
// is recovered, so the next `up --template` pays a full first boot.
func TestReviewKilledCloneIsClonedAgain(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	killed := make(chan struct{})
	h.fake.onCall = func(args []string) {
		if len(args) > 1 && args[1] == "restore" {
			close(killed)
			select {} // vmup dies in the restore
		}
	}
	h.up(h.cloneArgs("c1", "-d")...)
	<-killed
	h.fake.onCall = nil
	// What that death leaves: the journal (cloning, a dead pid), no locks.
	paths := pathsFor(h.env.Home, "c1")
	j := h.journalOf("c1")
	if j.Phase != Cloning {
		t.Fatalf("c1's journal says %s", j.Phase)
	}
	j.PID = deadPID(t)
	writeJournal(paths, j)
	unlockAsDeathWould(t, paths.Lock)
	unlockAsDeathWould(t, templateLockPath(h.env.Home, rec.Key))
	unlockAsDeathWould(t, filepath.Join(templateDir(h.env.Home, rec.Key), "memory.save.lock"))

	h.events = newEventLog()
	h.fake.mu.Lock()
	h.fake.calls = nil
	h.fake.mu.Unlock()
	if code := h.wait(h.up(h.cloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("next up: exit %d\n%s", code, h.stderr)
	}
	if !h.has("provisioned_from_template") || h.has("template_exists") {
		t.Errorf("the killed clone was not cloned again from template %s (a full first boot instead); events %v",
			shortKey(rec.Key), h.events.names())
	}
	if j := h.journalOf("c1"); !j.FirstBootDone || w.Domains["c1"] != "running" {
		t.Errorf("c1: %+v, domain %s", j, w.Domains["c1"])
	}
}

// unlockAsDeathWould lets go of every flock this process holds on path, as
// the death of a vmup would, without closing the files of the goroutine
// that stands for it (it never runs again).
func unlockAsDeathWould(t *testing.T, path string) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && target == path {
			n, _ := strconv.Atoi(fd.Name())
			unix.Flock(n, unix.LOCK_UN)
		}
	}
}

// Ctrl+C, then Ctrl+C again ("forces it off now"), while the template is
// made and the VM is saved for it. The force found the VM not running
// (saved) and did nothing; the maker then restored the VM, which was shut
// down gracefully only once the template was made, or, when the restore
// came between the force's destroy and its look at the domain, vmup
// ended "could not be stopped" (exit 4) with the VM left running. Now the
// force keeps the saved VM off (the maker restores it no more), and the
// template is made all the same.
func TestReviewForceOffWhileTheTemplateIsMade(t *testing.T) {
	h := templateHarness(t)
	w := h.fake.world
	var sent atomic.Bool
	h.fake.onCall = func(args []string) {
		if len(args) < 2 || args[1] != "vol-download" || sent.Swap(true) {
			return
		}
		h.sigs <- sigByName["INT"]
		h.events.waitFor(t, "stop_once_kept", "")
		h.sigs <- sigByName["INT"]
		h.events.waitFor(t, "force_off", "")
	}
	code := h.wait(h.up(h.upArgs("--template")...))
	h.fake.onCall = nil
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if !h.has("template_made") {
		t.Errorf("no template made: %v", h.events.names())
	}
	if w.Domains["v1"] != "shut off" || slices.Contains(w.Restores, "v1") || slices.ContainsFunc(h.calls(), func(c []string) bool {
		return len(c) > 1 && c[1] == "shutdown"
	}) {
		t.Errorf("v1 is %s, restored %v: a force off while it was saved for its template restored it (and shut it down after)\n%s",
			w.Domains["v1"], w.Restores, h.stderr)
	}
	if j := h.journal(); !j.FirstBootDone || j.Phase != Stopped {
		t.Errorf("v1's journal: %s, first boot done %v", j.Phase, j.FirstBootDone)
	}
}

// An environment with "template": true: its first up makes one template of
// the VMs' shared recipe (the other maker finds it busy or made); once a VM
// is destroyed, the next up clones it while the others re-up.
func TestReviewEnvironmentTemplates(t *testing.T) {
	h := envHarness(t, `{"web1": {"groups": ["web"]}, "web2": {"groups": ["web"]}}`)
	data, _ := os.ReadFile(configFile)
	os.WriteFile(configFile, []byte(strings.Replace(string(data), `{"image"`, `{"template": true, "image"`, 1)), 0o600)
	for _, n := range []string{"shop-web1", "shop-web2"} {
		h.fake.world.Content["vmup/"+n+".qcow2"] = []byte("QFI\xfb " + n)
	}
	if code := h.wait(h.envUp("-d")); code != 0 {
		t.Fatalf("env up: exit %d\n%s", code, h.stderr)
	}
	infos, _ := listTemplates(h.env.Home)
	if len(infos) != 1 || infos[0].Record == nil {
		t.Fatalf("templates after the first env up: %+v\n%s", infos, h.stderr)
	}
	if code := h.runEnv("destroy", "web2"); code != 0 {
		t.Fatalf("destroy web2: exit %d\n%s", code, h.stderr)
	}
	h.events = newEventLog()
	if code := h.wait(h.envUp("-d")); code != 0 {
		t.Fatalf("second env up: exit %d\n%s", code, h.stderr)
	}
	if !h.has("provisioned_from_template") {
		t.Errorf("web2 was not cloned: %v", h.events.names())
	}
	for _, n := range []string{"shop-web1", "shop-web2"} {
		if j := h.envJournal(n); !j.FirstBootDone || h.fake.world.Domains[n] != "running" {
			t.Errorf("%s: %s, done %v, domain %s", n, j.Phase, j.FirstBootDone, h.fake.world.Domains[n])
		}
	}
	if pb := h.playbookCalls(); len(pb) != 1 {
		t.Errorf("%d playbooks ran; want the first up's one only", len(pb))
	}
}

// A save image vmup cannot read (compressed by a save_image_format in
// qemu.conf; or root's, 0600, under qemu:///system for a user who is not
// root, which vmup cannot chmod): no template is made, and the VM whose
// first boot just completed must run on from its saved memory, as libvirt
// itself can restore it, not be booted again from its disk (its running
// processes lost, its provisioned state then kept mid-boot).
func TestReviewUnreadableSaveImageRestoresTheVM(t *testing.T) {
	h := templateHarness(t)
	w := h.fake.world
	w.SaveCompressed = true
	if code := h.wait(h.up(h.upArgs("--template", "-d")...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if h.has("template_made") {
		t.Errorf("a template was made of a save image vmup cannot rewrite")
	}
	var starts int
	for _, c := range h.calls() {
		if len(c) > 2 && c[1] == "start" && c[2] == "v1" {
			starts++
		}
	}
	if starts != 1 || !slices.Equal(w.Restores, []string{"v1"}) || w.Domains["v1"] != "running" {
		t.Errorf("v1 started %d times, restored %v, %s; want its first boot's start only, then a restore from its saved memory\n%s",
			starts, w.Restores, w.Domains["v1"], h.stderr)
	}
	if es := entries(t, templatesDir(h.env.Home)); slices.ContainsFunc(es, func(e string) bool { return strings.HasPrefix(e, ".making-") }) {
		t.Errorf("a making dir is left: %v", es)
	}
}

// A template's disk is an overlay on its image's base volume. prune keeps a
// base only if a journal names it or libvirt reports a volume backed by it;
// libvirt knows the template's disk (made raw, the overlay's bytes uploaded
// into it) as an overlay only after a refresh of the pool probed it, which
// libvirt skips while another stream (the download it is copied from) is
// open. With its VM destroyed, an old base was pruned under the template:
// every later clone found "its volume is gone" and booted in full, and no
// new template could be made (the key has one) until the template went.
func TestReviewPruneKeepsATemplatesBase(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	o, _, _ := parseCommand("destroy", []string{"v1"})
	env := h.env
	env.Out = h.out()
	if code := runDestroy(env, o); code != 0 {
		t.Fatalf("destroy v1: exit %d\n%s", code, h.stderr)
	}
	old := time.Now().Add(-2 * time.Hour).UnixNano()
	for pv := range w.Volumes {
		w.MTime[pv] = old
	}
	if w.Backing["vmup/"+rec.DiskVolume] != "" {
		t.Fatalf("the fake knows the template's disk as an overlay")
	}
	s := &pruneSetup{t: t, fake: h.fake, home: h.env.Home, stderr: h.stderr, events: h.events}
	if code := s.prune(false); code != 0 {
		t.Fatalf("prune: exit %d\n%s", code, h.stderr)
	}
	if !s.has(rec.BaseVolume) || !s.has(rec.DiskVolume) {
		t.Errorf("prune deleted %v: the base of template %s (its disk is an overlay on it)\n%s", s.deleted(), shortKey(rec.Key), h.stderr)
	}
}

// A vmup killed while it reset a clone, once the clone's disk was made anew
// on the template's (before the template's memory and the clone's identity
// were restored): that disk holds the template VM's identity (its hostname,
// machine-id, host key). The next up redefined the domain and booted it
// from that disk, a VM with another VM's identity that vmup's pinned key
// refuses. A clone's cut-off reset is finished by a reset, and up says so.
func TestReviewCutOffResetOfAClone(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	if code := h.wait(h.up(h.cloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("clone: exit %d\n%s", code, h.stderr)
	}
	killed := make(chan struct{})
	h.fake.onCall = func(args []string) {
		if len(args) > 1 && args[1] == "restore" {
			close(killed)
			select {} // vmup dies here
		}
	}
	o, _, err := parseCommand("reset", []string{"c1"})
	if err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	go runReset(env, o)
	<-killed
	h.fake.onCall = nil
	paths := pathsFor(h.env.Home, "c1")
	j := h.journalOf("c1")
	j.PID = deadPID(t)
	writeJournal(paths, j)
	unlockAsDeathWould(t, paths.Lock)
	unlockAsDeathWould(t, templateLockPath(h.env.Home, rec.Key))
	unlockAsDeathWould(t, filepath.Join(templateDir(h.env.Home, rec.Key), "memory.save.lock"))

	h.fake.mu.Lock()
	h.fake.calls = nil
	h.fake.mu.Unlock()
	h.stderr.Reset()
	code := h.wait(h.up("c1", "-d"))
	started := slices.ContainsFunc(h.calls(), func(c []string) bool { return len(c) > 2 && c[1] == "start" && c[2] == "c1" })
	if started {
		t.Errorf("up booted clone c1 from a disk made anew on its template's (the template VM's identity), its reset not finished\n%s", h.stderr)
	}
	if code == 0 && !started && w.Domains["c1"] != "running" || code != 0 && !strings.Contains(h.stderr.String(), "vmup reset c1") {
		t.Errorf("up of a clone whose reset was cut off: exit %d; want the reset finished, or `vmup reset c1` in the hint\n%s", code, h.stderr)
	}
	// The reset it points to finishes it.
	before := w.Identities
	env.Out = h.out()
	if code := runReset(env, o); code != 0 || w.Domains["c1"] != "running" || w.Identities != before+1 {
		t.Errorf("reset after the cut: exit %d, c1 %s, identities %d (was %d)\n%s", code, w.Domains["c1"], w.Identities, before, h.stderr)
	}
}
