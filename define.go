// The domain's definition: its XML from the settings, defining it, and redefining it when settings or the network change.
package main

import (
	"context"
	"errors"
)

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
