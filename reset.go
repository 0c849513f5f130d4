package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The provisioned state is the VM as its first boot completed, kept so that
// `vmup reset` brings it back in seconds instead of a new VM and playbook.
// Where libvirt can (direct kernel boot, BIOS) it is an internal snapshot
// with the guest's memory; with UEFI's pflash it cannot, and the state is
// the disk alone: NAME.qcow2 frozen under the overlay NAME-run.qcow2 that
// the VM runs on, plus a copy of the NVRAM.

const provisionedSnapshot = "vmup-provisioned"

// provisionedKind says what a VM's provisioned state can hold.
func provisionedKind(j *Journal) string {
	if j.Template != "" {
		return "template" // a clone: its template is its provisioned state
	}
	if j.Firmware == "uefi" {
		return "disk"
	}
	return "memory"
}

// recordProvisioned keeps the state the completed first boot left. It is
// best effort: without it the VM is as good, only `vmup reset` cannot be used.
func (u *vmRun) recordProvisioned(ctx context.Context) {
	out, o := u.env.Out, u.o
	if u.j.SeedVolume != laterSeedVolume(o.Name) {
		// A state kept now would name the seed with the guest's private key.
		out.Warn("no provisioned state of VM %s was kept for `vmup reset`: its seed could not be replaced", o.Name)
		return
	}
	u.jmu.Lock()
	j := *u.j
	u.jmu.Unlock()
	p := &Provisioned{Kind: provisionedKind(&j), Network: j.Network, SSHHost: j.SSHHost, SSHPort: j.SSHPort,
		Forwards: j.Forwards, Restrict: j.Restrict, CPUs: j.CPUs, MemoryMiB: j.MemoryMiB, DiskGiB: j.DiskGiB,
		Made: time.Now().UTC()}
	var err error
	if p.Kind == "memory" {
		err = u.snapshotProvisioned(ctx)
	} else {
		p.NVRAM, err = u.freezeProvisionedDisk(ctx)
	}
	if err == nil {
		err = u.updateJournal(func(j *Journal) { j.Provisioned = p })
	}
	if err != nil {
		out.Warn("no provisioned state of VM %s was kept for `vmup reset`: %v", o.Name, err)
	}
}

// snapshotProvisioned takes the internal snapshot with memory, and makes
// its saved definition name the seed of later boots (repointSeed).
func (u *vmRun) snapshotProvisioned(ctx context.Context) error {
	name, pool := u.o.Name, u.o.Pool
	if err := u.virsh.SnapshotCreate(ctx, name, provisionedSnapshot, "vmup: the state VM "+name+"'s first boot completed in"); err != nil {
		return err
	}
	err := func() error {
		xml, err := u.virsh.SnapshotDumpXML(ctx, name, provisionedSnapshot)
		if err != nil {
			return err
		}
		fixed, changed, err := repointSeed(ctx, u.virsh, pool, name, xml)
		if err != nil || !changed {
			return err
		}
		file := u.paths.File("snapshot.xml")
		if err := writeFileAtomic(file, []byte(fixed), 0o600); err != nil {
			return err
		}
		defer os.Remove(file)
		return u.virsh.SnapshotRedefine(ctx, name, file)
	}()
	if err != nil {
		u.virsh.SnapshotDelete(context.WithoutCancel(ctx), name, provisionedSnapshot)
	}
	return err
}

