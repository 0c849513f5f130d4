package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func tkey(i int) string { return fmt.Sprintf("%x", sha256.Sum256([]byte{byte(i)})) }

// volDeleter records the volumes deleted; fail makes each deletion fail.
type volDeleter struct {
	mu      sync.Mutex
	deleted []string
	fail    error
}

func (d *volDeleter) delete(connect, pool, vol string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	d.deleted = append(d.deleted, connect+" "+pool+" "+vol)
	return nil
}

func testRecord(vol string, made time.Time) *TemplateRecord {
	return &TemplateRecord{
		Made: made, Image: "debian-12", ImageSHA256: strings.Repeat("c", 64), Playbook: "/src/site.yml",
		Connect: "qemu:///system", Pool: "vmup", DiskVolume: vol, DiskBytes: 1 << 30,
		Network: "user", SourceVM: "a", SourceUUID: "6f1c2b9e-0d1a-4c6e-9b0f-2a3b4c5d6e7f",
		SourceXML: "<domain type='kvm'><name>a</name></domain>", User: "vmup",
		LoginKey:      "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
		HostPublicKey: "ssh-ed25519 AAAAC3Nza host", InstanceID: "vmup-a-1700000000", MemoryMiB: 1024, CPUs: 2,
		BaseVolume: "vmup-base-0123456789abcdef.qcow2", DomainType: "qemu", SaveDataLen: 4096, SaveCookie: "<cookie/>",
	}
}

