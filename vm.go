package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// vmRun is the VM one `vmup up` works on: its settings, its journal, what
// this run made and runs for it, and the operations on it (preparing its
// volumes and seed, defining its domain). The workers that report to the
// controller (prepare, boot, provision, …; methods of upRun) run on
// goroutines of their own, so j and the flags beside it are guarded by jmu;
// the other fields are set before a worker reads them.
type vmRun struct {
	env   Env       // set by runUp
	o     *Options  // set by runUp; a later up's inherit fills in the VM's own settings
	paths Paths     // set by runUp
	virsh *Virsh    // set by runUp
	kind  startKind // set by runUp
	// recover names an earlier, killed first boot that must be removed first (runUp).
	recover *Journal
	// replaced is the journal of the VM that --reset replaces (runUp).
	replaced *Journal
	// resetCutOff: the journal says a reset was at work when its vmup died (runUp).
	resetCutOff bool

	jmu sync.Mutex
	j   *Journal // changed only through updateJournal, by any worker
	// holdJournal keeps j off the disk while the journal there still
	// describes the VM as it was (runUp sets it, releaseJournal clears it).
	holdJournal bool
	wiped       bool // the state dir is gone: nothing more is written (wipe, removePartial)

	masterCtx    context.Context    // the ssh ControlMaster's life: run makes it, finish and wipe end it
	masterCancel context.CancelFunc //
	ssh          *SSH               // set by the boot worker once SSH works
	masterDone   <-chan error       // set by the boot worker; finish waits on it
	forwards     *forwarder         // NAT forwards: claimed while preparing or opened by enterRunning, closed by finish

	created created // what this run made in Preparing, for remove_partial; added to by the prepare worker
	// restored: the guest runs on from a saved or snapshotted state, so its
	// clock is behind (set by the boot or reset worker, before the boot worker reads it)
	restored bool
	// hasSave: prepareReup found a managed save, which the start restores
	// whatever the domain's state says (a failed restore leaves "failed").
	hasSave bool
	logPath string // the last playbook log, set by the provision worker

	// templateKey is the key of this VM's recipe under --template (Preparing
	// sets it, with imageSHA256); cloneOf the template it is cloned from,
	// held until releaseTemplate.
	templateKey, imageSHA256 string
	cloneOf                  *TemplateRecord
	releaseTemplate          func()
	templateSaved            bool // the VM was saved to make its template (and restored since)
	templatePaused           bool // the VM was paused to copy its disk for its template
	// keepMu orders the maker's restore of a VM saved for its template and
	// a force off: a VM forced off while saved stays off (forcing).
	keepMu  sync.Mutex
	forcing bool
}

// created is what a run made in Preparing, undone by an interrupt there.
type created struct {
	mu      sync.Mutex
	dir     bool
	domain  bool
	volumes []string
}

func (c *created) add(vol string) {
	c.mu.Lock()
	c.volumes = append(c.volumes, vol)
	c.mu.Unlock()
}

func (c *created) drop(vol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, v := range c.volumes {
		if v == vol {
			c.volumes = append(c.volumes[:i], c.volumes[i+1:]...)
			return
		}
	}
}

// The first boot's seed holds the guest's private host key; the seed of later
// boots only the instance id.
func firstSeedVolume(name string) string { return name + "-seed.iso" }
func laterSeedVolume(name string) string { return name + "-seed-boot.iso" }

// A disk-only provisioned state freezes NAME.qcow2; the VM runs on this overlay.
func runDiskVolume(name string) string { return name + "-run.qcow2" }

// diskVolume is the volume the domain's disk is now.
func (u *vmRun) diskVolume() string {
	if u.j.DiskVolume != "" {
		return u.j.DiskVolume
	}
	return u.o.Name + ".qcow2"
}

func (u *vmRun) updateJournal(f func(j *Journal)) error {
	u.jmu.Lock()
	defer u.jmu.Unlock()
	f(u.j)
	if u.wiped || u.holdJournal {
		return nil
	}
	return writeJournal(u.paths, u.j)
}

// releaseJournal lets this run's journal onto the disk: the run is about to
// change the VM or has started it, so the journal there must say so.
func (u *vmRun) releaseJournal() {
	u.jmu.Lock()
	u.holdJournal = false
	u.jmu.Unlock()
}

// ---- workers: each ends by sending one event, unless it was cancelled ----

