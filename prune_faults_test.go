package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Another home's `up` finds the base complete and builds its overlay on it
// after prune listed the pool: prune must see it before it deletes.
func TestPruneKeepsABaseAnotherHomeBuildsOnWhilePruneWalks(t *testing.T) {
	s := newPruneSetup(t)
	base := "vmup-base-" + hex16("debian") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	fired := false
	s.fake.onCall = func(args []string) {
		if fired || len(args) < 2 || args[1] != "vol-dumpxml" {
			return
		}
		fired = true
		s.fake.mu.Lock()
		_, e, code := s.fake.world.virsh(argv("vol-create-as vmup web.qcow2 4294967296 --format qcow2 --backing-vol "+
			base+" --backing-vol-format qcow2"), nil)
		s.fake.mu.Unlock()
		if code != 0 {
			t.Errorf("the other home's overlay: %s", e)
		}
	}
	if code := s.prune(false); code != exitOK {
		t.Fatalf("prune: exit %d\n%s", code, s.stderr)
	}
	if !s.has(base) || !s.has(baseMark(base)) {
		t.Errorf("prune deleted %s or its mark; web.qcow2 of another home is backed by it; deleted %v\n%s", base, s.deleted(), s.stderr)
	}
}

// prune listed the pool before this `up` built its overlay on a cached base,
// and deletes the base after: up must not keep a VM on a base that is gone.
func TestUpDoesNotKeepAnOverlayOnABasePrunedUnderIt(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	base := "vmup-base-" + h.imgHash + ".qcow2"
	for _, v := range []string{base, baseMark(base)} {
		h.fake.world.Volumes["vmup/"+v] = true
	}
	h.fake.world.Content["vmup/"+base] = []byte("fake image")
	overlay, pruned := false, false
	h.fake.onCall = func(args []string) {
		if len(args) < 3 || args[0] != "virsh" {
			return
		}
		switch {
		case args[1] == "vol-create-as" && args[3] == "v1.qcow2" && !overlay:
			overlay = true
			// prune has announced itself and listed the pool (no overlay yet).
			h.fake.mu.Lock()
			h.fake.world.Volumes["vmup/"+basePruning(base)] = true
			h.fake.mu.Unlock()
		case overlay && !pruned:
			pruned = true // the next call: prune deletes the base, mark and token
			h.fake.mu.Lock()
			for _, v := range []string{base, baseMark(base), basePruning(base)} {
				delete(h.fake.world.Volumes, "vmup/"+v)
			}
			h.fake.mu.Unlock()
		}
	}
	code := h.wait(h.up(h.upArgs("-d")...))
	w := h.fake.world
	backing := w.Backing["vmup/v1.qcow2"]
	if code != 0 || !w.Volumes["vmup/"+base] || !w.Volumes["vmup/"+baseMark(base)] || backing != "/pool/vmup/"+base {
		t.Errorf("up: exit %d; base there %v, mark there %v, v1.qcow2 backed by %q\n%s",
			code, w.Volumes["vmup/"+base], w.Volumes["vmup/"+baseMark(base)], backing, h.stderr)
	}
}

