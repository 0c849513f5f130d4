// Re-up: resuming a saved VM, booting one that is shut off, and the ports its forwards claim.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// prepareResume picks up a first boot that failed earlier: same disk and seed.
func (u *vmRun) prepareResume(ctx context.Context) error {
	out, o := u.env.Out, u.o
	out.Plan(5)
	out.Step("Checking VM")
	if settingsChanged(o, u.j) {
		return &usageError{
			msg:  fmt.Sprintf("VM %s has not completed its first boot; its settings cannot change before it has", o.Name),
			hint: fmt.Sprintf("run `vmup up %s` without new settings to retry the first boot, or `vmup destroy %s` and create it anew", o.Name, o.Name),
		}
	}
	state, err := u.virsh.DomState(ctx, o.Name)
	if err != nil {
		return err
	}
	if err := u.claimForwards(state == "running"); err != nil {
		return err
	}
	if o.DiscardSaved {
		// Saved after its playbook failed: dropped, it boots afresh and the playbook is retried.
		state, reason, err := u.virsh.DomStateReason(ctx, o.Name)
		if err != nil {
			return err
		}
		if isSaved(state, reason) {
			u.releaseJournal()
			out.Say("discarding", "Discarding the saved state of VM %s: it boots afresh", o.Name)
			if err := u.virsh.ManagedSaveRemove(context.WithoutCancel(ctx), o.Name); err != nil {
				return err
			}
		}
	}
	out.Done("resuming its first boot")
	return nil
}

// settingsChanged says whether this run asks for settings the VM does not have.
func settingsChanged(o *Options, j *Journal) bool {
	return o.Network != j.Network || o.CPUs != j.CPUs || o.MemoryMiB != j.MemoryMiB || o.DiskGiB != j.DiskGiB ||
		!slices.Equal(forwardStrings(o.Forwards), j.Forwards) || o.RestrictNetwork != j.Restrict
}

// prepareReup checks a VM whose first boot completed, redefining it when its
// settings changed and it is shut off.
func (u *vmRun) prepareReup(ctx context.Context) (Event, error) {
	out, o, j := u.env.Out, u.o, u.j
	out.Plan(3)
	out.Step("Checking VM")
	state, reason, err := u.virsh.DomStateReason(ctx, o.Name)
	if err != nil {
		if errors.Is(err, errNotFound) {
			return 0, &hintedError{
				msg:  fmt.Sprintf("the domain of VM %s is gone", o.Name),
				hint: fmt.Sprintf("run `vmup destroy %s` to clear what is left", o.Name),
			}
		}
		return 0, err
	}
	if p := j.Provisioned; u.resetCutOff && p != nil && p.Kind == "template" {
		// Its disk may be made anew on the template's, which holds the
		// template VM's identity, or it may run with that identity: only
		// a reset brings its template's state and its own identity back.
		return 0, &hintedError{
			msg:  fmt.Sprintf("the last reset of VM %s, a clone of template %s, did not complete", o.Name, shortKey(j.Template)),
			hint: fmt.Sprintf("run `vmup reset %s` to finish it, or `vmup destroy %s`", o.Name, o.Name),
		}
	}
	if state == "paused" {
		// vmup pauses a VM only while it copies the disk for a template:
		// one killed meanwhile (or a hand's `virsh suspend`) left it so.
		if err := u.virsh.Resume(ctx, o.Name); err != nil {
			return 0, fmt.Errorf("VM %s is paused and cannot be resumed: %w", o.Name, err)
		}
		out.Warn("VM %s was paused, as a template's making that was cut off leaves it: resumed, its clock behind by the pause", o.Name)
		state = "running"
	}
	running := state != "shut off" && state != "crashed"
	changed := settingsChanged(o, j)
	saved := isSaved(state, reason)
	if state == "shut off" && reason == "failed" {
		// A restore that failed (a hand's `virsh start`, say) leaves this
		// reason and the save, which the next start restores.
		if saved, err = u.virsh.HasManagedSave(ctx, o.Name); err != nil {
			return 0, err
		}
	}
	if saved && !o.DiscardSaved {
		if err := u.checkRestore(ctx, changed); err != nil {
			return 0, err
		}
		u.hasSave = true
	}
	if changed && running {
		return 0, &usageError{
			msg: fmt.Sprintf("VM %s is running with other settings (network %s, restrict-network %v, cpus %d, memory %d, disk %d, forwards %v)",
				o.Name, j.Network, j.Restrict, j.CPUs, j.MemoryMiB, j.DiskGiB, j.Forwards),
			hint: fmt.Sprintf("run `vmup down %s` first; the new settings apply at its next start", o.Name),
		}
	}
	if o.DiskGiB < j.DiskGiB {
		return 0, &usageError{msg: fmt.Sprintf("--disk %d is smaller than the VM's disk (%d GiB); disks only grow", o.DiskGiB, j.DiskGiB)}
	}
	if err := u.claimForwards(running); err != nil {
		return 0, err
	}
	if saved && o.DiscardSaved {
		// Only once nothing else refuses this run: the memory is lost for good.
		u.releaseJournal()
		out.Say("discarding", "Discarding the saved state of VM %s: it boots afresh", o.Name)
		if err := u.virsh.ManagedSaveRemove(context.WithoutCancel(ctx), o.Name); err != nil {
			return 0, err
		}
	}
	// Something else may have taken the SSH port while the VM was off.
	portTaken := !running && j.Network == "user" && o.Network == "user" && !portFree(j.SSHPort)
	// A reset cut off (killed, or failed after its overlay went) left the
	// domain and the journal out of step, or no overlay: the journal's
	// settings and a new overlay on the frozen disk make it whole again.
	resetCutOff := false
	if !running && !saved {
		if resetCutOff, err = u.overlayMissing(ctx); err != nil {
			return 0, err
		}
		resetCutOff = resetCutOff || u.resetCutOff
	}
	if resetCutOff {
		u.releaseJournal()
		if err := u.ensureOverlay(context.WithoutCancel(ctx)); err != nil {
			return 0, err
		}
	}
	if changed || portTaken || resetCutOff {
		u.releaseJournal()
		// Not cut short by an interrupt (each step is quick): the interrupt
		// takes effect once the domain and the journal agree again.
		if err := u.redefine(context.WithoutCancel(ctx), portTaken); err != nil {
			return 0, err
		}
		out.Done("settings updated")
	} else {
		out.Done("")
	}
	if u.j.SeedVolume != laterSeedVolume(o.Name) && !(saved && !o.DiscardSaved) {
		u.releaseJournal()
		u.replaceSeed(ctx) // what the completion of the first boot could not do
	}
	if running {
		out.Plan(1)
		return EvPreparedRunning, nil
	}
	return EvPreparedBoot, nil
}

