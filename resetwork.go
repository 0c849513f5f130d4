// The Resetting worker: the VM back to its provisioned state, with its journal in step.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// reset is Resetting's worker. Cut short, the VM would be in neither state,
// so it runs to its end whatever signal comes (each step is quick).
//
// The journal on disk and the domain's definition never disagree about the
// SSH port and forwards, whenever vmup dies or VMUP_HOME fills up: what the
// reset writes there is staged before the VM changes (a full disk changes
// nothing), and the journal naming the provisioned settings is put in place
// (a rename) once the domain is off, before it is reverted or redefined. A
// reset cut off after that leaves a shut-off domain and a journal saying
// `resetting`, which the next up defines the domain from (prepareReup).
func (u *upRun) reset(ctx context.Context) {
	limit := 5 * time.Minute
	if p := u.j.Provisioned; p != nil && p.Kind == "template" && u.j.Network != "user" {
		limit += u.o.BootTimeout // a clone on nat boots its template's disk
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), limit)
	defer cancel()
	out, o := u.env.Out, u.o
	out.Step("Resetting to the provisioned state")
	p := u.j.Provisioned
	u.jmu.Lock()
	before := settingsOf(u.j)
	u.jmu.Unlock()
	// The journal is still held: these settings stay in memory until committed.
	u.useSettings(p)
	if err := u.stageReset(ctx, p.Kind); err != nil {
		u.useSettings(before)
		os.Remove(u.paths.File(stagedJournal))
		os.Remove(u.paths.File(stagedDefinition))
		out.Fail(err.Error())
		u.send(EvResetFailed, &hintedError{
			msg:  fmt.Sprintf("could not reset VM %s, which is left as it was: cannot write its state in %s: %v", o.Name, u.paths.Dir, err),
			hint: fmt.Sprintf("free space in %s and run `vmup reset %s` again", u.env.Home, o.Name),
		})
		return
	}
	var err error
	switch p.Kind {
	case "memory":
		err = u.resetMemory(ctx)
	case "template":
		err = u.resetTemplate(ctx)
	default:
		err = u.resetDisk(ctx)
	}
	if err != nil {
		out.Fail(err.Error())
		// Libvirt may have left either definition (a revert whose start
		// failed has made the snapshot's the domain's): the one of the
		// settings from before is defined again, as the journal says. If
		// either cannot be written, the journal still says `resetting`,
		// and the next up defines the domain from it.
		u.useSettings(before)
		if derr := u.define(ctx); derr != nil {
			out.Warn("VM %s's definition may not match its journal: %v", o.Name, derr)
		}
		hint := fmt.Sprintf("run `vmup reset %s` to try again, `vmup up %s` to start it as it is, or `vmup destroy %s`", o.Name, o.Name, o.Name)
		if p.Kind == "template" {
			// A clone's disk may be made anew already: it is not as it was.
			hint = fmt.Sprintf("run `vmup reset %s` to try again, or `vmup destroy %s`", o.Name, o.Name)
		}
		u.send(EvResetFailed, &hintedError{msg: fmt.Sprintf("could not reset VM %s: %v", o.Name, err), hint: hint})
		return
	}
	out.Done("")
	u.send(EvResetDone, nil)
}

// What a reset stages in the state dir before it changes the VM.
const (
	stagedJournal    = "state.json.reset"
	stagedDefinition = "domain-reset.xml"
)

// stageReset writes the journal with the provisioned settings and, for a
// disk reset, the definition it defines, beside the files they replace.
func (u *upRun) stageReset(ctx context.Context, kind string) error {
	if kind == "disk" {
		data, err := u.domainXML(ctx, u.seedVolume())
		if err != nil {
			return err
		}
		if err := writeFileAtomic(u.paths.File(stagedDefinition), data, 0o600); err != nil {
			return err
		}
	}
	u.jmu.Lock()
	j := *u.j
	u.jmu.Unlock()
	j.Version, j.Updated = journalVersion, time.Now().UTC()
	data, err := json.MarshalIndent(&j, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(u.paths.File(stagedJournal), append(data, '\n'), 0o600)
}

// commitReset puts the staged journal in place: a rename needs no space,
// and after the directory's fsync it survives a crash. Later journal
// writes go to disk again.
func (u *upRun) commitReset() error {
	if err := os.Rename(u.paths.File(stagedJournal), u.paths.Journal()); err != nil {
		return fmt.Errorf("cannot record the reset in %s: %w", u.paths.Journal(), err)
	}
	u.releaseJournal()
	return syncDir(u.paths.Dir)
}

// offForReset forces a running domain off: what it runs is being
// discarded, and a reset cut off from here on leaves it shut off.
func (u *upRun) offForReset(ctx context.Context) error {
	if err := u.virsh.Destroy(ctx, u.o.Name); err != nil && !errors.Is(err, errNotFound) && !isNotRunning(err) {
		return err
	}
	return nil
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

// offAndCommitReset begins every kind of reset: the VM forced off (when
// off is set), a saved state dropped, the staged journal put in place.
func (u *upRun) offAndCommitReset(ctx context.Context, off bool) error {
	if off {
		if err := u.offForReset(ctx); err != nil {
			return err
		}
	}
	if err := u.discardSaved(ctx); err != nil {
		return err
	}
	return u.commitReset()
}

func (u *upRun) resetMemory(ctx context.Context) error {
	if err := u.offAndCommitReset(ctx, u.resetRunning); err != nil {
		return err
	}
	if err := u.virsh.SnapshotRevert(ctx, u.o.Name, provisionedSnapshot); err != nil {
		return err
	}
	u.restored = true
	return nil
}

// resetDisk forces the VM off (what it holds is being discarded), makes its
// overlay anew on the frozen disk, puts the NVRAM back and defines it with
// the provisioned settings (staged); the boot that follows starts it.
func (u *upRun) resetDisk(ctx context.Context) error {
	name, pool := u.o.Name, u.o.Pool
	if err := u.offAndCommitReset(ctx, true); err != nil {
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
	file := u.paths.File(stagedDefinition)
	if err := u.virsh.Define(ctx, file); err != nil {
		return err
	}
	os.Rename(file, u.paths.File("domain.xml")) // vmup's copy of what libvirt has
	return nil
}
