package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Where a VM lives, who logs in and how it boots are fixed when it is made:
// another value is an error naming the flag, before anything runs.
func TestFixedSettingsCannotChange(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	kernel := filepath.Join(h.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("k"), 0o644)
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--pool", "other"}, "--pool"},
		{[]string{"--user", "admin"}, "--user"},
		{[]string{"--connect", "qemu:///session"}, "--connect"},
		{[]string{"--domain-type", "kvm"}, "--domain-type"},
		{[]string{"--kernel", kernel}, "--kernel"},
		{[]string{"--kernel", kernel, "--initrd", kernel}, "--kernel"},
		{[]string{"--firmware", "uefi"}, "--firmware"},
	} {
		h.fake.calls = nil
		h.stderr.Reset()
		if code := h.wait(h.up(append([]string{"v1", "-d"}, c.args...)...)); code != exitUsage {
			t.Errorf("%v: exit %d, want 2\n%s", c.args, code, h.stderr)
		}
		if !strings.Contains(h.stderr.String(), "vmup: error: "+c.flag+" cannot change") {
			t.Errorf("%v: the error does not name %s:\n%s", c.args, c.flag, h.stderr)
		}
		if len(h.calls()) != 0 {
			t.Errorf("%v: ran %v", c.args, h.calls())
		}
	}
	// vmup.json's keys count as set.
	t.Chdir(t.TempDir())
	os.WriteFile(configFile, []byte(`{"pool": "other"}`), 0o600)
	h.stderr.Reset()
	if code := h.wait(h.up("v1", "-d")); code != exitUsage || !strings.Contains(h.stderr.String(), "--pool cannot change") {
		t.Errorf("pool from vmup.json: exit %d, want 2\n%s", code, h.stderr)
	}
	// The same values are no change.
	os.Remove(configFile)
	h.stderr.Reset()
	if code := h.wait(h.up("v1", "-d", "--pool", "vmup", "--user", "vmup", "--domain-type", "qemu", "--connect", h.journal().Connect)); code != 0 {
		t.Errorf("same settings: exit %d, want 0\n%s", code, h.stderr)
	}
	if j := h.journal(); j.Pool != "vmup" || j.User != "vmup" {
		t.Errorf("journal pool %q user %q", j.Pool, j.User)
	}
}

// --network applies to a shut-off VM by redefinition: to nat the address
// comes from the lease, to user it gets a loopback SSH port. A running VM refuses.
func TestNetworkChangeAppliedWhenShutOff(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	xml := func() string {
		data, _ := os.ReadFile(filepath.Join(h.env.Home, "vms", "v1", "domain.xml"))
		return string(data)
	}

	h.stderr.Reset()
	h.fake.calls = nil
	if code := h.wait(h.up("v1", "-d", "--network", "nat")); code != exitUsage || !strings.Contains(h.stderr.String(), "is running with other settings") {
		t.Errorf("network change of a running VM: exit %d, want 2\n%s", code, h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && c[1] == "define" {
			t.Errorf("a running VM was redefined")
		}
	}

	h.fake.world.Domains["v1"] = "shut off"
	if code := h.wait(h.up("v1", "-d", "--network", "nat")); code != 0 {
		t.Fatalf("to nat: exit %d\n%s", code, h.stderr)
	}
	if x := xml(); !strings.Contains(x, `<source network="default"></source>`) || strings.Contains(x, "hostfwd") {
		t.Errorf("to nat: domain XML:\n%s", x)
	}
	if j := h.journal(); j.Network != "nat" || j.SSHHost != "127.0.0.1" || j.SSHPort != 22 {
		t.Errorf("to nat: journal network %s endpoint %s:%d, want nat at the lease's address, port 22", j.Network, j.SSHHost, j.SSHPort)
	}

	// The case: both flags on a NAT VM were ignored while the journal said restricted.
	h.fake.world.Domains["v1"] = "shut off"
	if code := h.wait(h.up("v1", "-d", "--network", "user", "--restrict-network")); code != 0 {
		t.Fatalf("to user: exit %d\n%s", code, h.stderr)
	}
	j := h.journal()
	if j.Network != "user" || !j.Restrict || j.SSHHost != "127.0.0.1" || j.SSHPort == 0 || j.SSHPort == 22 {
		t.Errorf("to user: journal %+v", j)
	}
	if x := xml(); !strings.Contains(x, "restrict=on") || !strings.Contains(x, "hostfwd=tcp:127.0.0.1:"+itoa(j.SSHPort)+"-:22") {
		t.Errorf("to user: domain XML:\n%s", x)
	}
}

// --restrict-network is checked against the network the VM ends up on.
func TestRestrictNetworkCheckedAgainstTheVMsNetwork(t *testing.T) {
	t.Setenv("LIBVIRT_DEFAULT_URI", "qemu:///session") // where the default network is user
	h := newHarness(t)
	args := h.natUpArgs("-d")
	if code := h.wait(h.up(args...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	h.fake.world.Domains["v1"] = "shut off"
	h.stderr.Reset()
	if code := h.wait(h.up("v1", "-d", "--restrict-network")); code != exitUsage || !strings.Contains(h.stderr.String(), "--restrict-network needs --network user") {
		t.Errorf("exit %d, want 2\n%s", code, h.stderr)
	}
	if j := h.journal(); j.Restrict || j.Network != "nat" {
		t.Errorf("journal network %s restricted %v", j.Network, j.Restrict)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