// A prune deciding on the base (its token in the pool): up waits for it to
// finish rather than reuse, delete or upload the base meanwhile.
func TestUpWaitsWhileAPruneDecidesOnItsBase(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	base := "vmup-base-" + h.imgHash + ".qcow2"
	for _, v := range []string{base, baseMark(base), basePruning(base)} {
		h.fake.world.Volumes["vmup/"+v] = true
	}
	h.fake.world.Content["vmup/"+base] = []byte("fake image")
	polls := 0
	h.fake.onCall = func(args []string) {
		if len(args) > 4 && args[1] == "vol-info" && args[4] == basePruning(base) {
			if polls++; polls == 3 { // prune kept it: the token goes
				h.fake.mu.Lock()
				delete(h.fake.world.Volumes, "vmup/"+basePruning(base))
				h.fake.mu.Unlock()
			}
		}
	}
	defer func(d time.Duration) { pruneTokenPoll = d }(pruneTokenPoll)
	pruneTokenPoll = time.Millisecond
	code := h.wait(h.up(h.upArgs("-d")...))
	if code != 0 || polls < 3 || h.fake.world.Backing["vmup/v1.qcow2"] != "/pool/vmup/"+base {
		t.Errorf("up: exit %d after %d looks at the token\n%s", code, polls, h.stderr)
	}
	// A token that stays (a prune killed mid-way): a clear error, nothing made.
	h2 := newHarness(t)
	h2.fake.world.Pools["vmup"] = true
	for _, v := range []string{base, baseMark(base), basePruning(base)} {
		h2.fake.world.Volumes["vmup/"+v] = true
	}
	defer func(d time.Duration) { pruneTokenWait = d }(pruneTokenWait)
	pruneTokenWait = 20 * time.Millisecond
	code = h2.wait(h2.up(h2.upArgs("-d")...))
	if code != exitFailed || !strings.Contains(h2.stderr.String(), basePruning(base)) || h2.fake.world.Volumes["vmup/v1.qcow2"] {
		t.Errorf("up with a token that stays: exit %d\n%s", code, h2.stderr)
	}
}

// A VM named like a base: its disk matches the base pattern.
func TestPruneKeepsTheDiskOfAVMNamedLikeABase(t *testing.T) {
	s := newPruneSetup(t)
	name := "vmup-base-0123456789abcdef"
	base := "vmup-base-" + hex16("debian") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	s.vol(name+".qcow2", base, 2*time.Hour)
	s.journal(name, func(j *Journal) {
		j.BaseVolume = base
		j.Volumes = []string{name + ".qcow2"}
	})
	// Another home's VM of that kind: no journal here, only its backing tells.
	other := "vmup-base-fedcba9876543210"
	s.vol(other+".qcow2", base, 2*time.Hour)
	if code := s.prune(false); code != exitOK {
		t.Fatalf("prune: exit %d\n%s", code, s.stderr)
	}
	if !s.has(name+".qcow2") || !s.has(other+".qcow2") {
		t.Errorf("prune deleted a VM's disk named like a base; deleted %v\n%s", s.deleted(), s.stderr)
	}
}

func TestUpRefusesAVMNameThatLooksLikeABase(t *testing.T) {
	h := newHarness(t)
	code := h.wait(h.up("vmup-base-0123456789abcdef", "--image", h.image, "--playbook", h.play, "-d"))
	if code != exitUsage || !strings.Contains(h.stderr.String(), "vmup-base-") || len(h.fake.calls) > 0 {
		t.Errorf("up vmup-base-0123456789abcdef: exit %d, calls %v\n%s", code, h.fake.calls, h.stderr)
	}
}

// A fresh `up` resolved a cached download and has no state dir yet.
func TestPruneKeepsTheDownloadAFreshUpResolved(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	u := "http://127.0.0.1:9/cloud.qcow2"
	cached := filepath.Join(h.env.Home, "cache", urlKey(u)+"-cloud.qcow2")
	if err := ensureDir(filepath.Dir(cached)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cached, []byte("fake image"), 0o600)
	var pruneErr bytes.Buffer
	fired := false
	h.fake.onCall = func(args []string) {
		if fired || args[0] != "virsh" || len(args) < 2 || args[1] != "vol-info" {
			return
		}
		fired = true // up checks its volumes: prune runs now
		env := h.env
		env.Out = newOutput(&pruneErr, nil, "")
		runPrune(env, defaultOptions())
	}
	code := h.wait(h.up("v1", "--image", u, "--playbook", h.play, "--network", "user", "-d"))
	if _, err := os.Stat(cached); err != nil || code != 0 {
		t.Errorf("prune removed %s while `vmup up v1` used it; up exit %d\nprune: %s", filepath.Base(cached), code, pruneErr.String())
	}
	if !strings.Contains(pruneErr.String(), "in use") {
		t.Errorf("prune did not say why it kept the download:\n%s", pruneErr.String())
	}
}

