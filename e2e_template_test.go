//go:build e2e

package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// sameHome is another VM of e's home (templates are a home's).
func (e *e2e) sameHome(name string) *e2e {
	o := &e2e{t: e.t, home: e.home, imageDir: e.imageDir, name: name}
	e.t.Cleanup(func() {
		o.vmup(5*time.Minute, "destroy", name)
		o.checkNothingLeft()
	})
	return o
}

// templateArgs is up -d --template --json of the suite's image with the
// playbook at path, as a VM of 1 GiB (the figure is for 1 GiB).
func (e *e2e) templateArgs(playbook string) []string {
	args := e.upArgs("marker.yml", "-d", "--template", "--json")
	for i := range args {
		if args[i] == "--playbook" {
			args[i+1] = playbook
		}
	}
	return args
}

func eventNamed(evs []jsonEvent, name string) (jsonEvent, bool) {
	for _, ev := range evs {
		if ev.Event == name {
			return ev, true
		}
	}
	return jsonEvent{}, false
}

func templateDirs(t *testing.T, home string) []string {
	entries, _ := os.ReadDir(filepath.Join(home, "templates"))
	var keys []string
	for _, ent := range entries {
		if ent.IsDir() {
			keys = append(keys, ent.Name())
		}
	}
	return keys
}

// templateVolumes lists the pool's template disks the suite made: not those
// there before its first VM (a user's own templates, another run's).
func templateVolumes() []string {
	before := templateVolumesBefore()
	var out []string
	for _, vol := range allTemplateVolumes() {
		if !slices.Contains(before, vol) {
			out = append(out, vol)
		}
	}
	return out
}

func allTemplateVolumes() []string {
	vols, _ := virsh("vol-list", "vmup")
	var out []string
	for _, line := range strings.Split(vols, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "vmup-tmpl-") {
			out = append(out, f[0])
		}
	}
	return out
}

// templateVolumesBefore is read once, when the suite's first VM is made.
var templateVolumesBefore = sync.OnceValue(allTemplateVolumes)

