// Clones that boot: where a memory clone cannot have its own identity (on
// nat a memory state keeps its template's MAC and DHCP lease), a clone
// boots from its template's disk instead (issue 17, item 4). It boots with
// its template's instance-id, so that cloud-init runs no per-instance module
// again, and gets its own identity as a memory clone does.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// whyBoot says why a clone boots from its template's disk, or "" when its
// template's memory is restored.
func (u *vmRun) whyBoot() string {
	switch {
	case u.j.Network != "user":
		return "no memory clone on " + u.j.Network
	case u.cloneOf.diskOnly():
		return "template made on " + u.cloneOf.Network + " keeps no memory state"
	}
	return ""
}

// waitBootCloudInit waits for cloud-init's stages of a clone's boot, over
// its master (asMaster) or logins as the template's guest (s).
func (u *vmRun) waitBootCloudInit(ctx context.Context, s *SSH, asMaster bool) error {
	if !asMaster {
		prev := u.ssh
		u.ssh = s
		defer func() { u.ssh = prev }()
	}
	st, err := u.waitCloudInit(ctx)
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("cloud-init was still running after --boot-timeout %s", u.o.BootTimeout)
	case err != nil:
		return err
	case st.failed() || st.degraded():
		msg, modules := st.report(u.o.Name)
		u.env.Out.WarnModules(modules, "%s", msg)
	}
	return nil
}

// putSeed writes data over the seed volume of later boots, in place: the
// domain, running and defined, names that one volume throughout. Seeds
// are all of one size (one sector per file).
func (u *vmRun) putSeed(ctx context.Context, data []byte) error {
	file, err := u.stageBytes(data)
	if err != nil {
		return err
	}
	defer os.Remove(file)
	return u.virsh.VolUpload(ctx, u.o.Pool, laterSeedVolume(u.o.Name), file)
}

// templateSeedISO is the seed a clone boots with from its template's disk:
// its name, and its template's instance-id, so that cloud-init runs no
// per-instance module again (ssh's would make new host keys).
func templateSeedISO(name string, rec *TemplateRecord) []byte {
	return laterSeedFor(name, rec.InstanceID)
}
