package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pruneSetup is a pool shared by several users' homes, and this user's home.
type pruneSetup struct {
	t      *testing.T
	fake   *fakeRunner
	home   string
	stderr *bytes.Buffer
	events *eventLog
}

func newPruneSetup(t *testing.T) *pruneSetup {
	s := &pruneSetup{t: t, fake: newFakeRunner(), home: filepath.Join(t.TempDir(), "home"), stderr: &bytes.Buffer{}, events: newEventLog()}
	s.fake.world.Pools["vmup"] = true
	return s
}

// hex16 is the base volume's hash part for content.
func hex16(content string) string {
	sum := sha256.Sum256([]byte(content))
	return hex.EncodeToString(sum[:])[:16]
}

// vol puts a volume into the pool, modified age ago; backing names another
// volume of the pool it is an overlay on.
func (s *pruneSetup) vol(name, backing string, age time.Duration) {
	w := s.fake.world
	pv := "vmup/" + name
	w.Volumes[pv] = true
	if !strings.HasSuffix(name, ".complete") {
		w.Content[pv] = []byte(strings.Repeat("x", 1000))
	}
	if backing != "" {
		w.Backing[pv] = "/pool/vmup/" + backing
	}
	if w.MTime == nil {
		w.MTime = map[string]int64{}
	}
	w.MTime[pv] = time.Now().Add(-age).UnixNano()
}

// cached writes a file into the cache and returns its path.
func (s *pruneSetup) cached(name, content string) string {
	p := filepath.Join(s.home, "cache", name)
	if err := ensureDir(filepath.Dir(p)); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func (s *pruneSetup) journal(name string, edit func(j *Journal)) {
	paths := pathsFor(s.home, name)
	if err := ensureDir(paths.Dir); err != nil {
		s.t.Fatal(err)
	}
	j := &Journal{Name: name, Phase: Stopped, FailedIn: noPhase, FirstBootDone: true, User: "vmup",
		Network: "nat", Connect: "qemu:///system", Pool: "vmup"}
	edit(j)
	if err := writeJournal(paths, j); err != nil {
		s.t.Fatal(err)
	}
}

func (s *pruneSetup) prune(dryRun bool) int {
	o := defaultOptions()
	o.Connect, o.DryRun = "qemu:///system", dryRun
	env := Env{Runner: s.fake, Clock: realClock{}, Home: s.home, Out: newOutput(s.stderr, s.events, "")}
	return runPrune(env, o)
}

func (s *pruneSetup) has(vol string) bool { return s.fake.world.Volumes["vmup/"+vol] }

func (s *pruneSetup) deleted() []string {
	var vols []string
	for _, c := range s.fake.calls {
		if len(c) > 1 && c[1] == "vol-delete" {
			vols = append(vols, c[len(c)-1])
		}
	}
	return vols
}

const longAgo = 48 * time.Hour

func TestPruneKeepsABaseAnotherUsersOverlayIsBackedBy(t *testing.T) {
	s := newPruneSetup(t)
	base := "vmup-base-" + hex16("alice's image") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	// Alice's VM, in her own home: no journal of this user names it.
	s.vol("alice-web.qcow2", base, longAgo)
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	if !s.has(base) || !s.has(baseMark(base)) || !s.has("alice-web.qcow2") {
		t.Errorf("a base another user's overlay is backed by was touched; deleted %v\n%s", s.deleted(), s.stderr)
	}
}

func TestPruneRemovesAnUnreferencedBaseAndItsMark(t *testing.T) {
	s := newPruneSetup(t)
	base := "vmup-base-" + hex16("old image") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	orphanMark := baseMark("vmup-base-" + hex16("gone") + ".raw")
	s.vol(orphanMark, "", longAgo)
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	for _, v := range []string{base, baseMark(base), orphanMark} {
		if s.has(v) {
			t.Errorf("%s is still in the pool\n%s", v, s.stderr)
		}
		if !strings.Contains(s.stderr.String(), v) {
			t.Errorf("no line names the removed %s:\n%s", v, s.stderr)
		}
	}
	if !strings.Contains(s.stderr.String(), "freed") {
		t.Errorf("no summary with the bytes freed:\n%s", s.stderr)
	}
	var pruned int
	for _, ev := range s.events.names() {
		if strings.HasPrefix(ev, "pruned:") {
			pruned++
		}
	}
	if pruned != 3 {
		t.Errorf("%d pruned events, want 3 (base, mark, orphaned mark)", pruned)
	}
}

func TestPruneKeepsAFreshUnmarkedBaseItsUploadMayBeWriting(t *testing.T) {
	s := newPruneSetup(t)
	fresh := "vmup-base-" + hex16("uploading") + ".qcow2"
	s.vol(fresh, "", time.Minute) // another home's vmup: created, upload going on
	stale := "vmup-base-" + hex16("cut off") + ".qcow2"
	s.vol(stale, "", longAgo)
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	if !s.has(fresh) {
		t.Errorf("an unmarked base modified a minute ago was deleted\n%s", s.stderr)
	}
	if s.has(stale) {
		t.Errorf("an unmarked, unused base untouched for two days was kept\n%s", s.stderr)
	}
}

func TestPruneDryRunRemovesNothing(t *testing.T) {
	s := newPruneSetup(t)
	base := "vmup-base-" + hex16("old image") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	orphan := s.cached("0123456789abcdef-old.qcow2", "old image")
	part := s.cached("fedcba9876543210-new.qcow2.part", "half")
	if code := s.prune(true); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	if d := s.deleted(); len(d) > 0 {
		t.Errorf("dry run deleted volumes %v", d)
	}
	for _, p := range []string{orphan, part} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dry run removed %s: %v", p, err)
		}
	}
	for _, want := range []string{base, baseMark(base), filepath.Base(orphan), filepath.Base(part), "Would remove"} {
		if !strings.Contains(s.stderr.String(), want) {
			t.Errorf("dry run does not list %q:\n%s", want, s.stderr)
		}
	}
}

