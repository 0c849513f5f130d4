package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// prepare is Preparing's worker: after it, the domain is defined and nothing runs.
func (u *upRun) prepare(ctx context.Context) {
	var err error
	ev := EvPreparedFirstBoot
	switch u.kind {
	case startFresh:
		err = u.prepareFresh(ctx)
	case startResumeFirst:
		err = u.prepareResume(ctx)
	case startReup:
		ev, err = u.prepareReup(ctx)
	case startReset:
		ev, err = EvPreparedReset, u.prepareReset(ctx)
	}
	if ctx.Err() != nil {
		return // interrupted: the controller is already undoing this run's work
	}
	if err != nil {
		u.env.Out.Fail(err.Error())
		var ue *usageError
		if errors.As(err, &ue) {
			u.send(EvPrepareRejected, err)
			return
		}
		u.send(EvPrepareFailed, err)
		return
	}
	u.send(ev, nil)
}

// globalLock guards what VMs share: the pool, base volumes, port choice.
func (u *vmRun) globalLock(ctx context.Context) (*Lock, error) {
	l, err := waitLock(ctx, filepath.Join(u.env.Home, "locks", "_global.lock"), "up")
	if errors.Is(err, errLocked) {
		return nil, ctx.Err()
	}
	return l, err
}

func (u *vmRun) prepareFresh(ctx context.Context) error {
	out, o := u.env.Out, u.o
	out.Plan(6)
	out.Step("Preparing image")
	// Everything that can refuse this run comes before anything is deleted.
	local, err := resolveImage(ctx, out, u.env.Home, o.Image, o.ImageSHA256)
	if err != nil {
		return err
	}
	img := BaseImage{Path: local}
	// A checksum the user gave is checked on the file, not on a memo of it.
	if img.SHA256, err = hashFile(ctx, u.env.Home, local, o.ImageSHA256 == ""); err != nil {
		return err
	}
	if o.ImageSHA256 != "" && !strings.EqualFold(img.SHA256, o.ImageSHA256) {
		return &usageError{msg: fmt.Sprintf("%s has sha256 %s, not %s", o.Image, img.SHA256, o.ImageSHA256)}
	}
	if img.Format, img.VirtualSize, err = inspectImage(ctx, u.env.Runner, local); err != nil {
		return err
	}
	domType, err := u.domainType(ctx)
	if err != nil {
		return err
	}
	old := u.recover
	if old == nil {
		old = u.replaced
	}
	if err := u.refuseForeignVolumes(ctx, old); err != nil {
		return err
	}
	if err := u.claimForwards(false); err != nil {
		return err
	}

	if u.recover != nil || o.Reset {
		if u.recover != nil {
			how := fmt.Sprintf("was interrupted (vmup pid %d is gone)", u.recover.PID)
			if u.recover.Phase == Failed {
				how = "failed while " + u.recover.FailedIn.String()
			}
			out.Say("recovering", "An earlier first boot of %s %s: removing it and starting clean", o.Name, how)
			reapGroup(u.recover.PlaybookPGID, u.paths)
		}
		// The old VM is removed where it lives: its own connection and pool.
		v, pool, vols := u.virsh, o.Pool, []string(nil)
		if old != nil {
			v, pool, vols = newVirsh(u.env.Runner, old.Connect), old.Pool, old.Volumes
		}
		if old != nil && old.UploadingBase != "" {
			// The old run's upload: partial unless marked complete since.
			lock, err := u.globalLock(ctx)
			if err != nil {
				return err
			}
			err = removePartialBase(ctx, v, pool, old.UploadingBase)
			lock.Unlock()
			if err != nil {
				return err
			}
		}
		if err := wipeVM(ctx, v, pool, u.paths, vols); err != nil {
			return err
		}
	}
	u.releaseJournal()
	if _, err := os.Stat(u.paths.Dir); errors.Is(err, os.ErrNotExist) {
		u.created.dir = true
	}
	if err := ensureDir(u.paths.Dir); err != nil {
		return err
	}
	if err := u.updateJournal(func(j *Journal) {}); err != nil {
		return err
	}

	lock, err := u.globalLock(ctx)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := u.virsh.EnsurePool(ctx, o.Pool, defaultPoolTarget(o.Connect)); err != nil {
		return err
	}
	base := baseVolumeName(img)
	if err := u.ensureBase(ctx, img, base); err != nil {
		return err
	}
	if o.Network == "user" {
		port, err := u.freePort()
		if err != nil {
			return err
		}
		u.updateJournal(func(j *Journal) { j.SSHHost, j.SSHPort = "127.0.0.1", port })
	}
	lock.Unlock()

	out.Step("Creating disk and cloud-init seed")
	size := int64(o.DiskGiB) << 30
	if img.VirtualSize > size {
		size = img.VirtualSize
	}
	if err := u.createVolume(ctx, o.Name+".qcow2", size, "qcow2", base, img.Format); err != nil {
		return err
	}
	if err := u.writeSeed(ctx); err != nil {
		return err
	}
	for _, f := range []struct{ src, vol string }{{o.Kernel, o.Name + "-kernel"}, {o.Initrd, o.Name + "-initrd"}} {
		if f.src == "" {
			continue
		}
		if err := u.upload(ctx, f.src, f.vol); err != nil {
			return err
		}
	}
	u.updateJournal(func(j *Journal) {
		j.BaseVolume, j.Kernel, j.Initrd, j.Cmdline, j.DomainType = base, o.Kernel != "", o.Initrd != "", o.Cmdline, domType
		j.Firmware = o.Firmware
	})
	if err := u.define(ctx); err != nil {
		return err
	}
	if err := u.writeLaterDefinition(ctx); err != nil {
		return err
	}
	out.Done("")
	return nil
}

