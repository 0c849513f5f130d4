// Making a template: once a first boot under --template completed, the
// provisioned guest's memory and disk are kept as the template of its key
// (templatekey.go), while the VM itself goes on running.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// makeTemplate keeps the guest as the template of u.templateKey, if this
// VM is to make one and no other has it. Best effort, as recordProvisioned:
// a failure is a warning, and the VM runs on as any other.
func (u *vmRun) makeTemplate(ctx context.Context) {
	out, key := u.env.Out, u.templateKey
	if key == "" || u.cloneOf != nil {
		return
	}
	m, err := beginTemplate(u.env.Home, key)
	switch {
	case errors.Is(err, errTemplateExists):
		out.Say("template_exists", "Template %s of this recipe exists already: VM %s made none", shortKey(key), u.o.Name)
		return
	case errors.Is(err, errTemplateBusy):
		out.Say("template_busy", "Another vmup is making template %s: VM %s makes none", shortKey(key), u.o.Name)
		return
	case err != nil:
		out.Warn("no template was made of VM %s: %v", u.o.Name, err)
		return
	}
	start := time.Now()
	what := "its memory and disk"
	if u.j.Network != "user" {
		what = "its disk: clones on nat boot from it"
	}
	out.Say("template_making", "Keeping VM %s as template %s (%s; the VM is paused for a few seconds)", u.o.Name, shortKey(key), what)
	rec, vol, err := u.writeTemplate(ctx, m, key)
	// The VM's ssh master ended with the QEMU that a save stopped, and its
	// clock stood still for the seconds the template took.
	u.keepMu.Lock()
	forced := u.forcing
	u.keepMu.Unlock()
	if u.ssh != nil && (u.templateSaved || u.templatePaused) && !forced {
		mctx, cancel := context.WithTimeout(ctx, time.Minute)
		// A pause longer than ssh's ServerAlive limit ends the master too.
		if u.templateSaved || u.ssh.Check(mctx) != nil {
			if done, err := u.ssh.WaitMaster(mctx, u.masterCtx, u.env.Poll, u.domainAlive); err == nil {
				u.masterDone = done
			}
		}
		u.setGuestClock(mctx, u.setClockByAgent(mctx))
		cancel()
	}
	if err == nil {
		err = m.Commit(rec)
	}
	if err != nil {
		if vol != "" && u.virsh.VolDelete(context.WithoutCancel(ctx), u.o.Pool, vol) != nil {
			m.Release() // the making dir's note names the volume: the next prune deletes both
		} else {
			m.Abort()
		}
		out.Warn("no template was made of VM %s: %v", u.o.Name, err)
		return
	}
	secs := time.Since(start).Seconds()
	size := fmt.Sprintf("memory %s, disk %s", humanBytes(rec.MemoryBytes), humanBytes(rec.DiskBytes))
	if rec.diskOnly() {
		size = "disk " + humanBytes(rec.DiskBytes)
	}
	out.Data(jsonEvent{Event: "template_made", Template: key, DurationS: &secs, Bytes: ptr(rec.MemoryBytes + rec.DiskBytes),
		Message: fmt.Sprintf("Template %s made in %.1f s (%s)", shortKey(key), secs, size)})
}

func ptr[T any](v T) *T { return &v }

