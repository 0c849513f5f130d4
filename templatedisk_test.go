package main

import (
	"slices"
	"strings"
	"testing"
)

// A VM on nat with --template boots the template's disk: an overlay on it,
// a normal boot with its own seed, no playbook, the identity over its own
// SSH (machine-id, host key, login key), then its own provisioned state.
// The template stays, held by the clone's journal.
func TestDiskCloneOnNAT(t *testing.T) {
	h := templateHarness(t)
	rec := h.makeTemplateVM()
	w := h.fake.world
	h.fake.calls = nil
	args := h.natUpArgs("--template", "-d")
	args[0] = "c1"
	if code := h.wait(h.up(args...)); code != 0 {
		t.Fatalf("up c1 --template on nat: exit %d\n%s", code, h.stderr)
	}
	if !h.has("template_by_disk") || !h.has("provisioned_from_template") {
		t.Errorf("events %v, want template_by_disk and provisioned_from_template", h.events.names())
	}
	if w.Identities != 1 {
		t.Errorf("identities given %d, want 1", w.Identities)
	}
	if b := w.Backing["vmup/c1.qcow2"]; b != "/pool/vmup/"+rec.DiskVolume {
		t.Errorf("c1's disk is backed by %q; want the template's disk", b)
	}
	var starts, playbooks, restores int
	for _, c := range h.calls() {
		switch {
		case slices.Equal(c, argv("virsh start c1")):
			starts++
		case c[0] == "ansible-playbook":
			playbooks++
		case len(c) > 1 && c[1] == "restore":
			restores++
		}
	}
	if starts != 1 || playbooks != 0 || restores != 0 {
		t.Errorf("c1: %d starts, %d playbooks, %d restores; want a boot and nothing else", starts, playbooks, restores)
	}
	j := h.journalOf("c1")
	if !j.FirstBootDone || j.Template != rec.Key || !j.TemplateByDisk || j.Provisioned == nil || j.Provisioned.Kind == "template" {
		t.Errorf("c1's journal: done %v, template %q by disk %v, provisioned %+v", j.FirstBootDone, j.Template, j.TemplateByDisk, j.Provisioned)
	}
	if kh := readGuest(t, pathsFor(h.env.Home, "c1").Dir, "known_hosts"); !strings.Contains(kh, "vmup-c1 ssh-ed25519 ") {
		t.Errorf("known_hosts: %q", kh)
	}
	// No second template: the recipe has one.
	if infos, _ := listTemplates(h.env.Home); len(infos) != 1 {
		t.Errorf("%d templates, want 1", len(infos))
	}
}