// Issue 17: a provisioned template, a clone of it in seconds with its own
// identity, a changed playbook making a new one, and prune.
func TestE2ETemplate(t *testing.T) {
	a := newE2E(t, "e2e-tpla")
	// Runs before the VMs' own cleanups: whatever failed, no VM and then no
	// template of this home is left.
	t.Cleanup(func() {
		for _, name := range []string{"e2e-tpla", "e2e-tplb", "e2e-tplc"} {
			a.vmup(5*time.Minute, "destroy", name)
		}
		a.vmup(time.Minute, "prune", "--keep-templates", "0s")
		if vols := templateVolumes(); len(vols) != 0 {
			t.Errorf("template volumes left: %v", vols)
		}
	})
	dir := t.TempDir()
	playbook := filepath.Join(dir, "site.yml")
	orig, err := os.ReadFile("testdata/marker.yml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(playbook, orig, 0o644)

	// a: a full first boot, and the template made.
	start := time.Now()
	out, _, code := a.vmup(10*time.Minute, a.templateArgs(playbook)...)
	if code != 0 {
		t.Fatalf("up a --template: exit %d", code)
	}
	made, ok := eventNamed(jsonEvents(out), "template_made")
	if !ok || made.Template == "" || made.Bytes == nil {
		t.Fatalf("no template_made event with a key and size:\n%s", out)
	}
	t.Logf("FIGURE first boot with the template made: %.1f s; template made in %.1f s, %d MiB (memory and disk)",
		time.Since(start).Seconds(), *made.DurationS, *made.Bytes>>20)
	if keys := templateDirs(t, a.home); len(keys) != 1 || keys[0] != made.Template {
		t.Fatalf("templates on disk: %v, made %s", keys, made.Template)
	}

	// b: the same recipe, cloned: no boot, no playbook, its own identity.
	b := a.sameHome("e2e-tplb")
	start = time.Now()
	out, _, code = b.vmup(5*time.Minute, b.templateArgs(playbook)...)
	ready := time.Since(start)
	if code != 0 {
		t.Fatalf("up b --template: exit %d", code)
	}
	evs := jsonEvents(out)
	cloned, ok := eventNamed(evs, "provisioned_from_template")
	if !ok || cloned.Template != made.Template {
		t.Fatalf("b was not provisioned from template %s:\n%s", made.Template, out)
	}
	for _, ev := range evs {
		if ev.Event == "step_started" && (strings.Contains(ev.Message, "Booting") || strings.Contains(ev.Message, "Provisioning") ||
			strings.Contains(ev.Message, "cloud-init")) {
			t.Errorf("a clone went through %q", ev.Message)
		}
	}
	t.Logf("FIGURE clone b to Ready: %.1f s", ready.Seconds())
	ssh := func(v *e2e, cmd ...string) string {
		return strings.TrimSpace(v.must(time.Minute, append([]string{"ssh", v.name, "--"}, cmd...)...))
	}
	if got := ssh(b, "wc", "-l", "<", "/var/tmp/vmup-runs"); got != "1" {
		t.Errorf("b's playbook counter: %q, want 1", got)
	}
	if got := ssh(b, "cat", "/var/tmp/vmup-marker"); !strings.Contains(got, "provisioned by vmup") {
		t.Errorf("b's marker: %q", got)
	}
	if got := ssh(b, "hostname"); got != "e2e-tplb" {
		t.Errorf("b's hostname: %q", got)
	}
	if ma, mb := ssh(a, "cat", "/etc/machine-id"), ssh(b, "cat", "/etc/machine-id"); ma == mb || len(mb) != 32 {
		t.Errorf("machine-ids: a %q, b %q", ma, mb)
	}
	ka, _ := os.ReadFile(filepath.Join(a.home, "vms", a.name, "known_hosts"))
	kb, _ := os.ReadFile(filepath.Join(b.home, "vms", b.name, "known_hosts"))
	if f, g := strings.Fields(string(ka)), strings.Fields(string(kb)); len(f) != 3 || len(g) != 3 || f[2] == g[2] {
		t.Errorf("host keys pinned: a %q, b %q", ka, kb)
	}
	if got := ssh(b, "sh", "-c", "'ls /etc/ssh/ssh_host_*_key | wc -l; cat /var/lib/cloud/data/instance-id'"); !strings.Contains(got, "e2e-tplb") {
		t.Errorf("b's host keys and cloud-init instance: %q", got)
	}
	if a.domState() != "running" || b.domState() != "running" {
		t.Errorf("a %s, b %s: both should run", a.domState(), b.domState())
	}
	// b's identity survives its next boot: cloud-init takes it for the same
	// instance (its host key stays the one pinned).
	b.must(3*time.Minute, "down", b.name)
	b.must(5*time.Minute, "up", b.name, "-d")
	if got := ssh(b, "hostname"); got != "e2e-tplb" {
		t.Errorf("b's hostname after a reboot: %q", got)
	}
	// reset takes b back to its template's state, as b.
	ssh(b, "touch", "/var/tmp/after-clone")
	b.must(5*time.Minute, "reset", b.name)
	if got := ssh(b, "sh", "-c", "'hostname; test -e /var/tmp/after-clone && echo kept; wc -l < /var/tmp/vmup-runs'"); got != "e2e-tplb\n1" {
		t.Errorf("b after its reset: %q, want its name, no file written after the clone, one playbook run", got)
	}

	// A changed playbook: a new key, a full first boot, a new template.
	os.WriteFile(playbook, append(orig, []byte("    - name: changed\n      ansible.builtin.command: 'true'\n")...), 0o644)
	c := a.sameHome("e2e-tplc")
	out, _, code = c.vmup(10*time.Minute, c.templateArgs(playbook)...)
	if code != 0 {
		t.Fatalf("up c --template: exit %d", code)
	}
	newer, ok := eventNamed(jsonEvents(out), "template_made")
	if !ok || newer.Template == made.Template {
		t.Fatalf("c made no new template:\n%s", out)
	}
	if keys := templateDirs(t, a.home); len(keys) != 2 {
		t.Errorf("templates: %v, want 2", keys)
	}
	// b is backed by the old template: prune keeps it.
	a.must(time.Minute, "prune")
	if keys := templateDirs(t, a.home); len(keys) != 2 {
		t.Errorf("templates after a prune while b is backed by the old one: %v", keys)
	}
	b.must(5*time.Minute, "destroy", b.name)
	a.must(time.Minute, "prune")
	if keys := templateDirs(t, a.home); len(keys) != 1 || keys[0] != newer.Template {
		t.Errorf("templates after b went: %v, want only %s", keys, newer.Template)
	}
	a.must(5*time.Minute, "destroy", a.name)
	c.must(5*time.Minute, "destroy", c.name)
	a.must(time.Minute, "prune", "--keep-templates", "0s")
	if keys := templateDirs(t, a.home); len(keys) != 0 {
		t.Errorf("templates after the final prune: %v", keys)
	}
	if vols := templateVolumes(); len(vols) != 0 {
		t.Errorf("template volumes left: %v", vols)
	}
}