// writeTemplate saves the guest's memory into the making dir, copies its
// disk into a volume of the template's, and restores the VM from that
// memory state: the VM runs on, from exactly the state its template holds.
func (u *vmRun) writeTemplate(ctx context.Context, m *templateMaking, key string) (rec *TemplateRecord, vol string, err error) {
	o, j := u.o, u.j
	if u.ssh != nil {
		u.ssh.Exec(ctx, "sync") // the guest's writes are in the disk that is copied
	}
	login, err := os.ReadFile(u.paths.Key())
	if err != nil {
		return nil, vol, err
	}
	hostPub, err := pinnedHostKey(u.paths, o.Name)
	if err != nil {
		return nil, vol, err
	}
	disk := u.diskVolume()
	capacity, err := u.virsh.VolCapacity(ctx, o.Pool, disk)
	if err != nil {
		return nil, vol, err
	}
	base := TemplateRecord{
		Image: o.Image, ImageSHA256: u.imageSHA256, Playbook: o.Playbook, Connect: o.Connect, Pool: o.Pool,
		BaseVolume: j.BaseVolume, Network: j.Network, SourceVM: o.Name, SourceUUID: j.UUID,
		User: j.User, LoginKey: string(login), HostPublicKey: hostPub, InstanceID: j.InstanceID,
		MemoryMiB: j.MemoryMiB, CPUs: j.CPUs, DomainType: j.DomainType,
	}
	if base.diskOnly() {
		return u.writeDiskTemplate(ctx, m, key, disk, capacity, base)
	}
	mem := filepath.Join(m.Dir(), "memory.save")
	if err := u.virsh.Save(ctx, o.Name, mem); err != nil {
		return nil, vol, fmt.Errorf("cannot save VM %s's memory: %w", o.Name, err)
	}
	u.keepMu.Lock()
	u.templateSaved = true
	u.keepMu.Unlock()
	// The VM is off now: it runs again whatever happens next, from its
	// memory state where it can, else booted from its disk.
	var img *saveImage
	restored := false
	defer func() {
		if restored {
			return
		}
		u.keepMu.Lock()
		defer u.keepMu.Unlock()
		if u.forcing {
			return // forced off meanwhile: it stays off
		}
		ctx := context.WithoutCancel(ctx)
		if img != nil && u.restoreFrom(ctx, &TemplateRecord{SourceVM: o.Name, SourceXML: string(img.XML), Network: j.Network,
			SaveDataLen: img.DataLen, SaveWasRunning: img.WasRunning, SaveCookie: string(img.Cookie)}, mem) == nil {
			return
		}
		// A save image vmup cannot read or write (compressed, or root's
		// under qemu:///system) is still libvirt's to restore.
		if u.restoreOwn(ctx, mem) == nil {
			return
		}
		u.env.Out.Warn("VM %s could not be restored from its saved memory: it boots again from its disk", o.Name)
		u.virsh.Start(ctx, o.Name)
	}()
	if err := os.Chmod(mem, 0o600); err != nil {
		return nil, vol, err
	}
	if img, err = readSaveImage(mem); err != nil {
		return nil, vol, err
	}
	st, err := os.Stat(mem)
	if err != nil {
		return nil, vol, err
	}
	name := templateDiskVolume(key) // random: one call
	if err := m.NoteDiskVolume(o.Connect, o.Pool, name); err != nil {
		return nil, "", err
	}
	vol = name
	copied, err := u.copyVolume(ctx, disk, vol, capacity)
	if err != nil {
		return nil, vol, fmt.Errorf("cannot copy VM %s's disk: %w", o.Name, err)
	}
	rec = &base
	rec.Made, rec.DiskVolume, rec.DiskBytes, rec.MemoryBytes = time.Now().UTC(), vol, copied, st.Size()
	rec.SourceXML, rec.SaveDataLen, rec.SaveWasRunning, rec.SaveCookie = string(img.XML), img.DataLen, img.WasRunning, string(img.Cookie)
	// The VM itself comes back from the template's memory state, under its
	// own XML (the first boot's seed, gone since, replaced by the later one).
	// Not once a force off was asked: the VM stays off, as it is now.
	u.keepMu.Lock()
	if !u.forcing {
		err = u.restoreFrom(ctx, rec, mem)
	}
	u.keepMu.Unlock()
	restored = err == nil
	return rec, vol, err
}

// writeDiskTemplate keeps the guest's disk alone, for clones that boot from
// it (diskOnly): the guest is paused while its disk is copied (QEMU flushes
// its writes as it stops) and runs on, unless forced off meanwhile.
func (u *vmRun) writeDiskTemplate(ctx context.Context, m *templateMaking, key, disk string, capacity int64, rec TemplateRecord) (*TemplateRecord, string, error) {
	o := u.o
	if err := u.virsh.Suspend(ctx, o.Name); err != nil {
		return nil, "", fmt.Errorf("cannot pause VM %s: %w", o.Name, err)
	}
	u.keepMu.Lock()
	u.templatePaused = true
	u.keepMu.Unlock()
	defer func() {
		u.keepMu.Lock()
		defer u.keepMu.Unlock()
		if u.forcing {
			return
		}
		if err := u.virsh.Resume(context.WithoutCancel(ctx), o.Name); err != nil {
			u.env.Out.Warn("VM %s stays paused: %v (`virsh resume %s` runs it on)", o.Name, err, o.Name)
		}
	}()
	vol := templateDiskVolume(key)
	if err := m.NoteDiskVolume(o.Connect, o.Pool, vol); err != nil {
		return nil, "", err
	}
	copied, err := u.copyVolume(ctx, disk, vol, capacity)
	if err != nil {
		return nil, vol, fmt.Errorf("cannot copy VM %s's disk: %w", o.Name, err)
	}
	rec.Made, rec.DiskVolume, rec.DiskBytes = time.Now().UTC(), vol, copied
	return &rec, vol, nil
}

