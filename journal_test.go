package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// setJournalField rewrites one key of v1's state.json as a hostile or broken
// editor would, bypassing writeJournal.
func setJournalField(t *testing.T, path, key string, value any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m[key] = value
	if data, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Every value read from state.json is checked as strictly as the flag it came
// from; one that fails makes the whole journal untrusted.
func TestJournalValuesAreValidated(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	good, err := os.ReadFile(paths.Journal())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readJournal(paths); err != nil {
		t.Fatalf("the journal vmup wrote itself is rejected: %v", err)
	}
	cases := []struct {
		key   string
		value any
		msg   string
	}{
		{"name", "v2", `name "v2"`},
		{"user", "-oProxyCommand=touch X", `user "-oProxyCommand=touch X" is not a login name`},
		{"network", "bridge", `network "bridge"`},
		{"connect", "-c", `connect "-c"`},
		{"connect", "qemu:///system --readonly", `connect "qemu:///system --readonly"`},
		{"connect", "", `connect ""`},
		{"pool", "--pool", `pool "--pool"`},
		{"pool", "../etc", `pool "../etc"`},
		{"ssh_port", 70000, "ssh_port 70000"},
		{"ssh_port", -1, "ssh_port -1"},
		{"ssh_host", "-oProxyCommand=x", `ssh_host "-oProxyCommand=x"`},
		{"ssh_host", "evil.example", `ssh_host "evil.example"`},
		{"pid", -1, "pid -1"},
		{"playbook_pgid", -1, "playbook_pgid -1"},
		{"playbook_pgid", int64(1) << 40, "playbook_pgid 1099511627776"},
		{"phase", "bogus", `"bogus" is no phase`}, // a Phase reads only its names
		{"failed_in", "later", `"later" is no phase`},
		{"playbook", "site.yml", `playbook "site.yml"`},
		{"playbook_args", []string{"-e", "a\x00b"}, `playbook_args`},
		{"forwards", []string{"80"}, `forwards`},
		{"cpus", 100000, "cpus 100000"},
		{"memory", int64(99999999999999), "memory 99999999999999"},
		{"disk", int64(8589934592), "disk 8589934592"},
		{"domain_type", "xen", `domain_type "xen"`},
		{"uuid", "not-a-uuid", `uuid "not-a-uuid"`},
		{"instance_id", "vmup-v1-1\nruncmd: [x]", `instance_id`},
		{"base_volume", "important-db.qcow2", `base_volume "important-db.qcow2"`},
		{"uploading_base", "important-db.qcow2", `uploading_base "important-db.qcow2"`},
		{"cmdline", "a\x00b", "cmdline"},
		{"restrict_network", true, "restrict_network"}, // on a NAT network below
		{"created", "1970-01-01T00:00:00Z", "created 1970-01-01T00:00:00Z is no time"},
		{"surprise", 1, `unknown field "surprise"`},
		{"disk_volume", "db.qcow2", `disk_volume "db.qcow2"`},
		{"provisioned", map[string]any{"kind": "disk", "nvram": "/etc/shadow", "network": "user", "cpus": 2, "memory": 2048, "disk": 4},
			`provisioned: nvram "/etc/shadow"`},
		{"provisioned", map[string]any{"kind": "disk", "nvram": "/var/lib/libvirt/qemu/nvram/v2_VARS.fd", "network": "user", "cpus": 2, "memory": 2048, "disk": 4},
			`provisioned: nvram`},
		{"provisioned", map[string]any{"kind": "all", "network": "user", "cpus": 2, "memory": 2048, "disk": 4}, `provisioned: kind "all"`},
		{"provisioned", map[string]any{"kind": "memory", "network": "user", "ssh_host": "-oX", "cpus": 2, "memory": 2048, "disk": 4}, `provisioned: ssh_host`},
		{"provisioned", map[string]any{"kind": "memory", "network": "user", "forwards": []string{"x"}, "cpus": 2, "memory": 2048, "disk": 4}, `provisioned: forwards`},
	}
	for _, c := range cases {
		os.WriteFile(paths.Journal(), good, 0o600)
		if c.key == "restrict_network" {
			setJournalField(t, paths.Journal(), "network", "nat")
		}
		setJournalField(t, paths.Journal(), c.key, c.value)
		j, err := readJournal(paths)
		if err == nil || j != nil {
			t.Errorf("%s = %v: accepted", c.key, c.value)
			continue
		}
		want := "VM v1: state.json is "
		if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s = %v: error %q, want %q…%q", c.key, c.value, err, want, c.msg)
		}
	}
	os.WriteFile(paths.Journal(), append(good, []byte(" {}")...), 0o600)
	if _, err := readJournal(paths); err == nil {
		t.Error("a journal with data after its object is accepted")
	}
}