func (u *upRun) provision(ctx context.Context) {
	out := u.env.Out
	if u.o.Playbook == "" || u.o.NoProvision {
		out.Step("Provisioning")
		out.Skip("no playbook")
		u.completeFirstBoot(ctx)
		return
	}
	out.Step("Provisioning with " + u.o.Playbook)
	if err := writeInventory(u.paths, u.o.Name, u.j.User, u.ssh.ep); err != nil {
		out.Fail(err.Error())
		u.send(EvProvisionFailed, err)
		return
	}
	// While there is space: the playbook may fill the disk.
	if err := u.prepareCompletion(); err != nil {
		out.Fail(err.Error())
		u.send(EvProvisionFailed, fmt.Errorf("cannot prepare the record of the completed first boot: %w", err))
		return
	}
	logPath, err := newAnsible(u.env.Runner).Run(ctx, u.paths, u.ssh, u.o.Playbook, u.o.PlaybookArgs,
		out.Indented("      "), func(pgid int) { u.updateJournal(func(j *Journal) { j.PlaybookPGID = pgid }) })
	u.logPath = logPath
	u.updateJournal(func(j *Journal) { j.PlaybookPGID = 0 })
	if ctx.Err() != nil {
		out.Fail("interrupted")
		return
	}
	if err != nil {
		out.Fail("see " + logPath)
		noteAnsibleExit(out, err, logPath)
		u.send(EvProvisionFailed, err)
		return
	}
	out.Done("")
	u.completeFirstBoot(ctx)
}

func (u *vmRun) prepareCompletion() error {
	u.jmu.Lock()
	defer u.jmu.Unlock()
	return prepareCompletion(u.paths, *u.j)
}

// completeFirstBoot records on disk, before Running is entered, that no
// interrupt may ever wipe this VM again, unless an abort took hold first.
// Then the seed that holds the guest's private host key goes.
func (u *upRun) completeFirstBoot(ctx context.Context) {
	done, err := u.commitFirstBoot(ctx)
	if !done {
		return // a confirmed abort came first: the VM is being removed
	}
	if err != nil {
		u.send(EvRecordFailed, err)
		return
	}
	u.send(EvCompleted, nil)
	u.keepFirstBoot(ctx)
}

// commitFirstBoot records the completed first boot on disk; done is false
// when ctx ended first (a confirmed abort took hold), and nothing is written.
func (u *vmRun) commitFirstBoot(ctx context.Context) (done bool, err error) {
	u.jmu.Lock()
	defer u.jmu.Unlock()
	if ctx.Err() != nil {
		return false, nil
	}
	err = commitCompletion(u.paths)
	if err != nil {
		// No prepared record (no playbook ran): write the journal itself.
		rec := *u.j
		rec.FirstBootDone, rec.PlaybookPGID = true, 0
		err = writeJournal(u.paths, &rec)
	}
	if err == nil {
		u.j.FirstBootDone, u.j.PlaybookPGID = true, 0
	}
	return true, err
}

// keepFirstBoot follows the record of a completed first boot: the seed of
// later boots replaces the first, the provisioned state is kept, and then
// the VM runs (EvProvisioned). Not cancellable: once recorded, the VM is
// kept, so this finishes too.
func (u *upRun) keepFirstBoot(context.Context) {
	seedCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	u.replaceSeed(seedCtx)
	cancel()
	// A memory state takes about as long as writing the guest's RAM.
	keepCtx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	// The template first: a memory snapshot in the disk would be copied too.
	u.makeTemplate(keepCtx)
	u.recordProvisioned(keepCtx)
	cancel()
	u.send(EvProvisioned, nil)
}

// replaceSeed attaches the seed of later boots, made in Preparing, then
// deletes the first-boot seed, which holds the guest's private host key. In
// that order, the VM always has a seed: without one cloud-init would take
// the next boot for a new instance and make new host keys, which the pinned
// known_hosts rejects. A later up finishes what fails here.
func (u *vmRun) replaceSeed(ctx context.Context) {
	later := laterSeedVolume(u.o.Name)
	if u.j.SeedVolume == later {
		return
	}
	err := u.ensureLaterSeed(ctx)
	if err == nil {
		err = u.virsh.Define(ctx, u.paths.File("domain-later.xml"))
	}
	if err != nil {
		u.env.Out.Warn("the cloud-init seed still holds the guest's private host key (%v); `vmup up %s` replaces it later", err, u.o.Name)
		return
	}
	// The domain boots from it now: no undoing of this run may remove it.
	u.created.drop(later)
	u.updateJournal(func(j *Journal) { j.SeedVolume = later })
	first := firstSeedVolume(u.o.Name)
	if err := u.virsh.VolDelete(ctx, u.o.Pool, first); err != nil {
		u.env.Out.Warn("cannot delete the first boot's cloud-init seed: %v", err)
		return
	}
	u.updateJournal(func(j *Journal) {
		j.Volumes = slices.DeleteFunc(j.Volumes, func(v string) bool { return v == first })
	})
}