// copyVolume copies a volume's bytes (a qcow2 overlay, backing path and
// all) into a new raw-typed volume, through virsh's streams.
func (u *vmRun) copyVolume(ctx context.Context, from, to string, capacity int64) (int64, error) {
	// Sparse: it holds the disk file's bytes, far fewer than its capacity.
	if err := u.virsh.VolCreateSparse(ctx, u.o.Pool, to, capacity, "raw"); err != nil {
		return 0, err
	}
	pr, pw := io.Pipe()
	counted := &countingReader{r: pr}
	down := make(chan error, 1)
	go func() {
		err := u.virsh.VolDownload(ctx, u.o.Pool, from, pw)
		pw.CloseWithError(err)
		down <- err
	}()
	uerr := u.virsh.VolUploadFrom(ctx, u.o.Pool, to, counted)
	pr.CloseWithError(errors.New("upload ended"))
	if derr := <-down; derr != nil {
		return 0, derr
	}
	return counted.n, uerr
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// pinnedHostKey is the host key a VM's known_hosts pins, as "TYPE BASE64".
func pinnedHostKey(p Paths, name string) (string, error) {
	data, err := os.ReadFile(p.KnownHosts())
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(data))
	if len(f) != 3 || f[0] != hostKeyAlias(name) {
		return "", fmt.Errorf("%s does not pin one host key of VM %s", p.KnownHosts(), name)
	}
	return f[1] + " " + f[2], nil
}

// restoreFrom runs the VM u from the template's memory state at mem: its
// header gets this VM's XML (name, UUID, paths), under the template's
// restore lock, since every clone writes that one header.
func (u *vmRun) restoreFrom(ctx context.Context, rec *TemplateRecord, mem string) error {
	xml, err := u.cloneXML(ctx, rec)
	if err != nil {
		return err
	}
	lock, err := waitLock(ctx, mem+".lock", "up")
	if err != nil {
		return err
	}
	defer lock.Unlock()
	img := &saveImage{Version: 2, DataLen: rec.SaveDataLen, WasRunning: rec.SaveWasRunning, Cookie: []byte(rec.SaveCookie)}
	if len(img.Cookie) > 0 {
		img.CookieOffset = 1 // any: header() recomputes it
	}
	if err := rewriteSaveImageXML(mem, img, xml); err != nil {
		return err
	}
	u.restored = true
	return u.virsh.Restore(ctx, mem)
}

// restoreOwn runs the VM again from its own save image at mem by libvirt
// alone: the definition the image holds, with this VM's current paths (the
// seed of later boots for the first one, deleted since), by restore --xml.
func (u *vmRun) restoreOwn(ctx context.Context, mem string) error {
	saved, err := u.virsh.SaveImageDumpXML(ctx, mem)
	if err != nil {
		return err
	}
	xml, err := u.cloneXML(ctx, &TemplateRecord{SourceVM: u.o.Name, SourceXML: saved, Network: u.j.Network})
	if err != nil {
		return err
	}
	file := u.paths.File("restore.xml")
	if err := writeFileAtomic(file, xml, 0o600); err != nil {
		return err
	}
	defer os.Remove(file)
	u.restored = true
	return u.virsh.RestoreXML(ctx, mem, file)
}

// cloneXML is the template's saved XML renamed for this VM.
func (u *vmRun) cloneXML(ctx context.Context, rec *TemplateRecord) ([]byte, error) {
	o, j := u.o, u.j
	path := func(pool, vol string) string {
		p, err := u.virsh.VolPath(ctx, pool, vol)
		if err != nil {
			// Not found: the template's VM's volume is gone; its path is the pool's dir and the name.
			return ""
		}
		return p
	}
	seed := path(o.Pool, laterSeedVolume(o.Name))
	disk := path(o.Pool, u.diskVolume())
	if seed == "" || disk == "" {
		return nil, fmt.Errorf("VM %s's disk or seed volume is missing", o.Name)
	}
	poolDir := filepath.Dir(disk)
	src := rec.SourceVM
	r := cloneRename{OldName: src, NewName: o.Name, NewUUID: j.UUID, Values: [][2]string{
		{filepath.Join(poolDir, src+".qcow2"), disk},
		{filepath.Join(poolDir, firstSeedVolume(src)), seed},
		{filepath.Join(poolDir, laterSeedVolume(src)), seed},
		{filepath.Join(poolDir, src+"-kernel"), filepath.Join(poolDir, o.Name+"-kernel")},
		{filepath.Join(poolDir, src+"-initrd"), filepath.Join(poolDir, o.Name+"-initrd")},
		{filepath.Join(filepath.Dir(u.paths.Dir), src, "console.log"), u.paths.Console()},
	}}
	if j.Network == "user" {
		netdev, err := templateNetdev(rec.SourceXML)
		if err != nil {
			return nil, err
		}
		r.Values = append(r.Values, [2]string{netdev, userNetdev(DomainSpec{SSHPort: j.SSHPort, Forwards: o.Forwards, Restrict: o.RestrictNetwork})})
	}
	return cloneDomainXML([]byte(rec.SourceXML), r)
}
