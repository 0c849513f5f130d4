package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// prepare is Preparing's worker: after it, the domain is defined and nothing runs.
func (u *upRun) prepare(ctx context.Context) {
	var err error
	ev := EvPreparedFirstBoot
	switch u.kind {
	case startFresh:
		err = u.prepareFresh(ctx)
		if u.cloneOf != nil {
			ev = EvPreparedClone
		}
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
	// Held until its base volume exists (this function's end): prune keeps it.
	local, release, err := resolveAndHold(ctx, out, u.env.Runner, u.env.Home, o.Image, o.ImageSHA256)
	if err != nil {
		return err
	}
	defer release()
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
	if o.Template {
		if err := u.findTemplate(ctx, img.SHA256, domType); err != nil {
			return err
		}
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
	made, err := u.ensureBase(ctx, img, base)
	if err != nil {
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
	out.Done(made)
	if u.cloneOf != nil {
		return u.prepareClone(ctx, base)
	}

	out.Step("Creating disk and cloud-init seed")
	if err := u.createDisk(ctx, img, base); err != nil {
		return err
	}
	if err := u.writeSeed(ctx); err != nil {
		return err
	}
	if err := u.uploadBoot(ctx); err != nil {
		return err
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

// createDisk makes the VM's disk, an overlay on base, and keeps it only if
// no prune deleted base meanwhile (see baseHeld); else it makes base again.
func (u *vmRun) createDisk(ctx context.Context, img BaseImage, base string) error {
	vol := u.o.Name + ".qcow2"
	size := max(int64(u.o.DiskGiB)<<30, img.VirtualSize)
	for tries := 0; ; tries++ {
		err := u.createVolume(ctx, vol, size, "qcow2", base, img.Format)
		if errors.Is(classify(err), errNotFound) {
			// A prune deleted the base before the overlay was made on it:
			// nothing was made, and the base is made again as below.
			if exists, serr := u.virsh.VolExists(ctx, u.o.Pool, base); serr != nil || exists {
				return err
			}
		} else if err != nil {
			return err
		} else {
			held, err := u.baseHeld(ctx, base)
			if err != nil || held {
				return err
			}
			if err := u.virsh.VolDelete(ctx, u.o.Pool, vol); err != nil {
				return err
			}
		}
		u.created.drop(vol)
		u.updateJournal(func(j *Journal) {
			j.Volumes = slices.DeleteFunc(j.Volumes, func(v string) bool { return v == vol })
		})
		if tries == 2 {
			return &hintedError{msg: fmt.Sprintf("base volume %s was pruned three times while VM %s's disk was made on it", base, u.o.Name),
				hint: "run the command again once no `vmup prune` runs"}
		}
		u.env.Out.Warn("base volume %s was pruned while VM %s's disk was made on it; making it again", base, u.o.Name)
		lock, err := u.globalLock(ctx)
		if err != nil {
			return err
		}
		_, err = u.ensureBase(ctx, img, base)
		lock.Unlock()
		if err != nil {
			return err
		}
	}
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
	// One already listed needs no write (a reset's overlay, on a full disk).
	u.jmu.Lock()
	listed := slices.Contains(u.j.Volumes, vol)
	u.jmu.Unlock()
	if !listed {
		if err := u.updateJournal(func(j *Journal) { j.Volumes = append(j.Volumes, vol) }); err != nil {
			return err
		}
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

// uploadBoot uploads --kernel and --initrd, where given, as the VM's own
// volumes, both at once: each is a stream of its own.
func (u *vmRun) uploadBoot(ctx context.Context) error {
	o := u.o
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, f := range [][2]string{{o.Kernel, o.Name + "-kernel"}, {o.Initrd, o.Name + "-initrd"}} {
		if f[0] != "" {
			wg.Go(func() { errs[i] = u.upload(ctx, f[0], f[1]) })
		}
	}
	wg.Wait()
	return joinErrors(errs...)
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
func (u *vmRun) laterSeedISO() []byte { return laterSeedFor(u.o.Name, u.j.InstanceID) }

// laterSeedFor is a seed of later boots: a name and an instance id, no secrets.
func laterSeedFor(name, instanceID string) []byte {
	return buildISO("cidata", map[string][]byte{
		"meta-data": metaData(name, instanceID),
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
	file, err := u.stageBytes(data)
	if err != nil {
		return err
	}
	defer os.Remove(file)
	return u.upload(ctx, file, vol)
}

// stageBytes writes data into the 0600 file virsh uploads from: one at a time.
func (u *vmRun) stageBytes(data []byte) (string, error) {
	file := u.paths.File("upload.tmp")
	return file, writeFileAtomic(file, data, 0o600)
}
