//go:build e2e

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// natArgs is up -d --template --json of the suite's image on libvirt's NAT
// network (no --restrict-network: that is the user network's).
func (e *e2e) natTemplateArgs() []string {
	var args []string
	for _, a := range e.templateArgs(filepath.Join("testdata", "marker.yml")) {
		switch a {
		case "--restrict-network":
			continue
		case "user":
			a = "nat"
		}
		args = append(args, a)
	}
	return args
}

// Issue 17, item 4: on nat a memory state would bring its template's MAC
// and address, so a clone boots the template's disk instead, says so, runs
// no playbook, and is its own machine: hostname, machine-id, host key,
// login key alone, its own address; both run at once.
func TestNATTemplateByDisk(t *testing.T) {
	ns := os.Getenv("VMUP_NAT_NETNS")
	if ns == "" {
		t.Fatal("VMUP_NAT_NETNS is not set: run the suite with `make e2e`")
	}
	if out, err := virsh("net-start", "default"); err != nil && !strings.Contains(out, "already active") {
		t.Fatalf("net-start default: %v %s", err, out)
	}
	t.Cleanup(func() { virsh("net-destroy", "default") })
	a := newE2E(t, "e2e-nata")
	a.netns = ns
	t.Cleanup(func() {
		a.vmup(time.Minute, "prune", "--keep-templates", "0s")
		if keys := templateDirs(t, a.home); len(keys) != 0 {
			t.Errorf("templates left after the last prune: %v", keys)
		}
		if vols := templateVolumes(); len(vols) != 0 {
			t.Errorf("template volumes left: %v", vols)
		}
	})
	start := time.Now()
	out, _, code := a.vmup(10*time.Minute, a.natTemplateArgs()...)
	if code != 0 {
		t.Fatalf("up a --template on nat: exit %d", code)
	}
	made, ok := eventNamed(jsonEvents(out), "template_made")
	if !ok {
		t.Fatalf("no template made on nat:\n%s", out)
	}
	t.Logf("FIGURE first boot on nat with the template made: %.1f s", time.Since(start).Seconds())

	b := a.sameHome("e2e-natb")
	b.netns = ns
	start = time.Now()
	out, _, code = b.vmup(10*time.Minute, b.natTemplateArgs()...)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("up b --template on nat: exit %d", code)
	}
	evs := jsonEvents(out)
	if _, ok := eventNamed(evs, "template_by_disk"); !ok {
		t.Errorf("b did not say it boots the template's disk:\n%s", out)
	}
	if ev, ok := eventNamed(evs, "provisioned_from_template"); !ok || ev.Template != made.Template {
		t.Fatalf("b was not provisioned from template %s:\n%s", made.Template, out)
	}
	t.Logf("FIGURE clone by disk on nat to Ready: %.1f s", took.Seconds())
	ssh := func(v *e2e, cmd ...string) string {
		return strings.TrimSpace(v.must(time.Minute, append([]string{"ssh", v.name, "--"}, cmd...)...))
	}
	if got := ssh(b, "wc", "-l", "<", "/var/tmp/vmup-runs"); got != "1" {
		t.Errorf("b's playbook counter: %q, want 1 (the template's run alone)", got)
	}
	if got := ssh(b, "hostname"); got != "e2e-natb" {
		t.Errorf("b's hostname: %q", got)
	}
	if ma, mb := ssh(a, "cat", "/etc/machine-id"), ssh(b, "cat", "/etc/machine-id"); ma == mb || len(mb) != 32 {
		t.Errorf("machine-ids: a %q, b %q", ma, mb)
	}
	if got := ssh(b, "grep", "-c", "ssh-", "~/.ssh/authorized_keys"); got != "1" {
		t.Errorf("b's authorized_keys hold %s keys, want its own alone", got)
	}
	ka, _ := os.ReadFile(filepath.Join(a.home, "vms", a.name, "known_hosts"))
	kb, _ := os.ReadFile(filepath.Join(b.home, "vms", b.name, "known_hosts"))
	if f, g := strings.Fields(string(ka)), strings.Fields(string(kb)); len(f) != 3 || len(g) != 3 || f[2] == g[2] {
		t.Errorf("host keys pinned: a %q, b %q", ka, kb)
	}
	sa, _, _ := a.vmup(time.Minute, "status", a.name, "--json")
	sb, _, _ := b.vmup(time.Minute, "status", b.name, "--json")
	va, oka := statusVM(sa)
	vb, okb := statusVM(sb)
	if !oka || !okb || va.SSH == vb.SSH || !strings.HasPrefix(vb.SSH, "192.168.122.") {
		t.Errorf("addresses: a %q, b %q; want two leases", va.SSH, vb.SSH)
	}
	if a.domState() != "running" || b.domState() != "running" {
		t.Errorf("a %s, b %s: both should run", a.domState(), b.domState())
	}
	// Its provisioned state is its own: a reset reverts to it, as b.
	ssh(b, "touch", "/var/tmp/after-clone")
	b.must(5*time.Minute, "reset", b.name)
	if got := ssh(b, "sh", "-c", "'hostname; test -e /var/tmp/after-clone && echo kept'"); got != "e2e-natb" {
		t.Errorf("b after reset: %q, want its hostname and no file written after the clone", got)
	}
	b.must(5*time.Minute, "destroy", b.name)
	a.must(5*time.Minute, "destroy", a.name)
}