// Finished downloads whose URL ends in ".part" or ".part.json".
func TestPruneKeepsAFinishedDownloadNamedLikeAPart(t *testing.T) {
	s := newPruneSetup(t)
	var files []string
	for _, u := range []string{"http://mirror/disk.part", "http://mirror/disk.part.json"} {
		content := "the image behind " + u
		files = append(files, s.cached(urlKey(u)+"-"+urlBase(u), content))
		base := "vmup-base-" + hex16(content) + ".qcow2"
		s.vol(base, "", longAgo)
		s.vol(baseMark(base), "", longAgo)
		vm := strings.ReplaceAll(urlBase(u), ".", "-")
		s.vol(vm+".qcow2", base, longAgo)
		s.journal(vm, func(j *Journal) { j.BaseVolume = base })
	}
	// A real partial of another URL, left by an interrupted run: it goes.
	pu := "http://mirror/other.qcow2"
	part := s.cached(urlKey(pu)+"-other.qcow2.part", "half")
	s.cached(urlKey(pu)+"-other.qcow2.part.json", `{"url":"`+pu+`"}`)
	if code := s.prune(false); code != exitOK {
		t.Fatalf("prune: exit %d\n%s", code, s.stderr)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("prune removed %s, a finished download a VM's base is made of\n%s", filepath.Base(f), s.stderr)
		}
	}
	if _, err := os.Stat(part); err == nil {
		t.Errorf("prune kept the partial %s\n%s", filepath.Base(part), s.stderr)
	}
}

// A token left by a killed prune goes after an hour; a fresh one is another
// prune's, and its base is not touched meanwhile.
func TestPruneRemovesOnlyTheTokenOfAKilledPrune(t *testing.T) {
	s := newPruneSetup(t)
	stale := "vmup-base-" + hex16("old") + ".qcow2"
	busy := "vmup-base-" + hex16("busy") + ".qcow2"
	for _, b := range []string{stale, busy} {
		s.vol(b, "", longAgo)
		s.vol(baseMark(b), "", longAgo)
		s.vol(b+"-user.qcow2", b, longAgo) // in use: the bases stay
	}
	s.vol(basePruning(stale), "", 2*time.Hour)
	s.vol(basePruning(busy), "", time.Minute)
	delete(s.fake.world.Volumes, "vmup/"+busy+"-user.qcow2")
	if code := s.prune(false); code != exitOK {
		t.Fatalf("prune: exit %d\n%s", code, s.stderr)
	}
	if s.has(basePruning(stale)) || !s.has(basePruning(busy)) || !s.has(busy) {
		t.Errorf("tokens: stale there %v, fresh there %v; base under the fresh one there %v\n%s",
			s.has(basePruning(stale)), s.has(basePruning(busy)), s.has(busy), s.stderr)
	}
}

// A Ctrl+C while prune decides on a base under its token: the token goes with
// it, or every up of that base would wait for it and then fail.
func TestPruneInterruptedRemovesItsToken(t *testing.T) {
	s := newPruneSetup(t)
	base := "vmup-base-" + hex16("debian") + ".qcow2"
	s.vol(base, "", longAgo)
	s.vol(baseMark(base), "", longAgo)
	sigs := make(chan os.Signal, 1)
	out := newOutput(s.stderr, s.events, "")
	env := Env{Runner: s.fake, Clock: realClock{}, Home: s.home, Out: out}
	env.Abort = newAbortGuard(sigs, out, abortExit)
	interrupted := false
	s.fake.onCall = func(args []string) {
		if !interrupted && s.has(basePruning(base)) && len(args) > 1 && args[1] == "vol-dumpxml" {
			interrupted = true
			sigs <- syscall.SIGINT
			<-env.Abort.ctx.Done()
		}
	}
	o := defaultOptions()
	o.Connect = "qemu:///system"
	code := env.Abort.run(func() int { return runPrune(env, o) })
	if !interrupted {
		t.Fatalf("prune never listed the pool under its token; calls %v", s.fake.calls)
	}
	if code != exitSIGINT {
		t.Errorf("prune interrupted: exit %d, want %d", code, exitSIGINT)
	}
	if s.has(basePruning(base)) {
		t.Errorf("prune interrupted under its token left %s: every up of %s would wait for it", basePruning(base), base)
	}
	if !s.has(base) {
		t.Errorf("prune interrupted before it decided deleted %s", base)
	}
}