func (u *upRun) enterRunning() {
	out := u.env.Out
	ep := Endpoint{Host: u.j.SSHHost, Port: u.j.SSHPort}
	if ep.Host == "" {
		ep.Host = "127.0.0.1"
	}
	// The ready line lists only forwards that are served: a user network's by
	// QEMU, a NAT network's by the listeners Preparing bound, while vmup runs.
	var served []Forward
	switch {
	case u.j.Network == "user":
		served = u.o.Forwards
	case u.forwards != nil:
		u.forwards.serve(ep.Host)
		served = u.o.Forwards
	case len(u.o.Forwards) > 0:
		out.Warn("forwards %s are not served: on the NAT network vmup serves them only while `vmup up %s` runs in the foreground",
			strings.Join(forwardStrings(u.o.Forwards), ", "), u.o.Name)
	}
	msg := fmt.Sprintf("VM %s is running: `vmup ssh %s` (%s@%s)", u.o.Name, u.o.Name, u.j.User, ep)
	for _, f := range served {
		msg += fmt.Sprintf(", %s:%d -> %d", f.Addr, f.Host, f.Guest)
	}
	out.Say("ready", "%s", msg)
	if u.envRun != nil {
		u.envRun.report(EnvEvVMRunning) // its environment detaches or watches it
		return
	}
	if u.o.Detach {
		u.send(EvDetach, nil)
		return
	}
	if u.o.SuspendOnStop {
		out.Say("waiting", "Press Ctrl+C to save the VM (`vmup up %s` resumes it)", u.o.Name)
	} else {
		out.Say("waiting", "Press Ctrl+C to shut the VM down")
	}
	u.goWork(u.watch)
}

// watch reports when the domain stops by itself or from outside.
func (u *upRun) watch(ctx context.Context) {
	for sleepCtx(ctx, u.env.Poll) == nil {
		state, err := u.virsh.DomState(ctx, u.o.Name)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNotFound) || (err == nil && state != "running" && state != "paused" && state != "in shutdown") {
			u.send(EvDomainStopped, nil)
			return
		}
	}
}

func (u *upRun) startShutdown() {
	old := u.oldWorkers
	u.env.Out.Say("stopping", "Shutting down VM %s (up to %s; Ctrl+C again forces it off)", u.o.Name, u.o.ShutdownTimeout)
	u.goWork(func(ctx context.Context) {
		u.waitOldWorkers(old)
		timer := time.NewTimer(u.o.ShutdownTimeout)
		defer timer.Stop()
		if err := u.virsh.Shutdown(ctx, u.o.Name); err != nil && ctx.Err() == nil {
			if st, serr := u.virsh.DomState(ctx, u.o.Name); serr == nil && st == "running" {
				u.env.Out.Warn("ACPI shutdown failed: %v", err)
				u.send(EvShutdownTimeout, nil)
			}
		}
		timedOut := false
		for {
			state, err := u.virsh.DomState(ctx, u.o.Name)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errNotFound) || (err == nil && state == "shut off") {
				u.send(EvDomainStopped, nil)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
				if !timedOut {
					timedOut = true
					u.env.Out.Warn("the guest did not shut down within %s", u.o.ShutdownTimeout)
					u.send(EvShutdownTimeout, nil)
				}
			case <-time.After(u.env.Poll):
			}
		}
	})
}

func (u *upRun) forceOff(ctx context.Context) {
	u.env.Out.Say("force_off", "Forcing VM %s off", u.o.Name)
	// A restore for a template under way ends first; one not begun never is.
	u.keepMu.Lock()
	u.forcing = true
	saved := u.templateSaved
	u.keepMu.Unlock()
	err := u.virsh.Destroy(ctx, u.o.Name)
	if (err == nil || errors.Is(err, errNotFound)) && ctx.Err() == nil {
		u.send(EvDomainStopped, nil) // a force from running has no shutdown poll to see it
	}
	if err == nil || ctx.Err() != nil || errors.Is(err, errNotFound) {
		return
	}
	if st, serr := u.virsh.DomState(ctx, u.o.Name); serr == nil && st != "running" {
		if st == "shut off" && saved {
			u.send(EvDomainStopped, nil) // saved for its template: off, and no shutdown poll sees it
		}
		return
	}
	u.send(EvForceOffFailed, err)
}