// beginWithMemory begins a template of key and writes its memory and note,
// as a maker does before its volume is made.
func beginWithMemory(t *testing.T, home, key string) (*templateMaking, string) {
	t.Helper()
	m, err := beginTemplate(home, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.Dir(), "memory.save"), []byte("saved guest memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	vol := templateDiskVolume(key)
	if err := m.NoteDiskVolume("qemu:///system", "vmup", vol); err != nil {
		t.Fatal(err)
	}
	return m, vol
}

// makeTestTemplate makes a complete template of key, made at made.
func makeTestTemplate(t *testing.T, home, key string, made time.Time) *TemplateRecord {
	t.Helper()
	m, vol := beginWithMemory(t, home, key)
	rec := testRecord(vol, made)
	if err := m.Commit(rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// crash lets go of the maker's lock as its death would, and nothing else.
func (m *templateMaking) crash() { m.lock.Close() }

func shortWaits(t *testing.T) {
	oldM, oldH := makerPatience, templateHoldWait
	makerPatience, templateHoldWait = 10*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { makerPatience, templateHoldWait = oldM, oldH })
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestTemplateMadeWhole(t *testing.T) {
	home, key := t.TempDir(), tkey(1)
	m, vol := beginWithMemory(t, home, key)
	making := m.Dir()
	if !strings.HasPrefix(filepath.Base(making), ".making-"+key+"-") {
		t.Errorf("making dir %s", making)
	}
	if _, err := readTemplate(home, key); !errors.Is(err, errNoTemplate) {
		t.Errorf("while made: %v, want errNoTemplate", err)
	}
	rec := testRecord(vol, time.Time{})
	if err := m.Commit(rec); err != nil {
		t.Fatal(err)
	}
	m.Abort() // after Commit: nothing
	got, err := readTemplate(home, key)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rec, got); diff != "" {
		t.Errorf("record read back (-want +got):\n%s", diff)
	}
	if got.Format != 1 || got.Key != key || got.MemoryBytes != int64(len("saved guest memory")) || got.Made.Location() != time.UTC {
		t.Errorf("Commit did not fill format, key, memory size, made in UTC: %+v", got)
	}
	if diff := cmp.Diff([]string{key, key + ".lock"}, entries(t, templatesDir(home))); diff != "" {
		t.Errorf("templates/ (-want +got):\n%s", diff)
	}
	modes := map[string]os.FileMode{
		templatesDir(home): 0o700, templateDir(home, key): 0o700,
		filepath.Join(templateDir(home, key), "record.json"): 0o600,
		filepath.Join(templateDir(home, key), "disk-volume"): 0o600,
	}
	for path, want := range modes {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %04o", path, st.Mode(), err, want)
		}
	}
}

// A maker that dies at any step leaves no template, only a leftover that the
// listing shows and cleanHalfMade removes with the volume it noted.
func TestTemplateMakerCrash(t *testing.T) {
	for _, step := range []string{"begun", "memory saved, volume noted", "record written"} {
		t.Run(step, func(t *testing.T) {
			home, key := t.TempDir(), tkey(2)
			m, err := beginTemplate(home, key)
			if err != nil {
				t.Fatal(err)
			}
			var vol string
			if step != "begun" {
				m.Abort()
				m, vol = beginWithMemory(t, home, key)
			}
			if step == "record written" {
				data, _ := json.Marshal(testRecord(vol, time.Now()))
				os.WriteFile(filepath.Join(m.Dir(), "record.json"), data, 0o600)
			}
			// Its vmup still works: neither listed nor cleaned.
			d := &volDeleter{}
			if err := cleanHalfMade(home, d.delete); err != nil || len(d.deleted) > 0 {
				t.Fatalf("cleaned a live maker's dir: %v %v", err, d.deleted)
			}
			if infos, _ := listTemplates(home); len(infos) != 0 {
				t.Errorf("a live maker's dir listed: %+v", infos)
			}
			m.crash()
			if _, err := readTemplate(home, key); !errors.Is(err, errNoTemplate) {
				t.Errorf("after the crash: %v, want errNoTemplate", err)
			}
			infos, err := listTemplates(home)
			if err != nil || len(infos) != 1 || !infos[0].Garbage || infos[0].Key != key || infos[0].Dir != m.Dir() {
				t.Fatalf("listing: %+v %v, want the making dir as garbage", infos, err)
			}
			if err := cleanHalfMade(home, d.delete); err != nil {
				t.Fatal(err)
			}
			var want []string
			if vol != "" {
				want = []string{"qemu:///system vmup " + vol}
			}
			if diff := cmp.Diff(want, d.deleted); diff != "" {
				t.Errorf("volumes deleted (-want +got):\n%s", diff)
			}
			if names := entries(t, templatesDir(home)); len(names) != 0 {
				t.Errorf("left in templates/: %v", names)
			}
			// And the key can be made again.
			makeTestTemplate(t, home, key, time.Now())
		})
	}
}

// The same, with the maker a process of its own, killed.
func TestTemplateMakerKilled(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("no flock(1)")
	}
	home, key := t.TempDir(), tkey(3)
	m, vol := beginWithMemory(t, home, key)
	// The child takes the lock from this maker, which dies at once; the
	// child and the sleep it runs are a process group, killed whole.
	child := exec.Command("flock", "-x", templateLockPath(home, key), "sleep", "60")
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	m.crash()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	kill := sync.OnceFunc(func() { syscall.Kill(-child.Process.Pid, syscall.SIGKILL); child.Wait() })
	t.Cleanup(kill)
	for !templateLockHeld(home, key) {
		time.Sleep(5 * time.Millisecond)
	}
	d := &volDeleter{}
	if err := cleanHalfMade(home, d.delete); err != nil || len(d.deleted) > 0 {
		t.Fatalf("cleaned while the child holds it: %v %v", err, d.deleted)
	}
	kill()
	// The kernel lets go once the last of them has exited.
	for deadline := time.Now().Add(5 * time.Second); templateLockHeld(home, key); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the killed child's lock is still held")
		}
	}
	if err := cleanHalfMade(home, d.delete); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"qemu:///system vmup " + vol}, d.deleted); diff != "" {
		t.Errorf("volumes deleted (-want +got):\n%s", diff)
	}
}