// uploadBase streams the image into a new base volume and hashes the bytes
// on their way: the volume's name claims a content hash that every later
// `up` trusts, so what was uploaded must be what was hashed. Another content
// deletes the volume again.
func (u *vmRun) uploadBase(ctx context.Context, img BaseImage, base string) error {
	pool := u.o.Pool
	f, err := os.Open(img.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := u.virsh.VolCreate(ctx, pool, base, st.Size(), "raw", "", ""); err != nil {
		if errors.Is(err, errExists) {
			// Not this run's: another user of the pool is uploading it.
			u.created.drop(base)
			u.updateJournal(func(j *Journal) { j.UploadingBase = "" })
			return &hintedError{
				msg:  fmt.Sprintf("base volume %s appeared in pool %s meanwhile, maybe uploaded by another vmup: %v", base, pool, err),
				hint: fmt.Sprintf("wait for that upload to finish, then run `vmup up %s` again", u.o.Name),
			}
		}
		return err
	}
	h := sha256.New()
	if err := u.virsh.VolUploadFrom(ctx, pool, base, io.TeeReader(ctxReader{ctx, f}, h)); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != img.SHA256 {
		if err := u.virsh.VolDeleteWhenFree(ctx, pool, base, 10*time.Second); err != nil {
			return fmt.Errorf("%s changed while it was uploaded, and its volume %s cannot be deleted: %w", u.o.Image, base, err)
		}
		u.created.drop(base)
		u.updateJournal(func(j *Journal) { j.UploadingBase = "" })
		return &usageError{
			msg:  fmt.Sprintf("%s changed while it was uploaded: the bytes sent have sha256 %s, not %s", u.o.Image, got, img.SHA256),
			hint: fmt.Sprintf("run `vmup up %s` again once the image file no longer changes (nothing was kept)", u.o.Name),
		}
	}
	return nil
}

func foreignVolume(o *Options, vol string) error {
	return &hintedError{
		msg: fmt.Sprintf("volume %s in pool %s exists, and VM %s's journal does not record vmup making it", vol, o.Pool, o.Name),
		hint: fmt.Sprintf("run `virsh -c %s vol-delete --pool %s %s` if nothing needs it (vmup deletes only volumes it made), "+
			"or choose another VM name", o.Connect, o.Pool, vol),
	}
}

// refuseForeignVolumes fails if a volume this run would create is in the
// pool already and is not one the journal being replaced (old) recorded.
func (u *vmRun) refuseForeignVolumes(ctx context.Context, old *Journal) error {
	o := u.o
	vols := []string{o.Name + ".qcow2", o.Name + "-seed.iso"}
	if o.Kernel != "" {
		vols = append(vols, o.Name+"-kernel")
	}
	if o.Initrd != "" {
		vols = append(vols, o.Name+"-initrd")
	}
	for _, vol := range vols {
		if old != nil && old.Pool == o.Pool && slices.Contains(old.Volumes, vol) {
			continue // the old VM's own: wiped before it is made again
		}
		exists, err := u.virsh.VolExists(ctx, o.Pool, vol)
		if err != nil {
			return err
		}
		if exists {
			return foreignVolume(o, vol)
		}
	}
	return nil
}

// createVolume journals a volume of this VM, then creates it: a killed run
// leaves a name that a later `up` or `destroy` deletes, never a volume
// nobody knows of. One that appeared meanwhile is someone else's.
func (u *vmRun) createVolume(ctx context.Context, vol string, bytes int64, format, backing, backingFormat string) error {
	if err := u.updateJournal(func(j *Journal) {
		if !slices.Contains(j.Volumes, vol) {
			j.Volumes = append(j.Volumes, vol)
		}
	}); err != nil {
		return err
	}
	// It was not there when checked (or is this VM's own): what is there from now on is this run's.
	u.created.add(vol)
	err := u.virsh.VolCreate(ctx, u.o.Pool, vol, bytes, format, backing, backingFormat)
	if errors.Is(err, errExists) {
		u.created.drop(vol)
		u.updateJournal(func(j *Journal) {
			j.Volumes = slices.DeleteFunc(j.Volumes, func(v string) bool { return v == vol })
		})
		return foreignVolume(u.o, vol)
	}
	return err
}

func (u *vmRun) upload(ctx context.Context, file, vol string) error {
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	if err := u.createVolume(ctx, vol, st.Size(), "raw", "", ""); err != nil {
		return err
	}
	return u.virsh.VolUpload(ctx, u.o.Pool, vol, file)
}

// writeSeed makes the keys and the NoCloud seed and uploads it. The host's
// private key lives only in the seed, which is deleted after the first boot.
func (u *vmRun) writeSeed(ctx context.Context) error {
	o := u.o
	client, err := loadOrCreateKey(u.paths.Key(), "vmup-"+o.Name)
	if err != nil {
		return err
	}
	host, err := newSSHKey("vmup-host-" + o.Name)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(u.paths.KnownHosts(), []byte(knownHostsLine(o.Name, host.Public)), 0o600); err != nil {
		return err
	}
	instanceID := fmt.Sprintf("vmup-%s-%d", o.Name, time.Now().UnixNano())
	if err := u.updateJournal(func(j *Journal) { j.InstanceID = instanceID }); err != nil {
		return err
	}
	iso := buildISO("cidata", map[string][]byte{
		"meta-data": metaData(o.Name, instanceID),
		"user-data": userData(o.Name, o.User, client.Public, host),
	})
	if err := u.uploadBytes(ctx, iso, firstSeedVolume(o.Name)); err != nil {
		return err
	}
	// Made now, while there is space, for when the first boot completed.
	return u.uploadBytes(ctx, u.laterSeedISO(), laterSeedVolume(o.Name))
}

// laterSeedISO is the seed of the boots after the first: the same instance id
// (so cloud-init keeps the host keys) and no secrets.
func (u *vmRun) laterSeedISO() []byte {
	return buildISO("cidata", map[string][]byte{
		"meta-data": metaData(u.o.Name, u.j.InstanceID),
		"user-data": []byte("#cloud-config\n{}\n"), // a mapping, as the schema wants
	})
}

// ensureLaterSeed makes what replaceSeed attaches, where an earlier run did
// not: the seed volume of later boots and the definition that names it.
func (u *vmRun) ensureLaterSeed(ctx context.Context) error {
	later := laterSeedVolume(u.o.Name)
	exists, err := u.virsh.VolExists(ctx, u.o.Pool, later)
	if err != nil {
		return err
	}
	if !exists {
		if err := u.uploadBytes(ctx, u.laterSeedISO(), later); err != nil {
			return err
		}
	}
	if _, err := os.Stat(u.paths.File("domain-later.xml")); err == nil && u.kind != startReup {
		return nil
	}
	return u.writeLaterDefinition(ctx) // a re-up may have changed the settings
}

// uploadBytes uploads data as a new volume, through a 0600 file in the state dir.
func (u *vmRun) uploadBytes(ctx context.Context, data []byte, vol string) error {
	file := u.paths.File("upload.tmp")
	if err := writeFileAtomic(file, data, 0o600); err != nil {
		return err
	}
	defer os.Remove(file)
	return u.upload(ctx, file, vol)
}

func (u *vmRun) domainType(ctx context.Context) (string, error) {
	if u.o.DomainType != "auto" {
		return u.o.DomainType, nil
	}
	if u.virsh.KVMAvailable(ctx) {
		return "kvm", nil
	}
	return "qemu", ctx.Err()
}

// seedVolume is the seed the domain boots with now.
func (u *vmRun) seedVolume() string {
	if u.j.SeedVolume != "" {
		return u.j.SeedVolume
	}
	return firstSeedVolume(u.o.Name)
}

// writeLaterDefinition prepares domain-later.xml: the definition the domain
// gets once its first boot completed, with the seed of later boots.
func (u *vmRun) writeLaterDefinition(ctx context.Context) error {
	data, err := u.domainXML(ctx, laterSeedVolume(u.o.Name))
	if err != nil {
		return err
	}
	return writeFileAtomic(u.paths.File("domain-later.xml"), data, 0o600)
}

// domainXML builds the domain's definition from the options and the journal.
func (u *vmRun) domainXML(ctx context.Context, seedVol string) ([]byte, error) {
	o, j := u.o, u.j
	path := func(vol string) (string, error) { return u.virsh.VolPath(ctx, o.Pool, vol) }
	spec := DomainSpec{
		Name: o.Name, UUID: j.UUID, Type: j.DomainType, CPUs: o.CPUs, MemoryMiB: o.MemoryMiB,
		Network: j.Network, SSHPort: j.SSHPort, Forwards: o.Forwards, Restrict: o.RestrictNetwork,
		Cmdline: j.Cmdline, ConsoleLog: u.paths.Console(), UEFI: j.Firmware == "uefi",
	}
	var err error
	if spec.Disk, err = path(u.diskVolume()); err != nil {
		return nil, err
	}
	// The seed stays attached after the first boot too (holding only the
	// instance-id then); a VM whose seed volume is gone boots without one.
	if spec.Seed, err = path(seedVol); errors.Is(classify(err), errNotFound) {
		spec.Seed = ""
	} else if err != nil {
		return nil, err
	}
	if j.Kernel {
		if spec.Kernel, err = path(o.Name + "-kernel"); err != nil {
			return nil, err
		}
	}
	if j.Initrd {
		if spec.Initrd, err = path(o.Name + "-initrd"); err != nil {
			return nil, err
		}
	}
	return domainXMLFor(spec)
}

// define (re)defines the domain from the options and the journal.
func (u *vmRun) define(ctx context.Context) error {
	o, j := u.o, u.j
	data, err := u.domainXML(ctx, u.seedVolume())
	if err != nil {
		return err
	}
	xmlFile := u.paths.File("domain.xml")
	if err := writeFileAtomic(xmlFile, data, 0o600); err != nil {
		return err
	}
	if err := u.virsh.Define(ctx, xmlFile); err != nil {
		return err
	}
	// Only a domain that did not exist before is this run's to undo: an
	// interrupted redefinition of an existing VM must never undefine it.
	if u.kind == startFresh {
		u.created.domain = true
	}
	if j.UUID == "" {
		// A redefinition must name the same UUID, or libvirt refuses it.
		uuid, err := u.virsh.DomUUID(ctx, o.Name)
		if err != nil {
			return err
		}
		u.updateJournal(func(j *Journal) { j.UUID = uuid })
	}
	return u.updateJournal(func(j *Journal) {
		j.CPUs, j.MemoryMiB, j.DiskGiB = o.CPUs, o.MemoryMiB, o.DiskGiB
		j.Forwards = forwardStrings(o.Forwards)
		j.Restrict = o.RestrictNetwork
	})
}

func forwardStrings(fs []Forward) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.String())
	}
	return out
}

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
	running := state != "shut off" && state != "crashed"
	changed := settingsChanged(o, j)
	saved := isSaved(state, reason)
	if saved && !o.DiscardSaved {
		if err := u.checkRestore(ctx, changed); err != nil {
			return 0, err
		}
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

// redefine applies this run's settings to a shut-off VM: a new SSH port if
// its own was taken, the network, the disk's size, then the definition. If a
// step fails, the journal goes back to what the domain still has.
func (u *vmRun) redefine(ctx context.Context, portTaken bool) error {
	out, o := u.env.Out, u.o
	u.jmu.Lock()
	before := *u.j
	u.jmu.Unlock()
	err := func() error {
		if portTaken {
			lock, err := u.globalLock(ctx)
			if err != nil {
				return err
			}
			port, err := u.freePort()
			lock.Unlock()
			if err != nil {
				return err
			}
			out.Say("ssh_port", "SSH port %d is taken now; VM %s moves to %d", before.SSHPort, o.Name, port)
			u.updateJournal(func(j *Journal) { j.SSHPort = port })
		}
		if o.Network != before.Network {
			if err := u.switchNetwork(ctx); err != nil {
				return err
			}
		}
		if o.DiskGiB > before.DiskGiB {
			if err := u.virsh.VolResize(ctx, o.Pool, u.diskVolume(), int64(o.DiskGiB)<<30); err != nil {
				return err
			}
			before.DiskGiB = o.DiskGiB // grown for good
			u.updateJournal(func(j *Journal) { j.DiskGiB = o.DiskGiB })
		}
		return u.define(ctx)
	}()
	if err != nil {
		u.updateJournal(func(j *Journal) { *j = before })
	}
	return err
}

// switchNetwork journals a shut-off VM's move to o.Network, for define: on
// nat its address comes from the DHCP lease at boot, on user it gets a free
// loopback SSH port.
func (u *vmRun) switchNetwork(ctx context.Context) error {
	host, port := "", 0
	if u.o.Network == "user" {
		lock, err := u.globalLock(ctx)
		if err != nil {
			return err
		}
		port, err = u.freePort()
		lock.Unlock()
		if err != nil {
			return err
		}
		host = "127.0.0.1"
	}
	return u.updateJournal(func(j *Journal) { j.Network, j.SSHHost, j.SSHPort = u.o.Network, host, port })
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
