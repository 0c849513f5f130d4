package main

import (
	"context"
	"encoding/xml"
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
	return wipeVMAsked(ctx, v, pool, p, vols, nil)
}

// wipeVMAsked is wipeVM with its questions to libvirt already asked (nil:
// ask them now), so that `destroy` asks them while it checks libvirt.
func wipeVMAsked(ctx context.Context, v *Virsh, pool string, p Paths, vols []string, f *domainFacts) error {
	name := p.Name()
	for _, vol := range vols {
		if !validVMVolume(name, vol) {
			return fmt.Errorf("%s names volume %q, which is no volume of VM %s; not deleting anything", p.Journal(), vol, name)
		}
	}
	if f == nil {
		f = askDomain(ctx, v, name, pool, len(vols) > 0)
	}
	if err := removeDomain(ctx, v, name, vols, f); err != nil {
		return err
	}
	if err := deleteVolumes(ctx, v, pool, vols); err != nil {
		return err // the state stays: it names what a retry deletes
	}
	// A private socket dir (see controlPath) goes with the VM.
	if j, err := readJournal(p); err == nil && j != nil && validControlDir(j.ControlDir) == nil {
		os.RemoveAll(j.ControlDir)
	}
	return os.RemoveAll(p.Dir)
}

// deleteVolumes deletes the volumes at once: each is tried even when
// another fails, and every failure is told.
func deleteVolumes(ctx context.Context, v *Virsh, pool string, vols []string) error {
	errs := make([]error, len(vols))
	var wg sync.WaitGroup
	for i, vol := range vols {
		wg.Go(func() { errs[i] = v.VolDelete(ctx, pool, vol) })
	}
	wg.Wait()
	return joinErrors(errs...)
}

// joinedErrors is errors.Join on one line: vmup's error voice is one line.
type joinedErrors []error

// joinErrors is the errors that are not nil, or nil if none is.
func joinErrors(errs ...error) error {
	if errs = slices.DeleteFunc(errs, func(err error) bool { return err == nil }); len(errs) > 0 {
		return joinedErrors(errs)
	}
	return nil
}

func (e joinedErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e joinedErrors) Unwrap() []error { return e }

// domainFacts is what removing a domain decides on, asked at once before
// anything is changed (a virsh session answers each in milliseconds, a
// virsh process of its own in ~40 ms).
type domainFacts struct {
	owned              bool
	state              string // virsh's word: "running", "shut off", …
	external, internal []string
	xml                string
	volPaths           map[string]string // the pool's volumes' files, by name

	ownedErr, stateErr, externalErr, internalErr, xmlErr, volPathsErr error
}

// askDomain asks libvirt everything removeDomain decides on, concurrently.
// withPool lists the pool too (only needed when volumes are deleted).
func askDomain(ctx context.Context, v *Virsh, name, pool string, withPool bool) *domainFacts {
	f := &domainFacts{}
	var wg sync.WaitGroup
	wg.Go(func() { f.owned, f.ownedErr = v.Owned(ctx, name) })
	wg.Go(func() { f.state, f.stateErr = v.DomState(ctx, name) })
	wg.Go(func() { f.external, f.externalErr = v.Snapshots(ctx, name, "--external") })
	wg.Go(func() { f.internal, f.internalErr = v.Snapshots(ctx, name, "--internal") })
	wg.Go(func() { f.xml, f.xmlErr = v.DumpXML(ctx, name) })
	if withPool {
		wg.Go(func() { f.volPaths, f.volPathsErr = v.VolPaths(ctx, pool) })
	}
	wg.Wait()
	return f
}

// removeDomain stops and undefines a domain with what virsh users may have
// added by hand: internal snapshots, a managed save image, UEFI NVRAM.
// External snapshots name files vmup did not make: refused before anything
// is changed.
func removeDomain(ctx context.Context, v *Virsh, name string, vols []string, f *domainFacts) error {
	switch {
	case errors.Is(f.ownedErr, errNotFound):
		return nil
	case f.ownedErr != nil:
		return f.ownedErr
	case !f.owned:
		return fmt.Errorf("domain %s was not created by vmup; not touching it", name)
	}
	for _, err := range []error{f.externalErr, f.internalErr} {
		if err != nil && !errors.Is(err, errNotFound) {
			return err
		}
	}
	if len(f.external) > 0 {
		return &hintedError{
			msg:  fmt.Sprintf("domain %s has external snapshots that vmup did not make (%s); nothing was removed", name, strings.Join(f.external, ", ")),
			hint: fmt.Sprintf("remove them with `virsh -c %s snapshot-delete %s NAME`, or merge them into the disk, then run the command again", v.uri, name),
		}
	}
	// A state libvirt could not tell is treated as running.
	if f.stateErr != nil || f.state != "shut off" {
		if err := v.Destroy(ctx, name); err != nil && !errors.Is(err, errNotFound) && !isNotRunning(err) {
			return err
		}
	}
	// Undefine drops internal snapshots' metadata; their data is in the
	// disks, deleted right after. Only a disk that stays (no journal, or one
	// added by hand) would keep it: then each is deleted first, slowly.
	if len(f.internal) > 0 && !disksDeleted(f, vols) {
		for _, snap := range f.internal {
			if err := v.SnapshotDelete(ctx, name, snap); err != nil && !errors.Is(err, errNotFound) {
				return err
			}
		}
	}
	if err := v.Undefine(ctx, name); err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	return nil
}

// disksDeleted says whether every disk of the domain's definition is a file
// of one of vols, which the wipe deletes; false when it cannot tell.
func disksDeleted(f *domainFacts, vols []string) bool {
	if f.xmlErr != nil || f.volPathsErr != nil {
		return false
	}
	var d struct {
		Disks []struct {
			Type   string `xml:"type,attr"`
			Source *struct {
				File string `xml:"file,attr"`
			} `xml:"source"`
		} `xml:"devices>disk"`
	}
	if err := xml.Unmarshal([]byte(f.xml), &d); err != nil {
		return false
	}
	deleted := map[string]bool{}
	for _, vol := range vols {
		if path := f.volPaths[vol]; path != "" {
			deleted[path] = true
		}
	}
	for _, disk := range d.Disks {
		switch {
		case disk.Source == nil: // an empty drive
		case disk.Type != "file" || !deleted[disk.Source.File]:
			return false
		}
	}
	return true
}

func isNotRunning(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "not running")
}