// A journal naming ssh options as the login must never reach ssh: not from
// `up`, not from `vmup ssh`.
func TestJournalWithHostileUserNeverReachesSSH(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	paths := pathsFor(h.env.Home, "v1")
	setJournalField(t, paths.Journal(), "user", "-oProxyCommand=touch X")
	h.fake.calls = nil
	h.stderr.Reset()
	if code := h.wait(h.up("v1", "-d")); code != exitFailed {
		t.Errorf("up: exit %d, want 1\n%s", code, h.stderr)
	}
	for _, c := range h.fake.rawCalls() {
		if strings.Contains(strings.Join(c, " "), "ProxyCommand") {
			t.Errorf("ran %v", c)
		}
	}
	if len(h.calls()) != 0 {
		t.Errorf("up ran programs on the word of an invalid journal: %v", h.calls())
	}
	wantErr := `vmup: error: VM v1: state.json is not valid: user "-oProxyCommand=touch X" is not a login name`
	wantHint := "vmup: hint: run `vmup destroy v1` to remove the VM and its state"
	if !strings.Contains(h.stderr.String(), wantErr) || !strings.Contains(h.stderr.String(), wantHint) {
		t.Errorf("stderr lacks %q and %q:\n%s", wantErr, wantHint, h.stderr)
	}
}

func TestBinaryJournalWithHostileUserNeverReachesSSH(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	setJournalField(t, filepath.Join(r.home, "vms", "v1", "state.json"), "user", "-oProxyCommand=touch X")
	before := len(r.calls())
	for _, cmd := range [][]string{{"ssh", "v1", "--", "true"}, {"ssh-config", "v1"}, {"provision", "v1"}, {"down", "v1"}, {"status", "v1"}} {
		out, code := r.vmup(cmd...)
		if code != exitFailed || !strings.Contains(out, "state.json is not valid") || !strings.Contains(out, "vmup destroy v1") {
			t.Errorf("vmup %s: exit %d, want 1 with the error and a hint\n%s", strings.Join(cmd, " "), code, out)
		}
		if strings.Contains(out, "ProxyCommand -oProxyCommand") || strings.Contains(out, "User -oProxyCommand") {
			t.Errorf("vmup %s passed the journal's user on:\n%s", strings.Join(cmd, " "), out)
		}
	}
	for _, c := range r.calls()[before:] {
		if slices.Contains([]string{"ssh", "ansible-playbook"}, c[0]) {
			t.Errorf("ran %v on the word of an invalid journal", c)
		}
	}
}

// A journal cannot make vmup delete a volume that is not the VM's own.
func TestJournalCannotNameAVolumeToDelete(t *testing.T) {
	h := newHarness(t)
	done := h.upBlockedInPlaybook()
	paths := pathsFor(h.env.Home, "v1")
	j := h.journal()
	dead := exec.Command("true")
	dead.Run()
	j.PID, j.PlaybookPGID = dead.Process.Pid, 0
	h.sigs <- syscall.SIGTERM
	h.wait(done)
	// What a killed first boot leaves, with a journal edited to name a precious volume.
	h.fake.world.Domains["v1"], h.fake.world.Owned["v1"] = "running", true
	h.fake.world.Volumes["vmup/v1.qcow2"] = true
	h.fake.world.Volumes["vmup/important-db.qcow2"] = true
	ensureDir(paths.Dir)
	writeJournal(paths, j)
	setJournalField(t, paths.Journal(), "uploading_base", "important-db.qcow2")
	h.fake.calls = nil
	h.fake.playbook = "ok"
	h.stderr.Reset()

	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitFailed {
		t.Errorf("exit %d, want 1\n%s", code, h.stderr)
	}
	if !h.fake.world.Volumes["vmup/important-db.qcow2"] {
		t.Error("the volume the journal named was deleted")
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && c[1] != "uri" {
			t.Errorf("up ran %v on the word of an invalid journal", c)
		}
	}
	if !strings.Contains(h.stderr.String(), `uploading_base "important-db.qcow2"`) {
		t.Errorf("stderr does not say what is wrong:\n%s", h.stderr)
	}
}