func TestTemplateTwoMakers(t *testing.T) {
	shortWaits(t)
	home, key := t.TempDir(), tkey(4)
	m, vol := beginWithMemory(t, home, key)
	_, err := beginTemplate(home, key)
	if !errors.Is(err, errTemplateBusy) || err.Error() != "another vmup is making template "+key[:12] {
		t.Fatalf("second maker: %v, want errTemplateBusy", err)
	}
	if err := m.Commit(testRecord(vol, time.Now())); err != nil {
		t.Fatal(err)
	}
	if _, err := beginTemplate(home, key); !errors.Is(err, errTemplateExists) {
		t.Errorf("after the commit: %v, want errTemplateExists", err)
	}
	// Held by a clone, it exists too.
	release, err := holdTemplate(home, key)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := beginTemplate(home, key); !errors.Is(err, errTemplateExists) {
		t.Errorf("while held: %v, want errTemplateExists", err)
	}
}

func TestTemplateMakersAtOnce(t *testing.T) {
	home, key := t.TempDir(), tkey(5)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []*templateMaking
	var busy int
	for range 8 {
		wg.Go(func() {
			m, err := beginTemplate(home, key)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				made = append(made, m)
			case errors.Is(err, errTemplateBusy):
				busy++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if len(made) != 1 || busy != 7 {
		t.Fatalf("%d makers began, %d were told busy; want 1 and 7", len(made), busy)
	}
	made[0].Abort()
	if names := entries(t, templatesDir(home)); len(names) != 0 {
		t.Errorf("Abort left %v", names)
	}
}

// rewriteRecord changes record.json as a JSON object, keeping its mode.
func rewriteRecord(t *testing.T, dir string, change func(map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "record.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	change(obj)
	data, _ = json.Marshal(obj)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A template whose files say anything but what its maker wrote is refused,
// never used nor pruned, and said to be damaged, not absent.
func TestTemplateDamagedRefused(t *testing.T) {
	set := func(k string, v any) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { rewriteRecord(t, dir, func(o map[string]any) { o[k] = v }) }
	}
	cases := []struct {
		name, want string
		damage     func(t *testing.T, dir string)
	}{
		{"wrong key", `key "` + tkey(99) + `" is not the template's key`, set("key", tkey(99))},
		{"unknown format", "format 2 is not one this vmup knows", set("format", 2)},
		{"bad json", "record.json does not parse", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "record.json"), []byte(`{"format": 1,`), 0o600)
		}},
		{"unknown field", `unknown field "extra"`, set("extra", 1)},
		{"wrong memory size", "memory.save has 19 bytes, the record says 18", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "memory.save"), []byte("saved guest memory!"), 0o600)
		}},
		{"missing memory.save", "memory.save is missing", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "memory.save")) }},
		{"memory.save a link", "memory.save is a symbolic link", func(t *testing.T, dir string) {
			mem := filepath.Join(dir, "memory.save")
			os.Rename(mem, mem+".real")
			os.Symlink(mem+".real", mem)
		}},
		{"group-writable record", "record.json is writable by group or others (mode 0620)", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, "record.json"), 0o620)
		}},
		{"record readable by others", "record.json is readable by others (mode 0644), and holds a login key", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, "record.json"), 0o644)
		}},
		{"group-writable dir", "its directory is writable by group or others (mode 0770)", func(t *testing.T, dir string) { os.Chmod(dir, 0o770) }},
		{"symlinked record", "record.json is a symbolic link", func(t *testing.T, dir string) {
			rec := filepath.Join(dir, "record.json")
			elsewhere := filepath.Join(t.TempDir(), "record.json")
			os.Rename(rec, elsewhere)
			os.Symlink(elsewhere, rec)
		}},
		{"volume of no template", `disk_volume "vmup-base-0123456789abcdef.qcow2" is not a volume vmup makes`, set("disk_volume", "vmup-base-0123456789abcdef.qcow2")},
		{"volume of another key", "is not a volume vmup makes for this template", set("disk_volume", templateDiskVolume(tkey(99)))},
		{"volume a path", "is not a volume vmup makes", set("disk_volume", "../../etc/passwd")},
		{"note of another volume", "disk-volume names vmup-tmpl-", func(t *testing.T, dir string) {
			data, _ := json.Marshal(templateVolumeNote{"qemu:///system", "vmup", templateDiskVolume(filepath.Base(dir))})
			os.WriteFile(filepath.Join(dir, "disk-volume"), data, 0o600)
		}},
		{"note missing", "disk-volume is missing", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "disk-volume")) }},
		{"made in the future", "is no time a vmup made a template", set("made", time.Now().Add(time.Hour))},
		{"network", `network "bridge" is not nat or user`, set("network", "bridge")},
		{"no login key", "login_key is no OpenSSH private key", set("login_key", "")},
		{"no source xml", "source_xml is no domain definition", set("source_xml", "")},
		{"no host key", "host_public_key", set("host_public_key", "")},
		{"pool", "is not a storage pool name", set("pool", "../x")},
		{"cpus", "cpus 0 is out of range", set("cpus", 0)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			shortWaits(t)
			home, key := t.TempDir(), tkey(6)
			makeTestTemplate(t, home, key, time.Now().Add(-30*24*time.Hour))
			dir := templateDir(home, key)
			c.damage(t, dir)
			_, err := readTemplate(home, key)
			if !errors.Is(err, errTemplateDamaged) || errors.Is(err, errNoTemplate) {
				t.Fatalf("read: %v, want damaged", err)
			}
			var h *templateError
			if !strings.Contains(err.Error(), "template "+key[:12]+" is damaged: ") || !strings.Contains(err.Error(), c.want) ||
				!errors.As(err, &h) || !strings.Contains(h.Hint(), dir) {
				t.Errorf("error %q, want one saying %q, with a hint naming the dir", err, c.want)
			}
			infos, err := listTemplates(home)
			if err != nil || len(infos) != 1 || infos[0].Err == nil || infos[0].Record != nil {
				t.Errorf("listing: %+v %v, want it listed as damaged", infos, err)
			}
			if _, err := beginTemplate(home, key); !errors.Is(err, errTemplateDamaged) {
				t.Errorf("begin: %v, want damaged", err)
			}
			d := &volDeleter{}
			removed, err := pruneTemplates(home, time.Hour, func(string) bool { return false }, d.delete, time.Now())
			if err != nil || len(removed) > 0 || len(d.deleted) > 0 {
				t.Errorf("prune: removed %v, deleted %v, %v: a damaged record is not to be acted on", removed, d.deleted, err)
			}
		})
	}
}

