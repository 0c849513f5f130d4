// Cloning by disk: a VM whose network a template's memory state cannot join
// (nat: the state holds its NIC's MAC and lease) boots an overlay on the
// template's disk instead. cloud-init takes the new seed for a new instance
// (hostname, host key, login key); the playbook does not run; the identity
// script then gives it what cloud-init does not: its own machine-id, and
// its login key alone.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// createDiskFromTemplate makes the VM's disk an overlay on the template's,
// recorded in the journal first (prune keeps a template a journal names).
func (u *vmRun) createDiskFromTemplate(ctx context.Context, rec *TemplateRecord) error {
	o, out := u.o, u.env.Out
	out.Say("template_by_disk", "VM %s is on the %s network, which a memory state cannot join (its MAC and address are its template's): it boots template %s's disk, with no playbook",
		o.Name, o.Network, shortKey(rec.Key))
	out.Step("Creating disk from template " + shortKey(rec.Key) + " and cloud-init seed")
	if err := u.updateJournal(func(j *Journal) { j.Template, j.TemplateByDisk = rec.Key, true }); err != nil {
		return err
	}
	return u.createCloneDisk(ctx, rec, o.DiskGiB)
}

// bootedFromTemplate: this first boot boots a template's disk, so its
// provisioning is the clone's identity rather than the playbook; the
// journal says it, for a run that recovers one too.
func (u *vmRun) bootedFromTemplate() string {
	u.jmu.Lock()
	defer u.jmu.Unlock()
	if !u.j.TemplateByDisk {
		return ""
	}
	return u.j.Template
}

// provisionFromTemplateDisk is Provisioning's worker for a clone by disk.
func (u *upRun) provisionFromTemplateDisk(ctx context.Context, key string) {
	defer u.letGoTemplate()
	out := u.env.Out
	out.Step("Giving the clone its own identity")
	if err := u.identityAfterBoot(ctx); err != nil {
		if ctx.Err() != nil {
			out.Fail("interrupted")
			return
		}
		out.Fail(err.Error())
		u.send(EvProvisionFailed, err)
		return
	}
	out.Done("machine-id, host key, login key")
	out.Data(jsonEvent{Event: "provisioned_from_template", Template: key,
		Message: fmt.Sprintf("VM %s provisioned from template %s by its disk (booted, no playbook)", u.o.Name, shortKey(key))})
	u.completeFirstBoot(ctx)
}

// identityAfterBoot runs the identity script over the VM's own SSH: its
// machine-id, a new host key (pinned once the guest serves it) and its
// login key alone. Hostname and instance-id are cloud-init's already; the
// script writes the same again.
func (u *upRun) identityAfterBoot(ctx context.Context) error {
	o := u.o
	u.jmu.Lock()
	user, instanceID := u.j.User, u.j.InstanceID
	u.jmu.Unlock()
	login, err := loadOrCreateKey(u.paths.Key(), "vmup-"+o.Name)
	if err != nil {
		return err
	}
	id, err := newCloneIdentity(o.Name, user, login.Public)
	if err != nil {
		return err
	}
	id.InstanceID = instanceID
	cmd, stdin, err := identityCommand(user, id)
	if err != nil {
		return err
	}
	var stdout bytes.Buffer
	res, err := u.ssh.ExecWith(ctx, bytes.NewReader(stdin), &stdout, cmd)
	var ee *ExitError
	switch {
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode
	case err != nil:
		return fmt.Errorf("cannot give the clone its identity: %w", err)
	}
	served, err := identityOutcome(stdout.Bytes(), res.ExitCode)
	if err != nil {
		return fmt.Errorf("cannot give the clone its identity: %w", err)
	}
	if !served {
		return errors.New("cannot give the clone its identity: the guest's sshd still serves the template's host key")
	}
	if err := writeFileAtomic(u.paths.KnownHosts(), []byte(knownHostsLine(o.Name, id.Host.Public)), 0o600); err != nil {
		return err
	}
	// A login of its own, past the master: the new host key and login key work.
	check := *u.ssh
	check.control, check.keyFinal = "", true
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := check.Exec(cctx, "true"); err != nil {
		return fmt.Errorf("no SSH login with VM %s's own keys after its identity changed: %w", o.Name, err)
	}
	return nil
}