func TestPruneKeepsACachedDownloadAJournalNamesAndRemovesAnOrphan(t *testing.T) {
	s := newPruneSetup(t)
	used := s.cached("debian-12@sha512-00112233aabbccdd-debian-12-genericcloud-amd64.qcow2", "debian image")
	// The VM's base is no longer in the pool (say, deleted by hand): the journal still names it.
	s.journal("web", func(j *Journal) { j.BaseVolume = "vmup-base-" + hex16("debian image") + ".qcow2" })
	inPool := s.cached("00112233aabbccdd-ubuntu.img", "ubuntu image")
	base := "vmup-base-" + hex16("ubuntu image") + ".raw"
	s.vol(base, "", longAgo)
	s.vol("bob.qcow2", base, longAgo)
	orphan := s.cached("8899aabbccddeeff-old.qcow2", "old image")
	rememberHash(s.home, used, strings.Repeat("0", 64)) // a wrong memo must not doom it
	foreign := s.cached("notes.txt", "mine")
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	for _, p := range []string{used, inPool, foreign} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v\n%s", filepath.Base(p), err, s.stderr)
		}
	}
	if _, err := os.Stat(orphan); err == nil {
		t.Errorf("the orphaned download %s was kept\n%s", orphan, s.stderr)
	}
	memo, _ := os.ReadFile(filepath.Join(s.home, "cache", "hashes.json"))
	if strings.Contains(string(memo), filepath.Base(orphan)) {
		t.Errorf("hashes.json still remembers the removed file: %s", memo)
	}
}

func TestPruneNeverTouchesAVolumeNamedLikeABase(t *testing.T) {
	s := newPruneSetup(t)
	h := hex16("x")
	foreign := []string{
		"vmup-base-" + h[:12] + ".qcow2",
		"vmup-base-" + h + ".qcow2.old",
		"vmup-base-" + strings.ToUpper(h) + ".qcow2",
		"my-vmup-base-" + h + ".qcow2",
		"vmup-base-" + h + ".vmdk",
		"vmup-base-" + h + ".vmdk.complete",
		"vmup-base-" + h + ".qcow2.complete.bak",
	}
	for _, v := range foreign {
		s.vol(v, "", longAgo)
	}
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	if d := s.deleted(); len(d) > 0 {
		t.Errorf("prune deleted volumes vmup did not make: %v", d)
	}
}

func TestPruneKeepsAPartAnotherVmupDownloads(t *testing.T) {
	s := newPruneSetup(t)
	busy := s.cached("0011223344556677-debian.qcow2.part", "half")
	busyRec := s.cached("0011223344556677-debian.qcow2.part.json", `{"url":"http://x/debian.qcow2"}`)
	lock, _, err := tryLock(filepath.Join(s.home, "locks", "download-0011223344556677.lock"), "up")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	left := s.cached("8899aabbccddeeff-ubuntu.img.part", "cut off")
	leftRec := s.cached("8899aabbccddeeff-ubuntu.img.part.json", `{"url":"http://x/ubuntu.img"}`)
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	for _, p := range []string{busy, busyRec} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("a part being downloaded was removed: %v", err)
		}
	}
	for _, p := range []string{left, leftRec} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("an abandoned part %s was kept\n%s", filepath.Base(p), s.stderr)
		}
	}
}

func TestPruneKeepsBasesAndDownloadsWhileAVMIsBeingMade(t *testing.T) {
	s := newPruneSetup(t)
	base := "vmup-base-" + hex16("image") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	img := s.cached("0123456789abcdef-image.qcow2", "image")
	// An up between finding the base and building its overlay on it: its
	// journal does not name the base yet.
	s.journal("new", func(j *Journal) { j.Phase, j.FirstBootDone = Preparing, false })
	lock, _, err := tryLock(pathsFor(s.home, "new").Lock, "up")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	if code := s.prune(false); code != exitOK {
		t.Fatalf("exit %d: %s", code, s.stderr)
	}
	if !s.has(base) {
		t.Errorf("a base was deleted while VM new was being made\n%s", s.stderr)
	}
	if _, err := os.Stat(img); err != nil {
		t.Errorf("a download was removed while VM new was being made\n%s", s.stderr)
	}
}

func TestPruneRefusesAPoolThatIsNotThere(t *testing.T) {
	s := newPruneSetup(t)
	orphan := s.cached("8899aabbccddeeff-old.qcow2", "old image")
	delete(s.fake.world.Pools, "vmup")
	if code := s.prune(false); code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Errorf("a download was removed though the pool that decides it could not be read")
	}
}
