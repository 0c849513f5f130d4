// Templates where a memory clone cannot have its own identity (issue 17,
// item 4): on nat a template is its disk alone, and a clone boots from it.
package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// natCloneArgs are natUpArgs for another VM of the same recipe.
func (h *harness) natCloneArgs(name string, extra ...string) []string {
	args := h.natUpArgs(append([]string{"--template"}, extra...)...)
	args[0] = name
	return args
}

// message is the message of the first event of this name, or "".
func (l *eventLog) message(event string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.events {
		if ev.Event == event {
			return ev.Message
		}
	}
	return ""
}

// makeNATTemplateVM brings v1 up on nat with --template -d.
func (h *harness) makeNATTemplateVM() *TemplateRecord {
	h.t.Helper()
	if code := h.wait(h.up(h.natUpArgs("--template", "-d")...)); code != 0 {
		h.t.Fatalf("up --network nat --template: exit %d\n%s", code, h.stderr)
	}
	infos, err := listTemplates(h.env.Home)
	if err != nil || len(infos) != 1 || infos[0].Record == nil {
		h.t.Fatalf("templates = %+v, %v; want one whole\n%s", infos, err, h.stderr)
	}
	return infos[0].Record
}

// A template made on nat keeps the disk alone: the VM is paused while its
// disk is copied, never saved, and runs on.
func TestTemplateOnNATIsTheDiskAlone(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeNATTemplateVM()
	w := h.fake.world
	if len(w.Saves) > 0 || len(w.Restores) > 0 || !slices.Equal(w.Pauses, []string{"v1"}) || w.Domains["v1"] != "running" {
		t.Fatalf("saves %v, restores %v, pauses %v, v1 %s; want v1 paused once, never saved, running", w.Saves, w.Restores, w.Pauses, w.Domains["v1"])
	}
	if !rec.diskOnly() || rec.MemoryBytes != 0 || rec.SourceXML != "" || rec.Network != "nat" {
		t.Errorf("record: disk only %v, memory %d, xml %q, network %q", rec.diskOnly(), rec.MemoryBytes, rec.SourceXML, rec.Network)
	}
	if _, err := os.Lstat(filepath.Join(templateDir(h.env.Home, rec.Key), "memory.save")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("memory.save of a nat template: %v; want none", err)
	}
	if string(w.Content["vmup/"+rec.DiskVolume]) != string(w.Content["vmup/v1.qcow2"]) {
		t.Errorf("template disk %q, v1's %q", w.Content["vmup/"+rec.DiskVolume], w.Content["vmup/v1.qcow2"])
	}
	if m := h.events.message("template_made"); !strings.Contains(m, "(disk ") || strings.Contains(m, "memory") {
		t.Errorf("template_made says %q; want the disk's size alone", m)
	}
}

