package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// validVMVolume says whether vol is a name vmup gives a volume of VM name
// (NAME.qcow2, NAME-seed*.iso, NAME-kernel, NAME-initrd), so that a journal
// read from disk cannot make vmup delete any other volume.
func validVMVolume(name, vol string) bool {
	if !validName(name) {
		return false
	}
	// Exactly these: VM "a-seed"'s first seed is "a-seed-seed.iso".
	switch vol {
	case name + ".qcow2", runDiskVolume(name), name + "-kernel", name + "-initrd", firstSeedVolume(name), laterSeedVolume(name):
		return true
	}
	return false
}

func (u *upRun) wipe(_ context.Context, old []*sync.WaitGroup) {
	// stop_work came first: completeFirstBoot records a completion only
	// under jmu while its context lives, so what the journal says now is
	// final, and the stopped workers need not be waited for to decide.
	u.jmu.Lock()
	completed := u.j.FirstBootDone
	u.jmu.Unlock()
	if completed {
		u.waitOldWorkers(old)
		u.env.Out.Say("kept", "The first boot of VM %s completed before the abort took hold: it is kept", u.o.Name)
		u.send(EvCompletedMeanwhile, nil)
		return
	}
	// Cleanup must finish even though the run was interrupted.
	ctx := context.Background()
	// The domain goes off while the stopped workers end (the playbook takes
	// its SIGINT): killing QEMU takes seconds of its own.
	off := make(chan struct{})
	go func() {
		defer close(off)
		if owned, err := u.virsh.Owned(ctx, u.o.Name); err == nil && owned {
			u.virsh.Destroy(ctx, u.o.Name)
		}
	}()
	u.waitOldWorkers(old)
	<-off
	reapGroup(u.j.PlaybookPGID, u.paths)
	if u.ssh != nil {
		u.ssh.Exit(ctx)
	}
	u.masterCancel()
	u.jmu.Lock()
	vols := slices.Clone(u.j.Volumes)
	u.jmu.Unlock()
	if err := wipeVM(ctx, u.virsh, u.o.Pool, u.paths, vols); err != nil {
		u.send(EvWipeFailed, err)
		return
	}
	u.jmu.Lock()
	u.wiped = true
	u.jmu.Unlock()
	u.send(EvWipeDone, nil)
}

// removePartial undoes what this run created in Preparing, and nothing else.
func (u *upRun) removePartial(old []*sync.WaitGroup) {
	u.waitOldWorkers(old)
	ctx := context.Background() // cleanup must finish even though the run was interrupted
	c := &u.created
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	if c.domain {
		errs = append(errs, u.virsh.Undefine(ctx, u.o.Name))
	}
	for i := len(c.volumes) - 1; i >= 0; i-- {
		errs = append(errs, u.virsh.VolDeleteWhenFree(ctx, u.o.Pool, c.volumes[i], 10*time.Second))
	}
	if c.dir {
		u.jmu.Lock()
		u.wiped = true
		u.jmu.Unlock()
		errs = append(errs, os.RemoveAll(u.paths.Dir))
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, errNotFound) {
			u.send(EvWipeFailed, err)
			return
		}
	}
	u.send(EvWipeDone, nil)
}

// reapGroup kills what is left of a process group that an earlier vmup
// started for this VM. A recorded group id may have been reused since, so only
// members whose command line names the VM's state dir are killed.
func reapGroup(pgid int, p Paths) {
	if pgid <= 1 {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := unix.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && namesDir(cmdline, p.Dir) {
			unix.Kill(pid, syscall.SIGKILL)
		}
	}
}

// namesDir says whether an argv word names dir or a path in it: dir must be a
// whole path component (vms/web is not vms/web2). It may start a word, follow
// '=' (-o IdentityFile=…) or stand in ansible's joined, quoted ssh_args.
func namesDir(cmdline []byte, dir string) bool {
	if dir == "" {
		return false
	}
	for _, arg := range strings.Split(string(cmdline), "\x00") {
		for i := 0; ; {
			j := strings.Index(arg[i:], dir)
			if j < 0 {
				break
			}
			start, end := i+j, i+j+len(dir)
			before := start == 0 || strings.ContainsRune("= '\"", rune(arg[start-1]))
			after := end == len(arg) || strings.ContainsRune("/ '\"", rune(arg[end]))
			if before && after {
				return true
			}
			i = start + 1
		}
	}
	return false
}

// wipeVM removes a vmup VM: domain, the volumes its journal lists (vols),
// state. Nothing of it is left but the shared base volume. A domain vmup did
// not create is refused, and so is a journal that names a volume vmup would
// not have made for this VM.
func wipeVM(ctx context.Context, v *Virsh, pool string, p Paths, vols []string) error {
	name := p.Name()
	for _, vol := range vols {
		if !validVMVolume(name, vol) {
			return fmt.Errorf("%s names volume %q, which is no volume of VM %s; not deleting anything", p.Journal(), vol, name)
		}
	}
	owned, err := v.Owned(ctx, name)
	switch {
	case errors.Is(err, errNotFound):
	case err != nil:
		return err
	case !owned:
		return fmt.Errorf("domain %s was not created by vmup; not touching it", name)
	default:
		if err := removeDomain(ctx, v, name); err != nil {
			return err
		}
	}
	for _, vol := range vols {
		if err := v.VolDelete(ctx, pool, vol); err != nil {
			return err
		}
	}
	// A private socket dir (see controlPath) goes with the VM.
	if j, err := readJournal(p); err == nil && j != nil && validControlDir(j.ControlDir) == nil {
		os.RemoveAll(j.ControlDir)
	}
	return os.RemoveAll(p.Dir)
}

// removeDomain stops and undefines a domain with what virsh users may have
// added by hand: internal snapshots, a managed save image, UEFI NVRAM.
// External snapshots name files vmup did not make: refused before anything
// is changed.
func removeDomain(ctx context.Context, v *Virsh, name string) error {
	external, err := v.Snapshots(ctx, name, "--external")
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	if len(external) > 0 {
		return &hintedError{
			msg:  fmt.Sprintf("domain %s has external snapshots that vmup did not make (%s); nothing was removed", name, strings.Join(external, ", ")),
			hint: fmt.Sprintf("remove them with `virsh -c %s snapshot-delete %s NAME`, or merge them into the disk, then run the command again", v.uri, name),
		}
	}
	if err := v.Destroy(ctx, name); err != nil && !errors.Is(err, errNotFound) && !isNotRunning(err) {
		return err
	}
	internal, err := v.Snapshots(ctx, name, "--internal")
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	for _, snap := range internal {
		if err := v.SnapshotDelete(ctx, name, snap); err != nil && !errors.Is(err, errNotFound) {
			return err
		}
	}
	if err := v.Undefine(ctx, name); err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	return nil
}

func isNotRunning(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "not running")
}
