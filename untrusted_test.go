package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// a re-up that switches the network and then fails to redefine leaves a
// journal that describes a network the domain does not have.
func TestFailedRedefinitionLeavesJournalAsTheDomainIs(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	before := h.journal()
	h.fake.world.Fail["define"] = "error: Failed to define domain: unsupported configuration"
	code := h.wait(h.up("v1", "-d", "--network", "nat"))
	delete(h.fake.world.Fail, "define")
	xml := h.fake.world.XML["v1"]
	j := h.journal()
	t.Logf("exit %d; journal network %s ssh %s:%d; before %s %s:%d; domain has hostfwd: %v",
		code, j.Network, j.SSHHost, j.SSHPort, before.Network, before.SSHHost, before.SSHPort, strings.Contains(xml, "hostfwd"))
	if j.Network != before.Network || j.SSHPort != before.SSHPort {
		t.Errorf("journal says network %s port %d, domain still %s on port %d", j.Network, j.SSHPort, before.Network, before.SSHPort)
	}
	// A bare up boots the VM as it is, and reaches it where the journal says.
	h.fake.world.Domains["v1"] = "shut off"
	if code = h.wait(h.up("v1", "-d")); code != 0 {
		t.Errorf("bare up: exit %d\n%s", code, h.stderr)
	}
	if j := h.journal(); j.Network != "user" || !strings.Contains(h.fake.world.XML["v1"], fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:22", j.SSHPort)) {
		t.Errorf("journal %s port %d against the domain:\n%s", j.Network, j.SSHPort, h.fake.world.XML["v1"])
	}
}

// destroy with a damaged journal leaves the later seed (never attached
// during the first boot) in the pool.
func TestDestroyWithUntrustedJournalRemovesBothSeeds(t *testing.T) {
	h := newHarness(t)
	h.fake.playbook = "fail"
	if code := h.wait(h.up(h.upArgs("-d")...)); code != exitProvision {
		t.Fatalf("exit %d", code)
	}
	os.WriteFile(filepath.Join(h.env.Home, "vms", "v1", "state.json"), []byte("{garbage"), 0o600)
	if code := h.destroy(); code != 0 {
		t.Fatalf("destroy exit %d\n%s", code, h.stderr)
	}
	for v := range h.fake.world.Volumes {
		if strings.HasPrefix(v, "vmup/v1") {
			t.Errorf("volume %s left behind by destroy", v)
		}
	}
	// and the next up of that name is refused
	h.fake.playbook = "ok"
	h.stderr.Reset()
	if code := h.wait(h.up(h.upArgs("-d")...)); code != 0 {
		t.Errorf("next up: exit %d\n%s", code, h.stderr)
	}
}

// lockHolder's probe takes the lock for a moment: an `up` (or any command)
// that tries the free lock in that moment is told the VM is busy (exit 5).
func TestStatusProbeNeverMakesALockBusy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v1.lock")
	l, _, _ := tryLock(path, "up")
	l.Unlock()
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				lockHolder(path) // what `vmup status` does for every VM
			}
		}
	}()
	busy := 0
	for i := 0; i < 2000; i++ {
		l, _, err := tryLock(path, "up")
		if err == errLocked {
			busy++
			continue
		}
		l.Unlock()
	}
	close(stop)
	if busy > 0 {
		t.Errorf("%d of 2000 tryLock calls on a free lock said busy while status probed it", busy)
	}
}

// destroy removes the lock file while it holds the lock; a command that
// opened the old file before, and flocks it after destroy let go, holds a lock
// on a dead inode while the next command locks a new file: two holders.
func TestLockOnARemovedLockFileCountsForNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v1.lock")
	d, _, _ := tryLock(path, "destroy")
	// up opens the file (tryLock's OpenFile) ...
	f, _ := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	defer f.Close()
	// ... destroy finishes: os.Remove(paths.Lock), then Unlock.
	os.Remove(path)
	d.Unlock()
	// up's lock on the removed file must not count ...
	l1, _, err := lockOpened(f, path, "up")
	if err == nil {
		defer l1.Unlock()
	}
	// ... so that another up may lock the file at the path, and only one holds it.
	l2, _, err2 := tryLock(path, "up")
	if err2 == nil {
		defer l2.Unlock()
	}
	if err == nil && err2 == nil {
		t.Errorf("two processes hold VM v1's lock at once")
	}
	if !errors.Is(err, errStaleLock) {
		t.Errorf("a lock on a removed lock file: %v, want errStaleLock", err)
	}
}

