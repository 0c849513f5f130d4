// Cloning: a VM whose recipe has a template is made from it — an overlay on
// the template's disk, its memory restored, then the VM's own identity —
// with no boot, no cloud-init and no playbook. Where a memory clone cannot
// have its own identity (nat: its MAC and lease), its disk boots instead.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// findTemplate decides, in Preparing, whether this up makes or uses a
// template: the key of its recipe, and the template of that key if one is
// whole and usable here.
func (u *vmRun) findTemplate(ctx context.Context, imageSHA256, domType string) error {
	o, out := u.o, u.env.Out
	key, err := templateKey(templateKeyInputFor(o, imageSHA256, domType))
	if err != nil {
		return err
	}
	u.templateKey, u.imageSHA256 = key, imageSHA256
	// What a maker or a prune killed midway left goes first.
	if err := cleanHalfMade(u.env.Home, func(connect, pool, vol string) error {
		err := newVirsh(u.env.Runner, connect).VolDelete(ctx, pool, vol)
		if errors.Is(classify(err), errNotFound) {
			return nil
		}
		return err
	}); err != nil {
		out.Warn("leftovers of an interrupted template remain: %v", err)
	}
	if u.kind != startFresh {
		return nil
	}
	if r := u.recover; r != nil && r.Phase == Failed && r.FailedIn == Cloning {
		// A clone that failed would fail again: made by a first boot instead.
		// One whose vmup was killed (or any other first boot cut short) is
		// made from the template like a new VM.
		out.Warn("template %s is not used: VM %s's clone of it failed before; a full first boot follows", shortKey(key), o.Name)
		return nil
	}
	rec, err := readTemplate(u.env.Home, key)
	switch {
	case errors.Is(err, errNoTemplate):
		return nil
	case err != nil:
		out.Warn("template %s is not used: %v (`vmup prune` removes it)", shortKey(key), err)
		return nil
	case rec.Connect != o.Connect || rec.Pool != o.Pool:
		out.Warn("template %s is in pool %s of %s, not this VM's: a full first boot follows", shortKey(key), rec.Pool, rec.Connect)
		return nil
	}
	for _, vol := range []string{rec.DiskVolume, rec.BaseVolume} {
		if ok, err := u.virsh.VolExists(ctx, o.Pool, vol); err != nil {
			return err
		} else if !ok {
			out.Warn("template %s is not used: its volume %s is gone (`vmup prune` removes it)", shortKey(key), vol)
			return nil
		}
	}
	release, err := holdTemplate(u.env.Home, key)
	if err != nil {
		out.Warn("template %s is not used: %v", shortKey(key), err)
		return nil
	}
	u.cloneOf, u.releaseTemplate = rec, release
	return nil
}

