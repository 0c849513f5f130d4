package main

// Reset under faults: killed at any moment, or on a full VMUP_HOME, the
// journal and the domain agree about the SSH port; and the Ctrl+C and
// --discard-saved cases around the first boot's end.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func forwardsPort(def string, port int) bool {
	return strings.Contains(def, fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:22", port))
}

// movedPort leaves v1 (binary run) shut off with an SSH port other than the
// provisioned one: its own was taken by another program at a re-up.
func movedPort(t *testing.T, r *binaryRun) (provisioned, now int) {
	t.Helper()
	if out, code := r.vmup("down", "v1"); code != 0 {
		t.Fatalf("down: %d %s", code, out)
	}
	provisioned = binJournal(t, r).SSHPort
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", provisioned))
	if err != nil {
		t.Fatal(err)
	}
	out, code := r.vmup("up", "v1", "-d")
	l.Close()
	if code != 0 {
		t.Fatalf("re-up with the port taken: exit %d\n%s", code, out)
	}
	now = binJournal(t, r).SSHPort
	if now == provisioned {
		t.Fatalf("setup: the re-up kept port %d", now)
	}
	return provisioned, now
}

func binJournal(t *testing.T, r *binaryRun) *Journal {
	t.Helper()
	j, err := readJournal(pathsFor(r.home, "v1"))
	if err != nil || j == nil {
		t.Fatalf("journal: %v", err)
	}
	return j
}

// checkAgree: the running domain forwards the journal's SSH port.
func checkAgree(t *testing.T, r *binaryRun, when string) {
	t.Helper()
	j := binJournal(t, r)
	live := loadWorld(filepath.Join(r.dir, "world.json")).Live["v1"]
	if !forwardsPort(live, j.SSHPort) {
		t.Errorf("%s: the journal's SSH port %d (what `vmup ssh` uses) is not what the running domain forwards:\n%s", when, j.SSHPort, live)
	}
}

// A `vmup reset` of a running VM killed at each of its libvirt calls: the
// next up makes the journal and the domain agree, and they stay so.
func TestKilledResetLeavesJournalAndDomainInStep(t *testing.T) {
	hit := 0
	for _, at := range []string{"snapshot-list", "destroy", "snapshot-revert"} {
		t.Run(at, func(t *testing.T) {
			r := startVmup(t, "ok", "-d")
			if code := r.exitCode(); code != 0 {
				t.Fatalf("up -d: exit %d", code)
			}
			movedPort(t, r)
			gate := filepath.Join(r.dir, "gate-virsh-"+at)
			os.WriteFile(gate, nil, 0o600)
			reset, resetOut := r.start("reset", "v1")
			ended := make(chan struct{})
			go func() { reset.Wait(); close(ended) }()
			reached := false
			deadline := time.Now().Add(30 * time.Second)
		poll:
			for time.Now().Before(deadline) {
				if _, err := os.Stat(gate + ".waiting"); err == nil {
					reached = true
					break
				}
				select {
				case <-ended:
					break poll
				case <-time.After(10 * time.Millisecond):
				}
			}
			if !reached {
				os.Remove(gate)
				t.Skipf("reset never ran virsh %s:\n%s", at, resetOut)
			}
			hit++
			reset.Process.Signal(syscall.SIGKILL)
			<-ended
			os.Remove(gate) // virsh died with vmup (Pdeathsig): the call never happens
			for _, args := range [][]string{{"up", "v1", "-d"}, {"down", "v1"}, {"up", "v1", "-d"}} {
				out, code := r.vmup(args...)
				if code != 0 {
					t.Fatalf("%v after the reset killed at %s: exit %d\n%s", args, at, code, out)
				}
				if args[0] == "up" {
					checkAgree(t, r, fmt.Sprintf("%v after the reset killed at %s", args, at))
				}
			}
		})
	}
	if hit == 0 {
		t.Errorf("no kill reached the reset")
	}
}

// fillHome fills the file system of a harness's VMUP_HOME (a small tmpfs).
func fillHome(h *harness) (free func()) {
	filler := filepath.Join(h.env.Home, "filler")
	f, _ := os.Create(filler)
	if f != nil {
		for _, err := f.Write(make([]byte, 4096)); err == nil; _, err = f.Write(make([]byte, 4096)) {
		}
		f.Close()
	}
	// Room for no new file at all: the journal's temp file cannot be made.
	for i := 0; ; i++ {
		g, err := os.Create(filepath.Join(h.env.Home, fmt.Sprintf("filler-%d", i)))
		if err != nil {
			break
		}
		if _, err := g.Write(make([]byte, 1)); err != nil {
			g.Close()
			break
		}
		g.Close()
	}
	return func() {
		entries, _ := os.ReadDir(h.env.Home)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "filler") {
				os.Remove(filepath.Join(h.env.Home, e.Name()))
			}
		}
	}
}