func TestTemplateCommitRefuses(t *testing.T) {
	home, key := t.TempDir(), tkey(7)
	m, vol := beginWithMemory(t, home, key)
	rec := testRecord(templateDiskVolume(key), time.Now())
	if err := m.Commit(rec); err == nil || !strings.Contains(err.Error(), "was not noted before it was made") {
		t.Errorf("a volume not noted: %v", err)
	}
	if err := m.NoteDiskVolume("qemu:///system", "vmup", templateDiskVolume(key)); err == nil {
		t.Errorf("a second volume noted over the first")
	}
	rec = testRecord(vol, time.Now())
	rec.SourceUUID = "x"
	if err := m.Commit(rec); err == nil || !strings.Contains(err.Error(), "source_uuid") {
		t.Errorf("an invalid record: %v", err)
	}
	os.Chmod(filepath.Join(m.Dir(), "memory.save"), 0o666)
	if err := m.Commit(testRecord(vol, time.Now())); err == nil || !strings.Contains(err.Error(), "memory.save is writable by group or others") {
		t.Errorf("an open memory.save: %v", err)
	}
	if _, err := readTemplate(home, key); !errors.Is(err, errNoTemplate) {
		t.Errorf("after refused commits: %v", err)
	}
	m.Abort()
	if names := entries(t, templatesDir(home)); len(names) != 0 {
		t.Errorf("Abort left %v", names)
	}
}

