// Booting: the domain started, its SSH endpoint and the ssh master, cloud-init's end.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func (u *upRun) boot(ctx context.Context, firstBoot bool) {
	out := u.env.Out
	ctx, cancel := context.WithTimeout(ctx, u.o.BootTimeout)
	defer cancel()
	fail := func(err error) {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			out.Fail("timed out")
			u.send(EvBootTimeout, fmt.Errorf("the VM was not ready within --boot-timeout %s", u.o.BootTimeout))
			return
		}
		if ctx.Err() != nil {
			out.Fail("interrupted")
			return // stopped by the controller
		}
		out.Fail(err.Error())
		u.send(EvBootFailed, err)
	}
	out.Step("Booting VM")
	state, reason, err := u.virsh.DomStateReason(ctx, u.o.Name)
	if err != nil {
		fail(err)
		return
	}
	switch {
	case state == "running" && u.restored:
		out.Done("back in its provisioned state")
	case state == "running":
		out.Skip("already running")
	default:
		if err := u.virsh.Start(ctx, u.o.Name); err != nil {
			fail(err)
			return
		}
		if isSaved(state, reason) || u.hasSave {
			u.restored = true
			out.Done("resumed from its saved state")
		} else {
			out.Done("")
		}
	}
	var byAgent <-chan error
	if u.restored {
		byAgent = u.setClockByAgent(ctx)
	}
	out.Step("Waiting for SSH")
	ep, err := u.endpoint(ctx)
	if err != nil {
		fail(err)
		return
	}
	u.ssh = newSSH(u.env.Runner, u.o.Name, u.j.User, u.paths, ep)
	if u.ssh.control, err = u.controlSocket(); err != nil {
		fail(fmt.Errorf("cannot make a dir for the ssh ControlMaster's socket: %w", err))
		return
	}
	u.ssh.restored = u.restored
	done, err := u.ssh.WaitMaster(ctx, u.masterCtx, u.env.Poll, u.domainAlive)
	u.masterDone = done
	if err != nil {
		fail(fmt.Errorf("no SSH login on %s: %w", ep, err))
		return
	}
	out.Done(ep.String())
	if u.restored {
		u.setGuestClock(ctx, byAgent)
	}
	if firstBoot && !u.cloudInitFinished(ctx, fail) {
		return
	}
	u.send(EvReady, nil)
}

// cloudInitFinished waits for cloud-init and reports how it ended. Its
// errors, while vmup's own login works, are a warning under
// --cloud-init-errors warn, and fail the boot under fail.
func (u *upRun) cloudInitFinished(ctx context.Context, fail func(error)) bool {
	out := u.env.Out
	out.Step("Waiting for cloud-init")
	st, err := u.waitCloudInit(ctx)
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		out.Fail("timed out")
		u.send(EvBootTimeout, fmt.Errorf("cloud-init was still running after --boot-timeout %s", u.o.BootTimeout))
		return false
	case err != nil:
		fail(err)
		return false
	case !st.failed() && !st.degraded():
		if st.Status == "done" {
			out.Done("")
		} else {
			out.Done(st.Status) // disabled
		}
		return true
	}
	what := "finished with errors"
	if !st.failed() {
		what = "finished with recoverable errors"
	}
	msg, modules := st.report(u.o.Name)
	if u.o.CloudInitErrors == "fail" {
		out.Fail(what)
	} else {
		out.Done(what)
	}
	out.WarnModules(modules, "%s", msg)
	if u.o.CloudInitErrors == "fail" {
		u.send(EvBootFailed, &hintedError{msg: fmt.Sprintf("cloud-init %s, and --cloud-init-errors is fail", what),
			hint: fmt.Sprintf("run `vmup up %s --cloud-init-errors warn` to go on to the playbook", u.o.Name)})
		return false
	}
	return true
}

// controlSocket picks this run's ControlMaster socket. When the state dir's
// path is too long for one, it lives in a private dir in the temp dir,
// journalled so `vmup ssh` finds it and a wipe removes it.
func (u *vmRun) controlSocket() (string, error) {
	u.jmu.Lock()
	sock := controlPath(u.paths, u.j)
	u.jmu.Unlock()
	if sock != "" {
		// Left by a killed run's master (this run holds the VM's lock): ssh
		// would refuse to be a master on it, and no probe would ever pass.
		os.Remove(sock)
		return sock, nil
	}
	dir, err := newControlDir()
	if err != nil {
		return "", err
	}
	if err := u.updateJournal(func(j *Journal) { j.ControlDir = dir }); err != nil {
		os.Remove(dir)
		return "", err
	}
	return filepath.Join(dir, "ssh.sock"), nil
}

// removeControlDir removes the private socket dir once no master uses it.
func (u *vmRun) removeControlDir() {
	u.jmu.Lock()
	dir := u.j.ControlDir
	u.jmu.Unlock()
	if dir == "" {
		return
	}
	if validControlDir(dir) == nil {
		os.RemoveAll(dir)
	}
	u.updateJournal(func(j *Journal) { j.ControlDir = "" })
}

// domainAlive fails once the domain stopped: waiting for its SSH is pointless then.
func (u *vmRun) domainAlive(ctx context.Context) error {
	state, err := u.virsh.DomState(ctx, u.o.Name)
	if err != nil {
		return err
	}
	if state != "running" {
		return fmt.Errorf("the domain is %s", state) // the failure's hint names the console log
	}
	return nil
}

// endpoint says where to reach the guest's sshd.
func (u *vmRun) endpoint(ctx context.Context) (Endpoint, error) {
	if u.j.Network == "user" {
		return Endpoint{Host: "127.0.0.1", Port: u.j.SSHPort}, nil
	}
	for {
		ip, err := u.virsh.DomIPv4(ctx, u.o.Name)
		if err == nil && ip != "" {
			u.updateJournal(func(j *Journal) { j.SSHHost, j.SSHPort = ip, 22 })
			return Endpoint{Host: ip, Port: 22}, nil
		}
		if err := sleepCtx(ctx, min(u.env.Poll, 250*time.Millisecond)); err != nil {
			return Endpoint{}, err
		}
	}
}