// tmpfsHome makes a harness whose VMUP_HOME is a 4 MiB tmpfs, and v1 in it,
// running with an SSH port other than its provisioned one.
func tmpfsHome(t *testing.T, uefi bool) (h *harness, provisioned, now int) {
	h = newHarness(t)
	if uefi {
		h.withNVRAMDir() // a disk state: the overlay made anew, the NVRAM put back
	}
	if err := os.MkdirAll(h.env.Home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", h.env.Home, "tmpfs", 0, "size=4m,mode=0700"); err != nil {
		t.Skipf("no tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(h.env.Home, unix.MNT_DETACH) })
	if uefi {
		h.createDetachedWith("--firmware", "uefi")
	} else {
		h.createDetached()
	}
	if p := h.journal().Provisioned; p == nil || uefi != (p.Kind == "disk") {
		t.Fatalf("setup: provisioned %+v", p)
	}
	provisioned = h.journal().SSHPort
	h.fake.world.Domains["v1"] = "shut off"
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", provisioned))
	if err != nil {
		t.Fatal(err)
	}
	code := h.wait(h.up("v1", "-d"))
	l.Close()
	if code != 0 {
		t.Fatalf("re-up: exit %d\n%s", code, h.stderr)
	}
	now = h.journal().SSHPort
	if now == provisioned {
		t.Fatalf("setup: the re-up kept port %d", now)
	}
	return h, provisioned, now
}

// A reset on a full VMUP_HOME changes nothing: exit 1 with a clear error,
// the VM running as it was, its journal as it was.
func TestResetOnAFullHomeChangesNothing(t *testing.T) {
	h, _, now := tmpfsHome(t, false)
	before := h.fake.world.Live["v1"]
	free := fillHome(h)
	h.stderr.Reset()
	h.fake.calls = nil
	code := h.wait(h.reset())
	free()
	t.Logf("reset on a full home: exit %d\n%s", code, h.stderr)
	if code != exitFailed {
		t.Errorf("reset on a full home: exit %d, want 1", code)
	}
	if !strings.Contains(h.stderr.String(), "vmup: error: ") || !strings.Contains(h.stderr.String(), "no space left") {
		t.Errorf("no clear error line about the full disk:\n%s", h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && slices.Contains([]string{"snapshot-revert", "destroy", "managedsave-remove", "define", "vol-delete"}, c[1]) {
			t.Errorf("a reset that could not write its journal changed the VM: %v", c)
		}
	}
	if j := h.journal(); j.SSHPort != now {
		t.Errorf("journal's SSH port %d, want %d as before", j.SSHPort, now)
	}
	if h.fake.world.Domains["v1"] != "running" || h.fake.world.Live["v1"] != before {
		t.Errorf("the VM is not running as it was: %s", h.fake.world.Domains["v1"])
	}
}

// VMUP_HOME fills up at each call of a reset: whatever the reset's exit,
// the journal's SSH port is the domain's, and the next up keeps them so.
func TestResetAsTheHomeFillsUpAtAnyMomentKeepsJournalAndDomainInStep(t *testing.T) {
	for _, uefi := range []bool{false, true} {
		t.Run(fmt.Sprint("uefi=", uefi), func(t *testing.T) { homeFillsUpAtEachCall(t, uefi) })
	}
}

func homeFillsUpAtEachCall(t *testing.T, uefi bool) {
	for n := 1; ; n++ {
		h, _, _ := tmpfsHome(t, uefi)
		var free func()
		calls := 0
		h.fake.onCall = func(args []string) {
			if calls++; calls == n {
				free = fillHome(h)
			}
		}
		h.stderr.Reset()
		h.fake.calls = nil
		code := h.wait(h.reset())
		h.fake.onCall = nil
		if free == nil {
			if n == 1 {
				t.Fatal("the reset ran no command")
			}
			t.Logf("the home filled up at each of the reset's %d calls", n-1)
			return
		}
		free()
		j, w := h.journal(), h.fake.world
		what := fmt.Sprintf("home full from call %d (%s)", n, strings.Join(h.calls()[n-1], " "))
		if w.Domains["v1"] == "running" && !forwardsPort(w.Live["v1"], j.SSHPort) {
			t.Errorf("%s: reset exit %d; the journal's SSH port %d is not what the running domain forwards\n%s", what, code, j.SSHPort, h.stderr)
		}
		if w.Domains["v1"] != "running" && !forwardsPort(w.XML["v1"], j.SSHPort) && j.Phase != Resetting && j.FailedIn != Resetting {
			t.Errorf("%s: reset exit %d; the journal's SSH port %d is not the shut-off domain's, and no up would redefine it\n%s", what, code, j.SSHPort, h.stderr)
		}
		h.stderr.Reset()
		if c := h.wait(h.up("v1", "-d")); c != 0 {
			t.Errorf("%s: the next up: exit %d\n%s", what, c, h.stderr)
		} else if j := h.journal(); !forwardsPort(w.Live["v1"], j.SSHPort) {
			t.Errorf("%s: after the next up the journal's SSH port %d is not what the domain forwards", what, j.SSHPort)
		}
	}
}

// --discard-saved on a saved VM whose first boot is not complete (its
// playbook failed, then `down --suspend`): the saved memory is dropped, the
// VM boots afresh and its playbook is retried.
func TestDiscardSavedDropsTheSaveOfAVMWhoseFirstBootFailed(t *testing.T) {
	h := newHarness(t)
	h.fake.playbook = "fail"
	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitProvision {
		t.Fatalf("first boot: exit %d\n%s", code, h.stderr)
	}
	if code := h.down("--suspend"); code != 0 {
		t.Fatalf("down --suspend: exit %d\n%s", code, h.stderr)
	}
	h.fake.playbook = "ok"
	h.fake.calls = nil
	h.stderr.Reset()
	code := h.wait(h.up("v1", "-d", "--discard-saved"))
	t.Logf("up -d --discard-saved: exit %d\n%s", code, h.stderr)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	calls := h.calls()
	drop := slices.IndexFunc(calls, func(c []string) bool { return slices.Equal(c, argv("virsh managedsave-remove v1")) })
	start := slices.IndexFunc(calls, func(c []string) bool { return slices.Equal(c, argv("virsh start v1")) })
	if drop < 0 || start < drop {
		t.Errorf("--discard-saved did not drop the saved state before the start; calls %v", calls)
	}
	if !h.has("discarding") || strings.Contains(h.stderr.String(), "resumed from its saved state") {
		t.Errorf("the VM was not said to boot afresh:\n%s", h.stderr)
	}
	if j := h.journal(); !j.FirstBootDone {
		t.Errorf("the playbook was not retried: first boot not complete")
	}
}

// A Ctrl+C while the provisioned state is being kept, the completed first
// boot already on disk, says what happens: the VM shuts down once its
// state is kept; nothing is destroyed.
func TestCtrlCWhileKeepingTheProvisionedStateShutsDownAfterIt(t *testing.T) {
	h := newHarness(t)
	fired, done := false, false
	h.fake.onCall = func(args []string) {
		if fired || len(args) < 2 || args[1] != "snapshot-create-as" {
			return
		}
		fired = true
		j, _ := readJournal(pathsFor(h.env.Home, "v1"))
		done = j != nil && j.FirstBootDone
		h.sigs <- syscall.SIGINT
		// The controller answers before the snapshot is taken.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if h.has("confirm_abort") || h.has("stop_once_kept") {
				break
			}
		}
	}
	code := h.wait(h.up(h.upArgs("-d")...))
	t.Logf("first_boot_done on disk at the Ctrl+C: %v; up exit %d\n%s", done, code, h.stderr)
	if !fired || !done {
		t.Fatalf("setup: the snapshot was not taken after the completion was recorded")
	}
	if strings.Contains(h.stderr.String(), "will be destroyed") {
		t.Errorf("a Ctrl+C after the first boot was recorded complete warned of a destroy")
	}
	if !strings.Contains(h.stderr.String(), "shuts down once its provisioned state is kept") {
		t.Errorf("the Ctrl+C was not answered with what it does")
	}
	if code != exitOK || h.fake.world.Domains["v1"] != "shut off" {
		t.Errorf("exit %d, domain %s; want 0 and shut off", code, h.fake.world.Domains["v1"])
	}
	if j := h.journal(); j.Provisioned == nil {
		t.Errorf("the provisioned state was not kept")
	}
}

// The rows of keeping: the first boot is recorded complete, so no signal
// wipes; each one shuts the VM down once its provisioned state is kept.
func TestRowsOfKeeping(t *testing.T) {
	cases := []struct {
		p    Phase
		e    Event
		want Transition
	}{
		{Provisioning, EvCompleted, to(Keeping, keep)},
		{Keeping, EvInterrupt, to(Stopping, exitOK, ActSayStopOnceKept)},
		{Keeping, EvTerminate, to(Stopping, exitOK, ActSayStopOnceKept)},
		{Keeping, EvHangup, to(Stopping, exitOK, ActSayStopOnceKept)},
		{Keeping, EvProvisioned, to(Running, keep, ActEnterRunning)},
		{Stopping, EvProvisioned, to(Stopping, keep, ActShutdown)},
	}
	for _, c := range cases {
		got, ok := Step(c.p, c.e)
		if !ok {
			t.Errorf("%s/%s: no row", c.p, c.e)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%s/%s (-want +got):\n%s", c.p, c.e, diff)
		}
	}
	// Provisioning gets completed first; in keeping no window is open, and
	// a VM whose state is being kept is not saved.
	for _, c := range []struct {
		p Phase
		e Event
	}{{Provisioning, EvProvisioned}, {Keeping, EvInterruptAgain}, {Keeping, EvSuspend}, {Keeping, EvCompleted}} {
		if _, ok := Step(c.p, c.e); ok {
			t.Errorf("%s/%s is handled; want ignored", c.p, c.e)
		}
	}
	if Keeping.FirstBoot() || Keeping.AfterFirstBoot() || Keeping.Terminal() {
		t.Errorf("keeping is a first-boot, after-first-boot or terminal phase")
	}
	for e, tr := range table[Keeping] {
		if tr.Next == Wiping || tr.Next.FirstBoot() {
			t.Errorf("keeping/%s leads to %s", e, tr.Next)
		}
	}
}