// A clone on nat boots from its template's disk, with the template's
// instance-id until its identity is given, then the seed of later boots
// with its own; the output says why it booted, and how long it took.
func TestCloneOnNATBootsFromTheTemplatesDisk(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeNATTemplateVM()
	w := h.fake.world
	var firstSeed string
	h.fake.onCall = func(args []string) {
		// The clone's seed, as the domain starts with it.
		if args[0] == "virsh" && slices.Contains(args, "start") && slices.Contains(args, "c1") {
			h.fake.mu.Lock()
			firstSeed = string(w.Content["vmup/"+laterSeedVolume("c1")])
			h.fake.mu.Unlock()
		}
	}
	if code := h.wait(h.up(h.natCloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("clone on nat: exit %d\n%s", code, h.stderr)
	}
	if w.Domains["c1"] != "running" || len(w.Restores) > 0 || w.Identities != 1 {
		t.Fatalf("c1 %s, restores %v, identities %d; want c1 booted, its identity given once\n%s", w.Domains["c1"], w.Restores, w.Identities, h.stderr)
	}
	if !strings.Contains(firstSeed, "instance-id: "+rec.InstanceID) || !strings.Contains(firstSeed, "local-hostname: c1") {
		t.Errorf("c1 booted with the seed %q; want its name and its template's instance-id", firstSeed)
	}
	j := h.journalOf("c1")
	if !j.FirstBootDone || j.Template != rec.Key || j.SeedVolume != laterSeedVolume("c1") || j.InstanceID == rec.InstanceID {
		t.Errorf("c1's journal: done %v, template %q, seed %q, instance-id %q", j.FirstBootDone, j.Template, j.SeedVolume, j.InstanceID)
	}
	if w.Volumes["vmup/"+firstSeedVolume("c1")] {
		t.Errorf("c1 has a first seed volume")
	}
	// Its one seed holds its own instance-id now, for any boot: one the
	// guest asks for runs the same QEMU, with the definition it started with.
	if later := string(w.Content["vmup/"+laterSeedVolume("c1")]); !strings.Contains(later, "instance-id: "+j.InstanceID) {
		t.Errorf("c1's seed %q does not hold its own instance-id %s", later, j.InstanceID)
	}
	for what, xml := range map[string]string{"running": w.Live["c1"], "defined": w.XML["c1"]} {
		if !strings.Contains(xml, laterSeedVolume("c1")) || strings.Contains(xml, firstSeedVolume("c1")) {
			t.Errorf("c1's %s definition does not name its one seed:\n%s", what, xml)
		}
	}
	if b := w.Backing["vmup/c1.qcow2"]; b != "/pool/vmup/"+rec.DiskVolume {
		t.Errorf("c1's disk is backed by %q; want the template's disk", b)
	}
	m := h.events.message("provisioned_from_template")
	if !strings.Contains(m, "booted from its disk in ") || !strings.Contains(m, "no memory clone on nat") {
		t.Errorf("provisioned_from_template says %q; want that it booted, why, and the time", m)
	}
	if !strings.Contains(h.stderr.String(), "no memory clone on nat") {
		t.Errorf("the output does not say the clone booted:\n%s", h.stderr)
	}
}

// The network is in the key: a VM on the user network does not use a
// template made on nat (nor the other way), and makes one of its own.
func TestTemplateKeyedByNetwork(t *testing.T) {
	h := templateHarness(t)
	h.makeNATTemplateVM()
	w := h.fake.world
	h.fake.onCall = func(args []string) {
		// c1's disk, once made, has bytes to copy into its own template.
		if args[0] == "virsh" && slices.Contains(args, "vol-download") && slices.Contains(args, "c1.qcow2") {
			h.fake.mu.Lock()
			w.Content["vmup/c1.qcow2"] = []byte("QFI\xfb c1's first boot")
			h.fake.mu.Unlock()
		}
	}
	if code := h.wait(h.up(h.cloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("up on user: exit %d\n%s", code, h.stderr)
	}
	if h.has("provisioned_from_template") || w.Identities != 0 {
		t.Errorf("a VM on the user network used the nat template, or made none: identities %d, events %v", w.Identities, h.events.names())
	}
	infos, err := listTemplates(h.env.Home)
	if err != nil || len(infos) != 2 {
		t.Errorf("templates: %+v %v; want one per network\n%s", infos, err, h.stderr)
	}
}

// A nat clone whose guest never gets a lease fails at --boot-timeout.
func TestCloneOnNATWithoutALeaseEnds(t *testing.T) {
	h := templateHarness(t)
	h.makeNATTemplateVM()
	h.fake.world.Fail["domifaddr c1"] = "error: no lease"
	if code := h.wait(h.up(h.natCloneArgs("c1", "-d", "--boot-timeout", "1s")...)); code != exitFailed {
		t.Fatalf("exit %d, want %d\n%s", code, exitFailed, h.stderr)
	}
	if !strings.Contains(h.stderr.String(), "no address after --boot-timeout") {
		t.Errorf("stderr does not say why:\n%s", h.stderr)
	}
}

// A seed that cannot be given the clone's own instance-id fails the clone,
// before its first boot is recorded: the next up does not take it as done.
func TestCloneOnNATSeedNotRewrittenFails(t *testing.T) {
	h := templateHarness(t)
	h.makeNATTemplateVM()
	w := h.fake.world
	uploads := 0
	h.fake.onCall = func(args []string) {
		if args[0] == "virsh" && slices.Contains(args, "vol-upload") && slices.Contains(args, laterSeedVolume("c1")) {
			if uploads++; uploads == 2 {
				h.fake.mu.Lock()
				w.Fail["vol-upload"] = "error: no space left on device"
				h.fake.mu.Unlock()
			}
		}
	}
	if code := h.wait(h.up(h.natCloneArgs("c1", "-d")...)); code != exitFailed {
		t.Fatalf("exit %d, want %d\n%s", code, exitFailed, h.stderr)
	}
	if j := h.journalOf("c1"); j.FirstBootDone {
		t.Errorf("c1's first boot recorded complete with the template's instance-id in its seed")
	}
}

// A VM left paused (its maker killed while it copied the disk) runs on
// with the next up.
func TestPausedVMIsResumedByUp(t *testing.T) {
	h := templateHarness(t)
	h.makeNATTemplateVM()
	h.fake.world.Domains["v1"] = "paused"
	if code := h.wait(h.up("v1", "-d")); code != 0 || h.fake.world.Domains["v1"] != "running" {
		t.Errorf("exit %d, v1 %s; want it resumed\n%s", code, h.fake.world.Domains["v1"], h.stderr)
	}
}

// The reset of a clone that booted boots its template's disk again, with
// the template's instance-id first and its own after.
func TestResetOfANATClone(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeNATTemplateVM()
	w := h.fake.world
	if code := h.wait(h.up(h.natCloneArgs("c1", "-d")...)); code != 0 {
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
		t.Fatalf("reset: exit %d\n%s", code, h.stderr)
	}
	if w.Domains["c1"] != "running" || w.Identities != 2 || len(w.Restores) > 0 {
		t.Errorf("c1 %s, identities %d, restores %v", w.Domains["c1"], w.Identities, w.Restores)
	}
	if len(w.Content["vmup/c1.qcow2"]) != 0 || w.Backing["vmup/c1.qcow2"] != "/pool/vmup/"+rec.DiskVolume {
		t.Errorf("c1's disk after reset: %q on %q", w.Content["vmup/c1.qcow2"], w.Backing["vmup/c1.qcow2"])
	}
	j := h.journalOf("c1")
	if seed := string(w.Content["vmup/"+laterSeedVolume("c1")]); j.SeedVolume != laterSeedVolume("c1") || !strings.Contains(seed, "instance-id: "+j.InstanceID) {
		t.Errorf("after reset: seed volume %q holds %q; want its own instance-id %s", j.SeedVolume, seed, j.InstanceID)
	}
	if now, _ := os.ReadFile(paths.KnownHosts()); string(now) == string(pinned) {
		t.Errorf("c1's pinned host key did not change")
	}
	if _, err := readTemplate(h.env.Home, rec.Key); err != nil || templateLockHeld(h.env.Home, rec.Key) {
		t.Errorf("template after the reset: %v, held %v", err, templateLockHeld(h.env.Home, rec.Key))
	}
}

// A disk-only record is refused with a memory state, and a memory one
// without.
func TestTemplateDiskOnlyRecord(t *testing.T) {
	now := time.Now()
	key := tkey(3)
	disk := testRecord(templateDiskVolume(key), now.Add(-time.Hour))
	disk.Key, disk.Format, disk.Network = key, templateFormat, "nat"
	disk.SourceXML, disk.SaveDataLen, disk.SaveCookie = "", 0, ""
	if err := validateTemplate(disk, key, now); err != nil {
		t.Fatalf("a disk-only record: %v", err)
	}
	for name, change := range map[string]func(r *TemplateRecord){
		"memory bytes": func(r *TemplateRecord) { r.MemoryBytes = 10 },
		"save header":  func(r *TemplateRecord) { r.SaveDataLen = 4096 },
		"xml":          func(r *TemplateRecord) { r.SourceXML = "<domain/>" },
	} {
		r := *disk
		change(&r)
		if err := validateTemplate(&r, key, now); err == nil || !strings.Contains(err.Error(), "keeps its disk alone") {
			t.Errorf("%s: %v; want refused", name, err)
		}
	}
	mem := *disk
	mem.Network = "user"
	if err := validateTemplate(&mem, key, now); err == nil {
		t.Errorf("a user template without memory passed")
	}
}

// A disk-only template with a memory.save in its dir is damaged.
func TestTemplateDiskOnlyWithMemoryFileRefused(t *testing.T) {
	home, key := t.TempDir(), tkey(4)
	m, err := beginTemplate(home, key)
	if err != nil {
		t.Fatal(err)
	}
	vol := templateDiskVolume(key)
	if err := m.NoteDiskVolume("qemu:///system", "vmup", vol); err != nil {
		t.Fatal(err)
	}
	rec := testRecord(vol, time.Now().Add(-time.Hour))
	rec.Network, rec.SourceXML, rec.SaveDataLen, rec.SaveCookie = "nat", "", 0, ""
	if err := m.Commit(rec); err != nil {
		t.Fatal(err)
	}
	if got, err := readTemplate(home, key); err != nil || got.MemoryBytes != 0 {
		t.Fatalf("read: %+v, %v", got, err)
	}
	os.WriteFile(filepath.Join(templateDir(home, key), "memory.save"), []byte("x"), 0o600)
	if _, err := readTemplate(home, key); !errors.Is(err, errTemplateDamaged) || !strings.Contains(err.Error(), "memory.save is there") {
		t.Errorf("read with a memory.save: %v; want damaged", err)
	}
}

// A booted clone's clock is set to the host's when its identity is given,
// not to the time before its boot began.
func TestCloneOnNATClockIsNowNotBeforeTheBoot(t *testing.T) {
	h := templateHarness(t)
	h.makeNATTemplateVM()
	var booted time.Time
	h.fake.onCall = func(args []string) {
		// The guest's cloud-init, waited for once logged in, takes its time.
		if args[0] == "ssh" && slices.Contains(args, "test") && booted.IsZero() {
			time.Sleep(1100 * time.Millisecond)
			booted = time.Now()
		}
	}
	if code := h.wait(h.up(h.natCloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	h.fake.mu.Lock()
	defer h.fake.mu.Unlock()
	for _, args := range h.fake.raw {
		if args[0] != "ssh" || !strings.Contains(args[len(args)-1], "vmup-identity") {
			continue
		}
		words := strings.Fields(args[len(args)-1])
		stamp, err := strconv.ParseInt(strings.Trim(words[len(words)-2], "'"), 10, 64)
		if err != nil || stamp < booted.Unix() {
			t.Errorf("the identity sets the clock to %v (%v); the boot ended at %d", stamp, err, booted.Unix())
		}
		return
	}
	t.Fatalf("no identity script ran")
}
