package main

import (
	"testing"
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
