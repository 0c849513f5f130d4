// The Resetting worker: the VM back to its provisioned state, with its journal in step.
package main

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// reset is Resetting's worker. Cut short, the VM would be in neither state,
// so it runs to its end whatever signal comes (each step is quick).
func (u *upRun) reset(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	out, o := u.env.Out, u.o
	u.releaseJournal()
	out.Step("Resetting to the provisioned state")
	p := u.j.Provisioned
	u.jmu.Lock()
	before := settingsOf(u.j)
	u.jmu.Unlock()
	// The definition a disk reset makes is built from these; a reset that
	// fails puts back the ones from before.
	u.useSettings(p)
	var err error
	if p.Kind == "memory" {
		err = u.resetMemory(ctx)
	} else {
		err = u.resetDisk(ctx)
	}
	if err != nil {
		out.Fail(err.Error())
		// Libvirt may have left either definition (a revert whose start
		// failed has made the snapshot's the domain's): the one of the
		// settings from before is defined again, as the journal says.
		u.useSettings(before)
		if derr := u.define(ctx); derr != nil {
			out.Warn("VM %s's definition may not match its journal: %v", o.Name, derr)
		}
		u.send(EvResetFailed, &hintedError{
			msg:  fmt.Sprintf("could not reset VM %s: %v", o.Name, err),
			hint: fmt.Sprintf("run `vmup reset %s` to try again, `vmup up %s` to start it as it is, or `vmup destroy %s`", o.Name, o.Name, o.Name),
		})
		return
	}
	out.Done("")
	u.send(EvResetDone, nil)
}

// settingsOf is the settings part of a journal.
func settingsOf(j *Journal) *Provisioned {
	return &Provisioned{Network: j.Network, SSHHost: j.SSHHost, SSHPort: j.SSHPort, Forwards: j.Forwards, Restrict: j.Restrict,
		CPUs: j.CPUs, MemoryMiB: j.MemoryMiB, DiskGiB: j.DiskGiB}
}

// useSettings makes the journal and the options hold s's settings.
func (u *upRun) useSettings(s *Provisioned) {
	u.updateJournal(func(j *Journal) {
		j.Network, j.SSHHost, j.SSHPort, j.Forwards, j.Restrict = s.Network, s.SSHHost, s.SSHPort, s.Forwards, s.Restrict
		j.CPUs, j.MemoryMiB, j.DiskGiB = s.CPUs, s.MemoryMiB, s.DiskGiB
	})
	o := u.o
	o.Network, o.CPUs, o.MemoryMiB, o.DiskGiB, o.RestrictNetwork = s.Network, s.CPUs, s.MemoryMiB, s.DiskGiB, s.Restrict
	o.Forwards = nil
	for _, f := range s.Forwards {
		if f, err := parseForward(f); err == nil {
			o.Forwards = append(o.Forwards, f)
		}
	}
}

// discardSaved drops a managed save image: started later, it would bring
// back memory that belongs to another disk.
func (u *vmRun) discardSaved(ctx context.Context) error {
	state, reason, err := u.virsh.DomStateReason(ctx, u.o.Name)
	if err != nil || !isSaved(state, reason) {
		return err
	}
	return u.virsh.ManagedSaveRemove(ctx, u.o.Name)
}

func (u *upRun) resetMemory(ctx context.Context) error {
	if err := u.discardSaved(ctx); err != nil {
		return err
	}
	if err := u.virsh.SnapshotRevert(ctx, u.o.Name, provisionedSnapshot); err != nil {
		return err
	}
	u.restored = true
	return nil
}

// resetDisk forces the VM off (what it holds is being discarded), makes its
// overlay anew on the frozen disk, puts the NVRAM back and redefines it with
// the provisioned settings; the boot that follows starts it.
func (u *upRun) resetDisk(ctx context.Context) error {
	name, pool := u.o.Name, u.o.Pool
	if err := u.virsh.Destroy(ctx, name); err != nil && !errors.Is(err, errNotFound) && !isNotRunning(err) {
		return err
	}
	if err := u.discardSaved(ctx); err != nil {
		return err
	}
	if err := u.virsh.VolDelete(ctx, pool, runDiskVolume(name)); err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	if err := u.createOverlay(ctx); err != nil {
		return err
	}
	if nvram := u.j.Provisioned.NVRAM; nvram != "" {
		if err := u.copyNVRAM(nvram, false); err != nil {
			return fmt.Errorf("cannot put the NVRAM back: %w", err)
		}
	}
	return u.define(ctx)
}