// a re-up that finishes the seed replacement (the later seed made by this
// run) and is interrupted after the redefinition: remove_partial deletes the
// seed the completed domain now boots with.
func TestInterruptedReupKeepsTheSeedItsDomainBootsFrom(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	// As after a completion whose seed replacement failed: the first seed is
	// still attached and the later one is not there.
	paths := pathsFor(h.env.Home, "v1")
	setJournalField(t, paths.Journal(), "seed_volume", "")
	h.fake.world.Volumes["vmup/v1-seed.iso"] = true
	delete(h.fake.world.Volumes, "vmup/v1-seed-boot.iso")
	var once sync.Once
	h.fake.onCall = func(args []string) {
		if len(args) > 2 && args[1] == "vol-delete" && args[len(args)-1] == "v1-seed.iso" {
			once.Do(func() {
				h.sigs <- syscall.SIGINT
				h.events.waitFor(t, "aborting", "")
			})
		}
	}
	code := h.wait(h.up("v1", "-d"))
	xml := h.fake.world.XML["v1"]
	t.Logf("exit %d; domain seed-boot attached: %v; seed-boot volume exists: %v; journal seed %q",
		code, strings.Contains(xml, "v1-seed-boot.iso"), h.fake.world.Volumes["vmup/v1-seed-boot.iso"], h.journal().SeedVolume)
	if strings.Contains(xml, "v1-seed-boot.iso") && !h.fake.world.Volumes["vmup/v1-seed-boot.iso"] {
		t.Errorf("the completed domain boots from v1-seed-boot.iso, which the interrupted re-up deleted")
	}
}

// a journal that names a private ControlMaster dir (a killed up on a long
// state path) is invalid as soon as TMPDIR differs: every command refuses the
// completed VM and the hint says to destroy it.
func TestControlDirJournalledUnderAnotherTMPDIRStillReads(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	dir, _ := newControlDir()
	defer os.RemoveAll(dir)
	setJournalField(t, paths.Journal(), "control_dir", dir)
	if _, err := readJournal(paths); err != nil {
		t.Fatalf("valid under the same TMPDIR: %v", err)
	}
	t.Setenv("TMPDIR", t.TempDir())
	if _, err := readJournal(paths); err != nil {
		var je *journalError
		errors.As(err, &je)
		t.Errorf("under another TMPDIR the completed VM's journal is refused: %v (hint: %s)", err, je.Hint())
	}
}

// a VM made by the previous release (state.json without "volumes" and
// "seed_volume", seed named v1-seed.iso): destroy removes the domain and the
// state and leaves every volume in the pool.
func TestDestroyOfAPreviousReleaseVMRemovesItsVolumes(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	data, _ := os.ReadFile(paths.Journal())
	m := map[string]any{}
	json.Unmarshal(data, &m)
	delete(m, "volumes")
	delete(m, "seed_volume")
	delete(m, "version") // the previous release wrote none
	data, _ = json.Marshal(m)
	os.WriteFile(paths.Journal(), data, 0o600)
	if code := h.destroy(); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	var left []string
	for v := range h.fake.world.Volumes {
		if strings.HasPrefix(v, "vmup/v1") {
			left = append(left, v)
		}
	}
	if len(left) > 0 {
		t.Errorf("destroy said %q but left %v", strings.TrimSpace(h.stderr.String()), left)
	}
}

// validVMVolume accepts another VM's volume: VM "a-seed"'s first seed
// "a-seed-seed.iso" passes as a volume of VM "a".
func TestVolumeNamesAreExactlyTheVMsOwn(t *testing.T) {
	if validName("a-seed") && validVMVolume("a", "a-seed-seed.iso") {
		t.Errorf(`a journal of VM "a" may name "a-seed-seed.iso", the first seed (with its private host key) of VM "a-seed"`)
	}
	if validVMVolume("a", "a-seed-anything.iso") {
		t.Errorf(`validVMVolume("a", "a-seed-anything.iso") = true: vmup makes only a-seed.iso and a-seed-boot.iso`)
	}
}