// freezeProvisionedDisk moves the running VM onto a new overlay, leaving
// NAME.qcow2 as it is now, and copies the NVRAM. The journal names the
// overlay before the domain uses it: a crash in between leaves a journal
// whose next definition runs the VM on an overlay of the current disk,
// which loses nothing.
func (u *vmRun) freezeProvisionedDisk(ctx context.Context) (nvram string, err error) {
	name, pool := u.o.Name, u.o.Pool
	base, top := name+".qcow2", runDiskVolume(name)
	if u.ssh != nil {
		u.ssh.Exec(ctx, "sync") // what the guest wrote is in the frozen disk
	}
	if err := u.createOverlay(ctx); err != nil {
		return "", err
	}
	path, err := u.virsh.VolPath(ctx, pool, top)
	if err == nil {
		err = u.updateJournal(func(j *Journal) { j.DiskVolume = top })
	}
	if err == nil {
		err = u.virsh.FreezeDisk(ctx, name, path)
	}
	if err != nil {
		u.updateJournal(func(j *Journal) { j.DiskVolume = "" })
		if derr := u.virsh.VolDelete(context.WithoutCancel(ctx), pool, top); derr == nil {
			u.updateJournal(func(j *Journal) { j.Volumes = slices.DeleteFunc(j.Volumes, func(v string) bool { return v == top }) })
		}
		return "", fmt.Errorf("cannot freeze %s under %s: %w", base, top, err)
	}
	nvram, err = u.nvramPath(ctx)
	if err == nil {
		err = u.copyNVRAM(nvram, true)
	}
	if err != nil {
		u.env.Out.Warn("the NVRAM of VM %s was not kept (%v): a reset leaves it as it is then", name, err)
		return "", nil
	}
	return nvram, nil
}

// overlayMissing says whether a VM that runs on NAME-run.qcow2 lacks it.
func (u *vmRun) overlayMissing(ctx context.Context) (bool, error) {
	if u.j.DiskVolume == "" {
		return false, nil
	}
	exists, err := u.virsh.VolExists(ctx, u.o.Pool, u.j.DiskVolume)
	return !exists, err
}

// ensureOverlay makes NAME-run.qcow2 anew where a cut-off reset deleted it.
func (u *vmRun) ensureOverlay(ctx context.Context) error {
	missing, err := u.overlayMissing(ctx)
	if err != nil || !missing {
		return err
	}
	return u.createOverlay(ctx)
}

// createOverlay makes NAME-run.qcow2 anew on the frozen NAME.qcow2, as big.
func (u *vmRun) createOverlay(ctx context.Context) error {
	name, pool := u.o.Name, u.o.Pool
	size, err := u.virsh.VolCapacity(ctx, pool, name+".qcow2")
	if err != nil {
		return err
	}
	if size == 0 {
		size = int64(u.j.DiskGiB) << 30
	}
	return u.createVolume(ctx, runDiskVolume(name), size, "qcow2", name+".qcow2", "qcow2")
}

var nvramRE = lazyRE(`<nvram[^>]*>([^<]+)</nvram>`)

// nvramPath is the VM's NVRAM file as the running domain's definition names it.
func (u *vmRun) nvramPath(ctx context.Context) (string, error) {
	xml, err := u.virsh.DumpXML(ctx, u.o.Name)
	if err != nil {
		return "", err
	}
	m := nvramRE.FindStringSubmatch(xml)
	if m == nil {
		return "", errors.New("its definition names no NVRAM")
	}
	if path := m[1]; validNVRAMPath(u.o.Name, u.o.Connect, path) {
		return path, nil
	}
	return "", fmt.Errorf("NVRAM path %q is not where libvirt keeps VM %s's NVRAM", m[1], u.o.Name)
}

// libvirtNVRAMDir is where libvirt keeps the NVRAM of a connection's VMs
// ("" for one vmup cannot reach as files); tests point it elsewhere.
var libvirtNVRAMDir = func(connect string) string {
	switch connect {
	case "qemu:///system":
		return "/var/lib/libvirt/qemu/nvram"
	case "qemu:///session":
		dir := os.Getenv("XDG_CONFIG_HOME")
		if dir == "" {
			home, _ := os.UserHomeDir()
			dir = filepath.Join(home, ".config")
		}
		return filepath.Join(dir, "libvirt", "qemu", "nvram")
	}
	return ""
}