func TestTemplateHold(t *testing.T) {
	shortWaits(t)
	home, key := t.TempDir(), tkey(8)
	if _, err := holdTemplate(home, key); !errors.Is(err, errNoTemplate) {
		t.Errorf("hold of none: %v", err)
	}
	if _, err := os.Stat(templatesDir(home)); !os.IsNotExist(err) {
		t.Errorf("hold of none made templates/: %v", err)
	}
	m, vol := beginWithMemory(t, home, key)
	if _, err := holdTemplate(home, key); !errors.Is(err, errNoTemplate) {
		t.Errorf("hold while made: %v, want errNoTemplate", err)
	}
	if err := m.Commit(testRecord(vol, time.Now().Add(-30*24*time.Hour))); err != nil {
		t.Fatal(err)
	}
	r1, err1 := holdTemplate(home, key)
	r2, err2 := holdTemplate(home, key)
	if err1 != nil || err2 != nil {
		t.Fatalf("two clones at once: %v %v", err1, err2)
	}
	if err := touchTemplate(home, key); err != nil {
		t.Fatal(err)
	}
	infos, _ := listTemplates(home)
	if len(infos) != 1 || time.Since(infos[0].LastUsed) > time.Minute {
		t.Errorf("last use not listed: %+v", infos)
	}
	r1()
	r2()
	if err := touchTemplate(home, tkey(9)); !errors.Is(err, errNoTemplate) {
		t.Errorf("touch of none: %v", err)
	}
	// Prune holds it exclusively while it removes: a clone waits, then gives up.
	lock, err := lockTemplateFile(home, key, unix.LOCK_EX, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := holdTemplate(home, key); !errors.Is(err, errTemplateBusy) || time.Since(start) < templateHoldWait {
		t.Errorf("hold during a removal: %v after %v", err, time.Since(start))
	}
	lock.Close()
}

func TestTemplatePrune(t *testing.T) {
	home, now := t.TempDir(), time.Now()
	old := now.Add(-10 * 24 * time.Hour)
	backedKey, heldKey, recentKey, oldKey, usedKey := tkey(10), tkey(11), tkey(12), tkey(13), tkey(14)
	for _, k := range []string{backedKey, heldKey, oldKey, usedKey} {
		makeTestTemplate(t, home, k, old)
	}
	makeTestTemplate(t, home, recentKey, now.Add(-time.Hour))
	oldRec, _ := readTemplate(home, oldKey)
	if err := touchTemplate(home, usedKey); err != nil {
		t.Fatal(err)
	}
	release, err := holdTemplate(home, heldKey)
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	backed := func(k string) bool {
		asked = append(asked, k)
		if !templateLockHeld(home, k) {
			t.Errorf("backed(%s) asked before the template was held: a clone could come between", k[:12])
		}
		return k == backedKey
	}
	d := &volDeleter{}
	removed, err := pruneTemplates(home, 7*24*time.Hour, backed, d.delete, now)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{oldKey}, removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"qemu:///system vmup " + oldRec.DiskVolume}, d.deleted); diff != "" {
		t.Errorf("volumes deleted (-want +got):\n%s", diff)
	}
	if slices.Contains(asked, heldKey) {
		t.Errorf("backed asked of a held template, before its lock: %v", asked)
	}
	want := []string{tkey(10), tkey(10) + ".lock", tkey(11), tkey(11) + ".lock", tkey(12), tkey(12) + ".lock", tkey(14), tkey(14) + ".lock"}
	slices.Sort(want)
	if diff := cmp.Diff(want, entries(t, templatesDir(home))); diff != "" {
		t.Errorf("templates/ after prune (-want +got):\n%s", diff)
	}
	release()
	removed, _ = pruneTemplates(home, 7*24*time.Hour, backed, d.delete, now)
	if diff := cmp.Diff([]string{heldKey}, removed); diff != "" {
		t.Errorf("once released (-want +got):\n%s", diff)
	}
}