// prepareClone makes what a clone needs before its restore: an overlay on
// the template's disk, the VM's own keys, the seed of later boots (with the
// VM's own instance-id), kernel and initrd, and the domain.
func (u *vmRun) prepareClone(ctx context.Context, base string) error {
	o, out, rec := u.o, u.env.Out, u.cloneOf
	out.Replan(4)
	out.Step("Creating disk from template " + shortKey(rec.Key))
	// On disk before the overlay is: prune reads what holds a template in
	// the journals (prunetemplates.go), and this hold ends with the worker.
	if err := u.updateJournal(func(j *Journal) { j.Template = rec.Key }); err != nil {
		return err
	}
	if err := u.createCloneDisk(ctx, rec, o.DiskGiB); err != nil {
		return err
	}
	if _, err := loadOrCreateKey(u.paths.Key(), "vmup-"+o.Name); err != nil {
		return err
	}
	instanceID := fmt.Sprintf("vmup-%s-%d", o.Name, time.Now().UnixNano())
	if err := u.updateJournal(func(j *Journal) { j.InstanceID = instanceID }); err != nil {
		return err
	}
	later, seed := laterSeedVolume(o.Name), u.laterSeedISO()
	if u.whyBoot() != "" {
		// Booted with its template's instance-id until the identity script
		// gave it its own: then the seed says so too (putSeed).
		seed = templateSeedISO(o.Name, rec)
	}
	var seedErr error
	var wg sync.WaitGroup
	wg.Go(func() { seedErr = u.uploadBytes(ctx, seed, later) })
	bootErr := u.uploadBoot(ctx)
	wg.Wait()
	if err := joinErrors(seedErr, bootErr); err != nil {
		return err
	}
	u.updateJournal(func(j *Journal) {
		j.BaseVolume, j.Kernel, j.Initrd, j.Cmdline, j.DomainType = base, o.Kernel != "", o.Initrd != "", o.Cmdline, rec.DomainType
		j.Firmware, j.SeedVolume, j.Template = o.Firmware, later, rec.Key
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

// clone is Cloning's worker: the template's memory restored as this VM,
// then its own identity, then SSH with its own keys. The first boot is
// recorded complete only then; until then an abort wipes the clone.
func (u *upRun) clone(ctx context.Context) {
	out, rec := u.env.Out, u.cloneOf
	fail := func(err error) {
		if ctx.Err() != nil {
			out.Fail("interrupted")
			return
		}
		out.Fail(err.Error())
		u.send(EvCloneFailed, err)
	}
	defer u.letGoTemplate()
	start := time.Now()
	why := u.whyBoot()
	if why != "" {
		out.Step("Booting from template " + shortKey(rec.Key) + "'s disk")
		if err := u.virsh.Start(ctx, u.o.Name); err != nil {
			fail(err)
			return
		}
		out.Done(why)
		out.Step("Waiting for SSH, then giving the clone its own identity")
	} else {
		out.Step("Restoring template " + shortKey(rec.Key))
		mem := filepath.Join(templateDir(u.env.Home, rec.Key), "memory.save")
		if err := u.restoreFrom(ctx, rec, mem); err != nil {
			fail(err)
			return
		}
		out.Done("no boot")
		out.Step("Giving the clone its own identity")
	}
	touchTemplate(u.env.Home, rec.Key)
	if err := u.giveIdentity(ctx, rec, true); err != nil {
		fail(err)
		return
	}
	// The seed's instance-id is the template's until now: any boot after,
	// even one the guest asks for, would find a new instance (new host keys).
	if why != "" {
		if err := u.putSeed(ctx, u.laterSeedISO()); err != nil {
			fail(fmt.Errorf("cannot write VM %s's own instance-id into its seed: %w", u.o.Name, err))
			return
		}
	}
	out.Done("hostname, machine-id, host key, login key, instance-id; SSH at " + u.ssh.ep.String())
	done, err := u.commitFirstBoot(ctx)
	if !done {
		return
	}
	if err != nil {
		u.send(EvRecordFailed, err)
		return
	}
	// Its template is its provisioned state: `vmup reset` clones it again.
	u.jmu.Lock()
	p := settingsOf(u.j)
	u.jmu.Unlock()
	p.Kind, p.Made = "template", time.Now().UTC()
	if err := u.updateJournal(func(j *Journal) { j.Provisioned = p }); err != nil {
		out.Warn("VM %s cannot be reset to its template: %v", u.o.Name, err)
	}
	secs := time.Since(start).Seconds()
	msg := fmt.Sprintf("VM %s provisioned from template %s (made by VM %s) in %.1f s", u.o.Name, shortKey(rec.Key), rec.SourceVM, secs)
	if why != "" {
		if u.j.Network != "user" {
			why += ": a memory state keeps its template's MAC and address"
		}
		msg = fmt.Sprintf("VM %s provisioned from template %s (made by VM %s): booted from its disk in %.1f s, with no first-boot cloud-init or playbook (%s)",
			u.o.Name, shortKey(rec.Key), rec.SourceVM, secs, why)
	}
	out.Data(jsonEvent{Event: "provisioned_from_template", Template: rec.Key, DurationS: &secs, Message: msg})
	u.send(EvCloned, nil)
}

// giveIdentity logs in as the template's guest (its login key, its host
// key pinned under this VM's alias) and makes it this VM: hostname,
// machine-id, host key, login key, cloud-init instance-id, clock. The VM's
// known_hosts pins the new host key first.
//
// With asMaster, that login is this VM's ssh master (u.ssh, u.masterDone):
// the script runs through it, and once the guest says its sshd serves the
// new keys a connection that authenticates nothing proves the pinned host
// key is the one served, while the script writes the rest. One login where
// a login with the new keys would cost another second of an emulated guest;
// the script itself checks that sshd reads the login key it wrote.
func (u *vmRun) giveIdentity(ctx context.Context, rec *TemplateRecord, asMaster bool) error {
	o, j := u.o, u.j
	dir := filepath.Join(u.paths.Dir, "template-login")
	os.RemoveAll(dir) // a killed run's
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keepDir := false
	defer func() {
		if !keepDir {
			os.RemoveAll(dir)
		}
	}()
	tp := Paths{Home: u.paths.Home, Dir: dir, Lock: u.paths.Lock}
	if err := writeFileAtomic(tp.Key(), []byte(rec.LoginKey), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(tp.KnownHosts(), []byte(knownHostsLine(o.Name, rec.HostPublicKey)), 0o600); err != nil {
		return err
	}
	login, err := loadOrCreateKey(u.paths.Key(), "vmup-"+o.Name)
	if err != nil {
		return err
	}
	id, err := newCloneIdentity(o.Name, j.User, login.Public)
	if err != nil {
		return err
	}
	id.InstanceID = j.InstanceID
	if err := writeFileAtomic(u.paths.KnownHosts(), []byte(knownHostsLine(o.Name, id.Host.Public)), 0o600); err != nil {
		return err
	}
	// A restored guest answers at once; a booting one once it booted (on
	// nat, once it has a lease).
	wait := time.Minute
	if !u.restored {
		wait = o.BootTimeout
	}
	deadline := time.Now().Add(wait)
	bootCtx, cancelBoot := context.WithDeadline(ctx, deadline)
	defer cancelBoot()
	ep, err := u.endpoint(bootCtx)
	if err != nil {
		if ctx.Err() == nil && bootCtx.Err() != nil {
			err = fmt.Errorf("VM %s has no address after --boot-timeout %s", o.Name, wait)
		}
		return err
	}
	if j.Network != "user" {
		// The script leaves a guest without the MAC of this lease alone.
		if _, id.MAC, err = u.virsh.DomLease(bootCtx, o.Name); err != nil {
			return err
		}
	}
	s := newSSH(u.env.Runner, o.Name, j.User, tp, ep)
	s.control = ""
	keys, ended := make(chan struct{}), make(chan struct{})
	proved := make(chan error, 1)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	if asMaster {
		if s.control, err = u.controlSocket(); err != nil {
			return fmt.Errorf("cannot make a dir for the ssh ControlMaster's socket: %w", err)
		}
		// A restored sshd serves the template's keys from the start; a
		// booting guest may refuse logins for a moment (pam_nologin).
		s.keyFinal, s.restored = u.restored, u.restored
		done, err := s.WaitMaster(bootCtx, u.masterCtx, u.env.Poll, u.domainAlive)
		if err != nil {
			if ctx.Err() == nil && bootCtx.Err() != nil {
				err = fmt.Errorf("none within %s", wait)
			}
			return fmt.Errorf("no SSH login with the template's keys: %w", err)
		}
		// The master checks the template's host key again at each rekey
		// (after a GiB or so): its known_hosts stays until it ends.
		os.Remove(tp.Key())
		keepDir = true
		relay := make(chan error, 1)
		go func() {
			err := <-done
			os.RemoveAll(dir)
			relay <- err
		}()
		u.masterDone = relay
		u.ssh = newSSH(u.env.Runner, o.Name, j.User, u.paths, ep)
		u.ssh.control, u.ssh.keyFinal, u.ssh.restored = s.control, true, u.restored
		go func() {
			// At the guest's word, or when the script ended without it (an
			// sshd it could not reload serves the old key: the proof fails).
			select {
			case <-keys:
			case <-ended:
			}
			proved <- u.ssh.ProveHostKey(ctx)
		}()
	}
	if !u.restored {
		// A booted guest: cloud-init's stages of this boot end first, so
		// that none reads the instance the script renames under it.
		if err := u.waitBootCloudInit(bootCtx, s, asMaster); err != nil {
			return err
		}
	}
	// The guest's clock is set to the host's, now: a booted guest waited a
	// while for its login and cloud-init.
	id.Time = time.Now()
	cmd, stdin, err := identityCommand(j.User, id)
	if err != nil {
		return err
	}
	// A connection that fails before the script ran (ssh's own exit code,
	// 255) is tried again a few times.
	var res Result
	var ee *ExitError
	stdout := &markerWriter{marker: "vmup-identity keys\n", seen: keys}
	for tries := 0; ; tries++ {
		stdout.buf.Reset()
		res, err = s.ExecWith(ctx, bytes.NewReader(stdin), stdout, cmd)
		res.Stdout = stdout.buf.Bytes()
		if ee = nil; !errors.As(err, &ee) {
			break // the script's answer, or no ssh at all
		}
		res.ExitCode = ee.ExitCode
		// A guest that took the new keys no longer lets the template's in.
		last := tries >= 4 && (u.restored || time.Now().After(deadline))
		if ee.ExitCode != 255 || stdout.closed || last || sleepCtx(ctx, 500*time.Millisecond) != nil {
			break
		}
	}
	close(ended)
	if err != nil && ee == nil {
		return fmt.Errorf("cannot give the clone its identity: %w", err)
	}
	if _, err := identityOutcome(res.Stdout, res.ExitCode); err != nil {
		return fmt.Errorf("cannot give the clone its identity: %w", err)
	}
	if asMaster {
		if err := <-proved; err != nil {
			return fmt.Errorf("VM %s's identity is written, but %w", o.Name, err)
		}
	}
	return nil
}

// markerWriter keeps what is written and closes seen (once; nil: never)
// when a line equal to marker arrives.
type markerWriter struct {
	buf    bytes.Buffer
	marker string
	seen   chan<- struct{}
	closed bool
}

func (w *markerWriter) Write(p []byte) (int, error) {
	n, _ := w.buf.Write(p)
	if w.seen != nil && !w.closed {
		b := w.buf.Bytes()
		if i := bytes.Index(b, []byte(w.marker)); i == 0 || i > 0 && b[i-1] == '\n' {
			w.closed = true
			close(w.seen)
		}
	}
	return n, nil
}

var netdevArgRE = lazyRE(`value='(user,id=vmupnet[^']*)'`)

// templateNetdev is the user network's -netdev argument in a saved XML:
// the SSH port forward the clone gets in its place. A saved XML without one
// would restore with the template VM's forward, or none.
func templateNetdev(xml string) (string, error) {
	if m := netdevArgRE.FindStringSubmatch(xml); m != nil {
		return m[1], nil
	}
	return "", errors.New("the template's saved definition has no user network device of vmup's; it cannot be cloned")
}

// resetTemplate is a clone's reset: forced off, its overlay on the
// template's disk made anew, its definition from the provisioned settings,
// the template's memory restored (or its disk booted: whyBoot) and the
// clone's identity given again (a new host key, pinned). The boot that
// follows finds it running.
func (u *upRun) resetTemplate(ctx context.Context) (retErr error) {
	defer u.letGoTemplate()
	o, rec := u.o, u.cloneOf
	if err := u.offAndCommitReset(ctx, true); err != nil {
		return err
	}
	if err := u.virsh.VolDelete(ctx, o.Pool, o.Name+".qcow2"); err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	if err := u.createCloneDisk(ctx, rec, u.j.DiskGiB); err != nil {
		return err
	}
	boots := u.whyBoot() != ""
	if boots {
		// As its first boot: the template's instance-id until its identity
		// is given, and its own again whatever happens.
		if err := u.putSeed(ctx, templateSeedISO(o.Name, rec)); err != nil {
			return err
		}
		defer func() {
			if err := u.putSeed(context.WithoutCancel(ctx), u.laterSeedISO()); err != nil && retErr == nil {
				retErr = fmt.Errorf("cannot write VM %s's own instance-id into its seed: %w", o.Name, err)
			}
		}()
	}
	if err := u.define(ctx); err != nil {
		return err
	}
	if boots {
		if err := u.virsh.Start(ctx, o.Name); err != nil {
			return err
		}
	} else if err := u.restoreFrom(ctx, rec, filepath.Join(templateDir(u.env.Home, rec.Key), "memory.save")); err != nil {
		return err
	}
	touchTemplate(u.env.Home, rec.Key)
	return u.giveIdentity(ctx, rec, false)
}

// createCloneDisk makes the VM's disk, of gib GiB, an overlay on the
// template's.
func (u *vmRun) createCloneDisk(ctx context.Context, rec *TemplateRecord, gib int) error {
	return u.createVolume(ctx, u.o.Name+".qcow2", max(int64(gib)<<30, 1), "qcow2", rec.DiskVolume, "qcow2")
}

// letGoTemplate releases the template this run holds, if any.
func (u *vmRun) letGoTemplate() {
	if u.releaseTemplate != nil {
		u.releaseTemplate()
		u.releaseTemplate = nil
	}
}