// validNVRAMPath: libvirt's own file for a VM's NVRAM, the only file outside
// its state dir that vmup ever writes, whatever a definition or journal says.
func validNVRAMPath(name, connect, path string) bool {
	dir := libvirtNVRAMDir(connect)
	return dir != "" && path == filepath.Join(dir, name+"_VARS.fd")
}

// copyNVRAM copies the VM's NVRAM file live into the state dir (save) or back.
func (u *vmRun) copyNVRAM(live string, save bool) error {
	kept := u.paths.File("provisioned-nvram.fd")
	from, to := live, kept
	if !save {
		from, to = kept, live
	}
	st, err := os.Lstat(from)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Size() > 64<<20 {
		return fmt.Errorf("%s is not an NVRAM file", from)
	}
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return err
	}
	if !save {
		if st, err := os.Lstat(to); err == nil && !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", to)
		}
	}
	return writeFileAtomic(to, data, 0o600)
}

// ---- vmup reset ----

// runReset brings a VM back to its provisioned state through the same
// controller as up: Preparing checks, Resetting resets, Booting waits for
// SSH; it returns once the VM is ready, as `up -d` does.
func runReset(env Env, o *Options) int {
	out := env.Out
	if err := requireName(o, "reset"); err != nil {
		return reportError(out, err)
	}
	paths := pathsFor(env.Home, o.Name)
	if err := checkStateDirs(paths); err != nil {
		return reportError(out, err)
	}
	lock, code := lockVM(out, paths, "reset")
	if lock == nil {
		return code
	}
	defer lock.Unlock()
	j, err := readJournal(paths)
	if err != nil {
		return reportError(out, err)
	}
	if j == nil {
		return reportError(out, &hintedError{msg: "no VM named " + o.Name,
			hint: "run `vmup status` to list the VMs"})
	}
	if j.Provisioned == nil {
		why := "its first boot has not completed"
		if j.FirstBootDone {
			why = "none was kept when its first boot completed"
		}
		return reportError(out, usagef(fmt.Sprintf("run `vmup destroy %s` and `vmup up %s …` to make it anew", o.Name, o.Name),
			"VM %s has no provisioned state to reset to: %s", o.Name, why))
	}
	o.Detach = true
	if err := inherit(o, j); err != nil {
		return reportError(out, err)
	}
	u := &upRun{vmRun: vmRun{env: env, o: o, paths: paths, kind: startReset, j: j, holdJournal: true}}
	u.virsh = newVirsh(env.Runner, o.Connect)
	if err := checkLibvirt(env.ctx(), u.virsh); err != nil {
		return reportError(out, err)
	}
	if !env.commit() { // from here the controller handles the signals
		return exitFailed // a signal ended it: the guard has its code
	}
	return u.run()
}