// A prune that dies once its template is renamed leaves a leftover, never
// a template without its disk; the next clean deletes the disk.
func TestTemplatePruneCrash(t *testing.T) {
	for _, when := range []string{"renamed", "volume deleted", "volume delete failed"} {
		t.Run(when, func(t *testing.T) {
			home, key := t.TempDir(), tkey(15)
			rec := makeTestTemplate(t, home, key, time.Now().Add(-30*24*time.Hour))
			d := &volDeleter{}
			switch when {
			case "volume delete failed":
				d.fail = errors.New("error: failed to get vol")
				_, err := pruneTemplates(home, time.Hour, func(string) bool { return false }, d.delete, time.Now())
				if err == nil || !strings.Contains(err.Error(), "cannot delete its disk, volume "+rec.DiskVolume) {
					t.Errorf("prune: %v", err)
				}
				d.fail = nil
			default: // as prune does it, up to the crash
				os.Rename(templateDir(home, key), filepath.Join(templatesDir(home), ".removing-"+key+"-0badf00d"))
			}
			if _, err := readTemplate(home, key); !errors.Is(err, errNoTemplate) {
				t.Errorf("half-removed: %v, want errNoTemplate", err)
			}
			infos, _ := listTemplates(home)
			if len(infos) != 1 || !infos[0].Garbage {
				t.Errorf("listing: %+v, want the leftover", infos)
			}
			if err := cleanHalfMade(home, d.delete); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"qemu:///system vmup " + rec.DiskVolume}, d.deleted); diff != "" {
				t.Errorf("volumes deleted (-want +got):\n%s", diff)
			}
			if names := entries(t, templatesDir(home)); len(names) != 0 {
				t.Errorf("left in templates/: %v", names)
			}
		})
	}
}

// A leftover whose volume cannot be deleted keeps its note for a later try;
// one whose note is not vmup's deletes nothing.
func TestTemplateCleanKeepsWhatItCannotFinish(t *testing.T) {
	home, key := t.TempDir(), tkey(16)
	m, vol := beginWithMemory(t, home, key)
	m.Release()
	d := &volDeleter{fail: errors.New("pool vmup is not active")}
	if err := cleanHalfMade(home, d.delete); err == nil || !strings.Contains(err.Error(), vol) {
		t.Errorf("clean: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.Dir(), "disk-volume")); err != nil {
		t.Errorf("the note went with its volume not deleted: %v", err)
	}
	// A planted note naming a base volume.
	os.WriteFile(filepath.Join(m.Dir(), "disk-volume"), []byte(`{"connect":"qemu:///system","pool":"vmup","volume":"vmup-base-0123456789abcdef.qcow2"}`), 0o600)
	d.fail = nil
	if err := cleanHalfMade(home, d.delete); err == nil || len(d.deleted) > 0 {
		t.Errorf("clean of a planted note: %v, deleted %v", err, d.deleted)
	}
}

func TestTemplateVolumeNames(t *testing.T) {
	key := tkey(17)
	a, b := templateDiskVolume(key), templateDiskVolume(key)
	if a == b || !strings.HasPrefix(a, "vmup-tmpl-"+key[:16]+"-") || !isTemplateVolume(a) || !templateVolumeOf(key, a) {
		t.Errorf("names %s %s", a, b)
	}
	for _, bad := range []string{"vmup-tmpl-" + key[:16] + ".qcow2", "vmup-base-" + key[:16] + ".qcow2", ".vmup-tmpl-" + key[:16] + "-0badf00d.qcow2", "a/" + a} {
		if isTemplateVolume(bad) {
			t.Errorf("%s taken for a template volume", bad)
		}
	}
	if templateVolumeOf(tkey(18), a) {
		t.Errorf("%s taken for a volume of another key", a)
	}
}

func TestTemplatesDirOpenToOthersRefused(t *testing.T) {
	home := t.TempDir()
	os.Mkdir(templatesDir(home), 0o777)
	os.Chmod(templatesDir(home), 0o777)
	var de *dirError
	if _, err := beginTemplate(home, tkey(19)); !errors.As(err, &de) {
		t.Errorf("begin: %v, want a dirError", err)
	}
	if err := cleanHalfMade(home, (&volDeleter{}).delete); !errors.As(err, &de) {
		t.Errorf("clean: %v, want a dirError", err)
	}
}

// A VM's disk is never named like a template's.
func TestTemplateVolumePrefixReserved(t *testing.T) {
	o, _, err := parseCommand("up", []string{"vmup-tmpl-0123456789abcdef-01234567", "--image", "x.qcow2"})
	if err == nil {
		err = requireName(o, "up")
	}
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "reserved for vmup's template disks") {
		t.Errorf("up of a VM named like a template disk: %v", err)
	}
}
