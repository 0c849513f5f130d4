package main

// Faults of the commands other than up (issue 14): what a destroy by name
// may delete, what a killed provision leaves, how down asks a foreground up,
// who holds a lock, and what status says when libvirt is gone.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// untrustJournal makes name's journal one this vmup cannot trust (written
// by a newer vmup).
func untrustJournal(t *testing.T, home, name string) {
	t.Helper()
	p := pathsFor(home, name).Journal()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Replace(data, []byte(`"version": 2`), []byte(`"version": 3`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readJournal(pathsFor(home, name)); err == nil {
		t.Fatalf("%s's journal is still trusted", name)
	}
}

// A destroy by name alone deletes only volumes that are provably the VM's:
// VMs whose names extend it (web-run, whose disk is web-run.qcow2, or
// web-seed, web-kernel) keep every volume.
func TestDestroyByNameKeepsVolumesOfVMsNamedLikeIt(t *testing.T) {
	h := newHarness(t)
	others := []string{"web-run", "web-seed", "web-kernel", "web-initrd", "web-seed-boot"}
	for _, name := range append([]string{"web"}, others...) {
		if code := h.wait(h.up(name, "--image", h.image, "--domain-type", "qemu", "--network", "user", "-d")); code != 0 {
			t.Fatalf("up %s: exit %d\n%s", name, code, h.stderr)
		}
	}
	before := map[string]bool{}
	for pv := range h.fake.world.Volumes {
		before[pv] = true
	}
	untrustJournal(t, h.env.Home, "web")
	h.stderr.Reset()
	if code := h.run("destroy", "web"); code != 0 {
		t.Fatalf("destroy web: exit %d\n%s", code, h.stderr)
	}
	for pv := range before {
		vol := strings.TrimPrefix(pv, "vmup/")
		mine := false
		for _, v := range []string{"web.qcow2", "web-seed.iso", "web-seed-boot.iso"} {
			mine = mine || vol == v
		}
		switch gone := !h.fake.world.Volumes[pv]; {
		case mine && !gone:
			t.Errorf("destroy web left its volume %s", vol)
		case !mine && gone && !strings.HasPrefix(vol, "vmup-base-"):
			t.Errorf("`vmup destroy web` deleted %s, a volume of another VM\n%s", vol, h.stderr)
		}
	}
	for _, name := range others {
		if _, ok := h.fake.world.Domains[name]; !ok {
			t.Errorf("domain %s is gone", name)
		}
	}
}

// web's own frozen disk (web-run.qcow2 backed by web.qcow2) is provably web's
// and goes with it; one backed by anything else, or that another domain's
// definition names, is not web's and stays.
func TestDestroyByNameTakesTheRunDiskOnlyOverItsOwnBase(t *testing.T) {
	for _, c := range []struct {
		backing, namedBy string
		deleted          bool
	}{
		{"/pool/vmup/web.qcow2", "", true},
		{"/pool/vmup/vmup-base-0123456789abcdef.qcow2", "", false},
		{"", "", false},
		{"/pool/vmup/web.qcow2", "other", false},
	} {
		h := newHarness(t)
		if code := h.wait(h.up("web", "--image", h.image, "--domain-type", "qemu", "--network", "user", "-d")); code != 0 {
			t.Fatalf("up web: exit %d\n%s", code, h.stderr)
		}
		h.fake.world.Volumes["vmup/web-run.qcow2"] = true
		h.fake.world.Backing["vmup/web-run.qcow2"] = c.backing
		if c.namedBy != "" {
			h.fake.world.Domains[c.namedBy] = "shut off"
			h.fake.world.XML[c.namedBy] = "<domain><devices><disk type='file'><source file='/pool/vmup/web-run.qcow2'/></disk></devices></domain>"
		}
		untrustJournal(t, h.env.Home, "web")
		if code := h.run("destroy", "web"); code != 0 {
			t.Fatalf("destroy web: exit %d\n%s", code, h.stderr)
		}
		if gone := !h.fake.world.Volumes["vmup/web-run.qcow2"]; gone != c.deleted {
			t.Errorf("web-run.qcow2 backed by %q, named by domain %q: deleted %v, want %v\n%s", c.backing, c.namedBy, gone, c.deleted, h.stderr)
		}
	}
}

// A seed of web's name that another domain boots from is not web's.
func TestDestroyByNameKeepsASeedAnotherDomainNames(t *testing.T) {
	h := newHarness(t)
	if code := h.wait(h.up("web", "--image", h.image, "--domain-type", "qemu", "--network", "user", "-d")); code != 0 {
		t.Fatalf("up web: exit %d\n%s", code, h.stderr)
	}
	// web boots from its later seed now; its first seed is named by no
	// definition of web's.
	h.fake.world.Volumes["vmup/web-seed.iso"] = true
	h.fake.world.Domains["other"] = "running"
	h.fake.world.XML["other"] = "<domain><devices><disk type='file'><source file='/pool/vmup/web-seed.iso'/></disk></devices></domain>"
	untrustJournal(t, h.env.Home, "web")
	if code := h.run("destroy", "web"); code != 0 {
		t.Fatalf("destroy web: exit %d\n%s", code, h.stderr)
	}
	if !h.fake.world.Volumes["vmup/web-seed.iso"] {
		t.Errorf("destroy web deleted web-seed.iso, which domain other boots from\n%s", h.stderr)
	}
	if h.fake.world.Volumes["vmup/web.qcow2"] {
		t.Errorf("destroy web left its disk\n%s", h.stderr)
	}
}

// Every command that takes a VM's lock writes a record every other command
// reads: a busy message names it, status shows it.
func TestEveryLockRecordIsParsed(t *testing.T) {
	for _, cmd := range []string{"up", "down", "destroy", "provision", "reset", "prune"} {
		path := filepath.Join(t.TempDir(), "v1.lock")
		l, _, err := tryLock(path, cmd)
		if err != nil {
			t.Fatal(err)
		}
		rec, held := lockHolder(path)
		if !held || rec.Command != cmd || rec.PID != os.Getpid() {
			t.Errorf("lock taken by %s: holder %+v, held %v", cmd, rec, held)
		}
		if _, pid, err := tryLock(path, "up"); err != errLocked || pid != os.Getpid() {
			t.Errorf("lock taken by %s: a second taker got pid %d, %v", cmd, pid, err)
		}
		l.Unlock()
	}
}

// Commands run while `vmup reset` works on the VM name it.
func TestCommandsDuringResetNameIt(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	fired := false
	var report bytes.Buffer
	h.fake.onCall = func(args []string) {
		if fired || len(args) < 2 || args[1] != "snapshot-revert" {
			return
		}
		fired = true
		for _, cmd := range [][]string{{"provision", "v1"}, {"status", "v1", "--json"}} {
			o, _, _ := parseCommand(cmd[0], cmd[1:])
			var errb, jsonb bytes.Buffer
			env := h.env
			env.Out = newOutput(&errb, &jsonb, "v1")
			var code int
			switch cmd[0] {
			case "provision":
				code = runProvision(env, o)
			case "status":
				code = runStatus(env, o)
			}
			fmt.Fprintf(&report, "%s: exit %d %s%s", strings.Join(cmd, " "), code, errb.String(), jsonb.String())
		}
	}
	if code := h.wait(h.reset()); code != 0 {
		t.Fatalf("reset: exit %d\n%s", code, h.stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("provision v1: exit 5 vmup: error: VM v1 is busy: vmup reset (pid %d) is working on it", os.Getpid()),
		`"holder":"reset"`,
	} {
		if !strings.Contains(report.String(), want) {
			t.Errorf("while `vmup reset v1` ran, no command said %q:\n%s", want, report.String())
		}
	}
}

// A prune holding the pool's lock is named to a second prune, not "pid 0".
func TestPruneHoldingThePoolIsNamed(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Pools["vmup"] = true
	l, _, err := tryLock(filepath.Join(h.env.Home, "locks", "_global.lock"), "prune")
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(500*time.Millisecond, l.Unlock)
	o, _, err := parseCommand("prune", nil)
	if err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	runPrune(env, o)
	if want := fmt.Sprintf("Waiting for vmup pid %d", os.Getpid()); !strings.Contains(h.stderr.String(), want) {
		t.Errorf("prune waiting for another prune: want %q\n%s", want, h.stderr)
	}
}

const libvirtDown = "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Connection refused"

// `status NAME` that cannot ask libvirt is an environment error (exit 1),
// not "VM not running" (3); it still shows what the journal says.
func TestStatusOfAVMWhenLibvirtIsDownExits1(t *testing.T) {
	r := newFakeRunner()
	home := t.TempDir()
	fakeVM(t, home, r.world, "v1", "qemu:///system", "running", 0, nil)
	r.world.Fail["domstate"] = libvirtDown
	r.world.Fail["uri"] = libvirtDown
	var stderr strings.Builder
	env := Env{Runner: r, Home: home, Out: newOutput(&stderr, nil, "")}
	code, out := statusLines(t, env, "v1", "--json")
	if got := statusJSON(t, out)["v1"]["domain"]; code != exitFailed || got != "unknown" {
		t.Errorf("status v1: exit %d, domain %v; want 1, unknown\n%s%s", code, got, out, stderr.String())
	}
	for _, want := range []string{"vmup: error: cannot reach libvirt at qemu:///system: ", "vmup: hint: start libvirtd"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// The list of every VM likewise: it shows what it knows, then exits 1.
func TestStatusOfAllWhenLibvirtIsDownExits1(t *testing.T) {
	r := newFakeRunner()
	home := t.TempDir()
	fakeVM(t, home, r.world, "v1", "qemu:///system", "running", 0, nil)
	r.world.Fail["domstats"] = libvirtDown
	var stderr strings.Builder
	env := Env{Runner: r, Home: home, Out: newOutput(&stderr, nil, "")}
	code, out := statusLines(t, env, "--json")
	if got := statusJSON(t, out)["v1"]["domain"]; code != exitFailed || got != "unknown" {
		t.Errorf("status: exit %d, domain %v; want 1, unknown\n%s%s", code, got, out, stderr.String())
	}
	if want := "vmup: error: cannot list the domains at qemu:///system: "; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}
}

// `vmup provision` killed with SIGKILL: ansible-playbook dies with it; the
// child it left is reaped by the next destroy (and, in the next test, up).
func TestKilledProvisionsChildIsReapedByDestroy(t *testing.T) {
	r, child := killedProvision(t)
	if out, code := r.vmup("destroy", "v1"); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, out)
	}
	waitGone(t, child, "ansible's child of a killed `vmup provision`, after destroy")
}

func TestKilledProvisionsChildIsReapedByUp(t *testing.T) {
	r, child := killedProvision(t)
	if out, code := r.vmup("up", "v1", "-d"); code != 0 {
		t.Fatalf("up -d: exit %d\n%s", code, out)
	}
	waitGone(t, child, "ansible's child of a killed `vmup provision`, after up")
	if data, _ := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json")); strings.Contains(string(data), "playbook_pgid") {
		t.Errorf("the reaped group is still journalled:\n%s", data)
	}
}

func TestKilledProvisionsChildIsReapedByProvision(t *testing.T) {
	r, child := killedProvision(t)
	if out, code := r.vmup("provision", "v1"); code != 0 {
		t.Fatalf("provision: exit %d\n%s", code, out)
	}
	waitGone(t, child, "ansible's child of a killed `vmup provision`, after the next provision")
}

// A provision journals its playbook's group while it runs, and clears it.
func TestProvisionClearsItsPlaybookGroup(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	var seen bytes.Buffer
	during := -1
	h.fake.onPlaybook = func() { during = h.journal().PlaybookPGID }
	o, _, err := parseCommand("provision", []string{"v1", "--playbook", h.play})
	if err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = newOutput(&seen, nil, "v1")
	if code := runProvision(env, o); code != 0 {
		t.Fatalf("provision: exit %d\n%s", code, seen.String())
	}
	if j := h.journal(); during != 999999 || j.PlaybookPGID != 0 {
		t.Errorf("playbook group journalled %d while it ran (want the fake's 999999), %d after (want none)", during, j.PlaybookPGID)
	}
}

func killedProvision(t *testing.T) (*binaryRun, int) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	cmd := exec.Command(vmupBinary, "provision", "v1")
	cmd.Env = append(append([]string{}, r.env...), "VMUP_FAKE_PLAYBOOK=block")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid, _, child := r.waitPlaybook()
	t.Cleanup(func() { unix.Kill(child, syscall.SIGKILL) })
	// provision journals the group as the playbook starts.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		data, _ := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json"))
		if strings.Contains(string(data), `"playbook_pgid"`) {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("`vmup provision` never journalled the playbook's process group\n%s", out.String())
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitGone(t, pid, "ansible-playbook of a killed `vmup provision`")
	if gone(child) {
		t.Fatal("the playbook's child died with it: nothing to reap")
	}
	return r, child
}

// `vmup down` (no --force) against a foreground up already shutting down
// (the user's Ctrl+C) lets the ACPI shutdown run the up's --shutdown-timeout,
// and waits for it past its own wait (down's --shutdown-timeout + 30 s).
func TestDownLetsAnUpsShutdownRunItsCourse(t *testing.T) {
	r := startIgnoringShutdown(t, "--shutdown-timeout", "34s")
	r.waitEvent("waiting")
	r.ctrlC()
	r.waitEvent("stopping")
	start := time.Now()
	out, code := r.vmup("down", "v1", "--shutdown-timeout", "1s")
	took := time.Since(start)
	upCode := r.exitCode()
	if code != 0 || took < 31*time.Second {
		t.Errorf("`vmup down v1` exit %d after %.1f s; want 0 once the up's 34 s ACPI shutdown ran (up exit %d)\n%s",
			code, took.Seconds(), upCode, out)
	}
}

// `vmup down --force` against a foreground up powers the VM off at once.
func TestDownForceAgainstAForegroundUpIsAtOnce(t *testing.T) {
	r := startIgnoringShutdown(t, "--shutdown-timeout", "40s")
	r.waitEvent("waiting")
	start := time.Now()
	out, code := r.vmup("down", "--force", "v1")
	took := time.Since(start)
	upCode := r.exitCode()
	if code != 0 || upCode != 0 || took > 10*time.Second {
		t.Errorf("`vmup down --force v1`: exit %d after %.1f s, up exit %d; want 0, at once\n%s", code, took.Seconds(), upCode, out)
	}
	if r.called("virsh shutdown") {
		t.Errorf("down --force had an ACPI shutdown run first")
	}
}

// startIgnoringShutdown runs a foreground `vmup up v1` whose guest ignores
// ACPI shutdown requests.
func startIgnoringShutdown(t *testing.T, args ...string) *binaryRun {
	r := newBinaryRun(t, "ok", args...)
	if err := os.WriteFile(filepath.Join(r.dir, "world.json"), []byte(`{"ShutdownIgnored": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r.cmd.Stderr = &testLogWriter{t: t}
	r.readEvents()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	return r
}