// prepareReset checks that the provisioned state can come back: the domain
// exists, and on a user network the ports it had are free or its own.
func (u *upRun) prepareReset(ctx context.Context) error {
	out, o, j, p := u.env.Out, u.o, u.j, u.j.Provisioned
	out.Plan(4)
	out.Step("Checking VM")
	state, _, err := u.virsh.DomStateReason(ctx, o.Name)
	if errors.Is(err, errNotFound) {
		return &hintedError{msg: fmt.Sprintf("the domain of VM %s is gone", o.Name),
			hint: fmt.Sprintf("run `vmup destroy %s` to clear what is left", o.Name)}
	}
	if err != nil {
		return err
	}
	// Before anything changes (a reset drops a saved state first): the kept state is there.
	gone := ""
	switch {
	case p.Kind == "memory":
		snaps, err := u.virsh.Snapshots(ctx, o.Name, "--internal")
		if err != nil {
			return err
		}
		if !slices.Contains(snaps, provisionedSnapshot) {
			gone = "its snapshot " + provisionedSnapshot + " is gone"
		}
	case p.Kind == "template":
		rec, err := readTemplate(u.env.Home, j.Template)
		if err != nil {
			gone = "its template " + shortKey(j.Template) + " cannot be used: " + err.Error()
			break
		}
		if u.releaseTemplate, err = holdTemplate(u.env.Home, j.Template); err != nil {
			gone = "its template " + shortKey(j.Template) + " cannot be held: " + err.Error()
			break
		}
		u.cloneOf = rec
	case j.DiskVolume != runDiskVolume(o.Name):
		gone = "its disk is not frozen under " + runDiskVolume(o.Name)
	default:
		exists, err := u.virsh.VolExists(ctx, o.Pool, o.Name+".qcow2")
		if err != nil {
			return err
		}
		if !exists {
			gone = "its frozen disk " + o.Name + ".qcow2 is gone"
		} else if _, err := os.Lstat(u.paths.File("provisioned-nvram.fd")); p.NVRAM != "" && err != nil {
			gone = "its NVRAM copy is gone"
		}
	}
	if gone != "" {
		return &usageError{msg: fmt.Sprintf("VM %s cannot be reset: %s", o.Name, gone),
			hint: fmt.Sprintf("run `vmup up %s` to start it as it is, or `vmup destroy %s` and `vmup up %s …` to make it anew", o.Name, o.Name, o.Name)}
	}
	running := state == "running" || state == "paused"
	u.resetRunning = running
	if p.Network == "user" {
		ownPort := running && j.Network == "user" && j.SSHPort == p.SSHPort
		if !ownPort && !portFree(p.SSHPort) {
			return &usageError{
				msg:  fmt.Sprintf("SSH port %d, which VM %s's provisioned state uses, is taken by another program", p.SSHPort, o.Name),
				hint: fmt.Sprintf("free port %d and run `vmup reset %s` again", p.SSHPort, o.Name),
			}
		}
		for _, s := range p.Forwards {
			f, err := parseForward(s)
			if err != nil || running && j.Network == "user" && slices.Contains(j.Forwards, s) {
				continue
			}
			fw, err := listenForwards([]Forward{f})
			if err != nil {
				return err
			}
			fw.Close()
		}
	}
	if d := provisionedDiff(j, p); d != "" {
		out.Say("settings_restored", "VM %s gets back the settings it was provisioned with (%s)", o.Name, d)
	}
	what := "its disk and memory"
	if p.Kind == "template" && j.Network != "user" {
		what = "its template " + shortKey(j.Template) + "'s disk; it boots"
	} else if p.Kind == "template" {
		what = "its template " + shortKey(j.Template) + "'s disk and memory"
	} else if p.Kind == "disk" {
		what = "its disk; it boots"
	}
	out.Done(fmt.Sprintf("provisioned %s: %s", p.Made.Local().Format("2006-01-02 15:04"), what))
	return nil
}

// provisionedDiff lists the settings that differ from the provisioned ones.
func provisionedDiff(j *Journal, p *Provisioned) string {
	var d []string
	add := func(differ bool, format string, a ...any) {
		if differ {
			d = append(d, fmt.Sprintf(format, a...))
		}
	}
	add(j.Network != p.Network, "network %s, not %s", p.Network, j.Network)
	add(j.Network == p.Network && j.SSHPort != p.SSHPort, "SSH port %d, not %d", p.SSHPort, j.SSHPort)
	add(j.CPUs != p.CPUs, "cpus %d, not %d", p.CPUs, j.CPUs)
	add(j.MemoryMiB != p.MemoryMiB, "memory %d, not %d", p.MemoryMiB, j.MemoryMiB)
	add(j.DiskGiB != p.DiskGiB, "disk %d, not %d", p.DiskGiB, j.DiskGiB)
	add(!slices.Equal(j.Forwards, p.Forwards), "forwards %v, not %v", p.Forwards, j.Forwards)
	add(j.Restrict != p.Restrict, "restrict-network %v, not %v", p.Restrict, j.Restrict)
	return strings.Join(d, ", ")
}