// checkRestore decides about a saved VM: a restore brings back the
// definition saved with its memory, so new settings, or an SSH port taken
// meanwhile, are refused unless the user gives up the saved state
// (--discard-saved, done by prepareReup once nothing else refuses the run).
// A saved definition still naming the first boot's seed (its save was cut
// short) is repointed, or the restore would fail.
func (u *vmRun) checkRestore(ctx context.Context, changed bool) error {
	o, j := u.o, u.j
	discard := fmt.Sprintf("`vmup up %s --discard-saved` to boot it afresh instead (its memory is lost)", o.Name)
	if changed {
		return &usageError{
			msg: fmt.Sprintf("VM %s is saved with other settings (network %s, restrict-network %v, cpus %d, memory %d, disk %d, forwards %v), which its restore brings back",
				o.Name, j.Network, j.Restrict, j.CPUs, j.MemoryMiB, j.DiskGiB, j.Forwards),
			hint: fmt.Sprintf("run `vmup up %s` without new settings to resume it, or %s", o.Name, discard),
		}
	}
	if j.Network == "user" && !portFree(j.SSHPort) {
		return &usageError{
			msg:  fmt.Sprintf("SSH port %d of saved VM %s is taken by another program, and its restore needs it", j.SSHPort, o.Name),
			hint: fmt.Sprintf("free port %d and run `vmup up %s` again, or %s", j.SSHPort, o.Name, discard),
		}
	}
	if err := repointSavedSeed(ctx, u.virsh, o.Pool, u.paths); err != nil {
		return &hintedError{
			msg:  fmt.Sprintf("the saved state of VM %s names the first boot's seed, deleted since, and cannot be made to name the later one: %v", o.Name, err),
			hint: fmt.Sprintf("run `vmup up %s` again, or %s", o.Name, discard),
		}
	}
	return nil
}

// claimForwards finds a forward whose host port cannot be bound before the VM
// starts. A NAT network's forwards are vmup's own listeners: bound now, held
// until vmup ends and served once the guest's address is known. QEMU binds a
// user network's when the domain starts, so their ports must be free now.
func (u *vmRun) claimForwards(running bool) error {
	o := u.o
	switch {
	case len(o.Forwards) == 0, o.Network == "nat" && o.Detach, o.Network == "user" && running:
		return nil // none, not served (enterRunning says so), or QEMU holds them
	}
	fw, err := listenForwards(o.Forwards)
	if err != nil {
		return err
	}
	if o.Network == "user" {
		fw.Close()
		return nil
	}
	u.forwards = fw
	return nil
}

// freePort picks a loopback port for SSH that no other vmup VM has journalled.
func (u *vmRun) freePort() (int, error) {
	taken := map[int]bool{}
	names, _ := listVMs(u.env.Home)
	for _, n := range names {
		if n == u.o.Name {
			continue
		}
		if j, err := readJournal(pathsFor(u.env.Home, n)); err == nil && j != nil {
			taken[j.SSHPort] = true
		}
	}
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !taken[port] {
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port")
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func defaultPoolTarget(uri string) string {
	if strings.Contains(uri, "/session") {
		if d := os.Getenv("XDG_DATA_HOME"); d != "" {
			return filepath.Join(d, "vmup", "pool")
		}
		home, _ := os.UserHomeDir()
		return filepath.Join(home, ".local", "share", "vmup", "pool")
	}
	return "/var/lib/libvirt/images/vmup"
}