// destroy removes a VM whose journal is damaged or invalid, trusting nothing
// in it: the name comes from the command line, connect and pool from the
// defaults, and the volumes deleted are the name's own. status says it is damaged.
func TestDestroyWithDamagedJournal(t *testing.T) {
	for _, damage := range []string{"garbage", "hostile"} {
		t.Run(damage, func(t *testing.T) {
			h := newHarness(t)
			h.createDetached()
			paths := pathsFor(h.env.Home, "v1")
			base := "vmup/vmup-base-" + h.imgHash + ".qcow2"
			if damage == "garbage" {
				os.WriteFile(paths.Journal(), []byte(`{"name": "v1", "pha`), 0o600)
			} else {
				setJournalField(t, paths.Journal(), "pool", "precious")
				setJournalField(t, paths.Journal(), "uploading_base", "important-db.qcow2")
				h.fake.world.Volumes["precious/v1.qcow2"] = true
				h.fake.world.Volumes["vmup/important-db.qcow2"] = true
			}
			env := h.env
			env.Out = h.out()

			o, _, _ := parseCommand("status", []string{"v1"})
			h.stderr.Reset()
			if code := runStatus(env, o); code != exitFailed {
				t.Errorf("status: exit %d, want 1", code)
			}
			if !strings.Contains(h.stderr.String(), "vmup: error: VM v1: state.json is") ||
				!strings.Contains(h.stderr.String(), "vmup: hint: run `vmup destroy v1` to remove the VM and its state") {
				t.Errorf("status does not say the state is damaged and how to remove it:\n%s", h.stderr)
			}

			h.fake.calls = nil
			h.stderr.Reset()
			o, _, _ = parseCommand("destroy", []string{"v1"})
			if code := runDestroy(env, o); code != 0 {
				t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
			}
			// The volumes come from libvirt's definition of vmup's domain.
			h.checkCalls(concat(anyOrder(seq("virsh uri"), wipeAsks(completedVolumes...)),
				seq("virsh metadata v1 "+metadataURI, "virsh dumpxml v1",
					"virsh vol-path --pool vmup v1.qcow2", "virsh vol-path --pool vmup v1-seed-boot.iso",
					"virsh vol-info --pool vmup v1-run.qcow2", "virsh vol-info --pool vmup v1-seed.iso"),
				wipeChanges(true, completedVolumes...)))
			if _, err := os.Stat(paths.Dir); !os.IsNotExist(err) {
				t.Errorf("state dir left: %v", err)
			}
			if _, ok := h.fake.world.Domains["v1"]; ok {
				t.Error("domain left")
			}
			for v := range h.fake.world.Volumes {
				if strings.HasPrefix(v, "vmup/v1") {
					t.Errorf("volume %s left", v)
				}
			}
			for _, v := range []string{base, "precious/v1.qcow2", "vmup/important-db.qcow2"} {
				if damage == "hostile" && !h.fake.world.Volumes[v] || v == base && !h.fake.world.Volumes[v] {
					t.Errorf("volume %s was deleted", v)
				}
			}
			if !strings.Contains(h.stderr.String(), "pool vmup") {
				t.Errorf("destroy does not say what it removes:\n%s", h.stderr)
			}
		})
	}
}

// Without a journal to name them, destroy's connect and pool come from flags,
// vmup.json or the defaults, and are checked like up's.
func TestDestroyChecksPoolItWasNotGivenByAJournal(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Domains["v1"], h.fake.world.Owned["v1"] = "shut off", true
	t.Chdir(t.TempDir())
	os.WriteFile(configFile, []byte(`{"pool": "--all"}`), 0o600)
	env := h.env
	env.Out = h.out()
	o, _, err := parseCommand("destroy", []string{"v1"})
	if err != nil {
		t.Fatal(err)
	}
	if code := runDestroy(env, o); code != exitUsage {
		t.Errorf("exit %d, want 2\n%s", code, h.stderr)
	}
	if len(h.calls()) != 0 {
		t.Errorf("ran %v", h.calls())
	}
}
