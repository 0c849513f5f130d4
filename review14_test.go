package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// prune (of another home) deletes the cached base, its mark and its token
// after this `up` found the base complete and before it made its overlay:
// the overlay cannot be made on a base that is gone. README: the up "deletes
// its disk and makes the base again" — it must not fail.
func TestUpMakesTheBaseAgainWhenPruneDeletesItBeforeTheOverlay(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	base := "vmup-base-" + h.imgHash + ".qcow2"
	for _, v := range []string{base, baseMark(base)} {
		h.fake.world.Volumes["vmup/"+v] = true
	}
	h.fake.world.Content["vmup/"+base] = []byte("fake image")
	pruned := false
	h.fake.onCall = func(args []string) {
		if !pruned && len(args) > 3 && args[0] == "virsh" && args[1] == "vol-create-as" && args[3] == "v1.qcow2" {
			pruned = true // prune P0-P4 ran between ensureBase and this call
			h.fake.mu.Lock()
			for _, v := range []string{base, baseMark(base)} {
				delete(h.fake.world.Volumes, "vmup/"+v)
			}
			h.fake.mu.Unlock()
		}
	}
	code := h.wait(h.up(h.upArgs("-d")...))
	w := h.fake.world
	if !pruned {
		t.Fatalf("up never made its overlay; calls %v", h.fake.calls)
	}
	if code != 0 || !w.Volumes["vmup/"+base] || !w.Volumes["vmup/"+baseMark(base)] || w.Backing["vmup/v1.qcow2"] != "/pool/vmup/"+base {
		t.Errorf("up: exit %d; base there %v, mark there %v, v1.qcow2 backed by %q\n%s",
			code, w.Volumes["vmup/"+base], w.Volumes["vmup/"+baseMark(base)], w.Backing["vmup/v1.qcow2"], h.stderr)
	}
}

// A Ctrl+C while prune decides on a base under its token, with a libvirt
// slow to answer (its vol-delete of the token takes longer than the abort
// guard's 0.5 s): vmup must not exit before the token is gone, or every up
// of that base of any home waits a minute and fails, for an hour.
func TestPruneInterruptedWithASlowLibvirtRemovesItsTokenBeforeExit(t *testing.T) {
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
		if len(args) > 4 && args[1] == "vol-delete" && args[4] == basePruning(base) {
			time.Sleep(time.Second) // libvirtd busy
		}
		if !interrupted && s.has(basePruning(base)) && len(args) > 1 && args[1] == "vol-dumpxml" {
			interrupted = true
			sigs <- syscall.SIGINT
			<-env.Abort.ctx.Done()
		}
	}
	o := defaultOptions()
	o.Connect = "qemu:///system"
	code := env.Abort.run(func() int { return runPrune(env, o) })
	// vmup exits here: what prune has not done by now is never done.
	s.fake.mu.Lock()
	left := s.fake.world.Volumes["vmup/"+basePruning(base)]
	s.fake.mu.Unlock()
	if !interrupted {
		t.Fatalf("prune never listed the pool under its token")
	}
	if code != exitSIGINT || left {
		t.Errorf("prune interrupted: exit %d, token %s left at exit: %v", code, basePruning(base), left)
	}
}

// A run's resolved download is held (shared flock) until its base volume
// exists. Another vmup pinning the same URL to the server's new file
// (`--image URL --image-sha256 NEW`) must not replace the held copy under
// it: the run built its base's name from the old bytes and would upload the
// new ones under it (and fail), or refuse its own pin.
func TestPinnedRefetchDoesNotReplaceACopyARunHolds(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	s := newPinnedURLServer(t, []byte("new image"))
	u := s.srv.URL + "/img.qcow2"
	cached := filepath.Join(h.env.Home, "cache", urlKey(u)+"-img.qcow2")
	ensureDir(filepath.Dir(cached))
	os.WriteFile(cached, []byte("old image"), 0o600)
	refetched := make(chan error, 1)
	fired := false
	h.fake.onInspect = func() {
		if fired {
			return
		}
		fired = true
		// v1 has hashed the old copy; meanwhile another terminal pins the new one.
		go func() {
			_, err := fetchURL(context.Background(), nil, h.env.Home, u, cached,
				checksum{Alg: "sha256", Hex: hexSHA256([]byte("new image")), What: "--image-sha256"})
			refetched <- err
		}()
		select {
		case err := <-refetched:
			refetched <- err
		case <-time.After(500 * time.Millisecond):
		}
	}
	code := h.wait(h.up("v1", "--image", u, "--domain-type", "qemu", "--network", "user", "--no-provision", "-d"))
	base := "vmup-base-" + hexSHA256([]byte("old image"))[:16] + ".qcow2"
	if code != 0 || string(h.fake.world.Content["vmup/"+base]) != "old image" {
		t.Errorf("v1 (which held the old copy): exit %d, base %s holds %q\n%s",
			code, base, h.fake.world.Content["vmup/"+base], h.stderr)
	}
	if err := <-refetched; err != nil {
		t.Errorf("the pinned refetch: %v", err)
	}
	if got, _ := os.ReadFile(cached); string(got) != "new image" {
		t.Errorf("after v1 let go, the cache holds %q; want the pinned new download", got)
	}
}

// `down --force` means at once, also while the provisioned state is kept: no
// ACPI shutdown that a guest may ignore for the whole --shutdown-timeout.
func TestDownForceWhileKeepingForcesOffAtOnce(t *testing.T) {
	h := newHarness(t)
	h.fake.world.ShutdownIgnored = true
	fired := false
	h.fake.onCall = func(args []string) {
		if fired || len(args) < 2 || args[1] != "snapshot-create-as" {
			return
		}
		fired = true
		h.sigs <- sigForceStop
		h.events.waitFor(t, "force_off", "")
	}
	code := h.wait(h.up(h.upArgs("--shutdown-timeout", "3s")...))
	if !fired {
		t.Fatalf("setup: no snapshot was taken")
	}
	shutdown := false
	for _, c := range h.fake.recorded() {
		if len(c) > 1 && c[0] == "virsh" && c[1] == "shutdown" {
			shutdown = true
		}
	}
	if shutdown || code != exitOK || h.fake.world.Domains["v1"] != "shut off" {
		t.Errorf("down --force while keeping: ACPI shutdown asked %v, exit %d, domain %s\n%s",
			shutdown, code, h.fake.world.Domains["v1"], h.stderr)
	}
}
