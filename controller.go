package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Clock makes the confirmation window testable without waiting 10 s.
type Clock interface {
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// Env is what a command needs from the outside world; tests replace parts.
type Env struct {
	Runner        Runner
	Clock         Clock
	Out           *Output
	Home          string
	Poll          time.Duration // how often domain state and SSH are polled
	ConfirmWindow time.Duration
	Signals       <-chan os.Signal
}

type evMsg struct {
	ev  Event
	gen int // for timer events: which window armed them
	err error
}

// How an `up` begins, decided from the journal before anything runs.
type startKind int

const (
	startFresh       startKind = iota // no VM yet (or a clean restart)
	startResumeFirst                  // the first boot failed earlier: boot and provision again
	startReup                         // the first boot completed
)

// upRun is one `vmup up`: the controller loop and the workers it starts.
type upRun struct {
	env   Env
	o     *Options
	paths Paths
	virsh *Virsh
	j     *Journal
	jmu   sync.Mutex
	kind  startKind
	// recover names an earlier, killed first boot that must be removed first.
	recover *Journal

	phase  Phase
	exit   int
	events chan evMsg

	windowOpen bool
	windowGen  int
	stopWindow func() bool

	workCtx    context.Context
	workCancel context.CancelFunc
	workers    *sync.WaitGroup
	oldWorkers []*sync.WaitGroup

	masterCtx    context.Context
	masterCancel context.CancelFunc
	ssh          *SSH
	masterDone   <-chan error
	forwards     *forwarder

	created created // what this run made, for ActRemovePartial
	failure string  // what went wrong, for ActReportFailure
	logPath string  // the last playbook log
	wiped   bool

	// A re-up journals its phases only once it changed the VM (vmChanged, set
	// by its worker under jmu) or started it (started): a run rejected or
	// interrupted before that leaves the journal describing the VM.
	vmChanged bool
	started   bool
}

// created is what a run made in Preparing, undone by an interrupt there.
type created struct {
	mu      sync.Mutex
	dir     bool
	domain  bool
	volumes []string
}

func (c *created) add(vol string) {
	c.mu.Lock()
	c.volumes = append(c.volumes, vol)
	c.mu.Unlock()
}

func (c *created) drop(vol string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, v := range c.volumes {
		if v == vol {
			c.volumes = append(c.volumes[:i], c.volumes[i+1:]...)
			return
		}
	}
}

func vmVolumes(name string) []string {
	return []string{name + ".qcow2", name + "-seed.iso", name + "-kernel", name + "-initrd"}
}

func (u *upRun) send(ev Event, err error) { u.events <- evMsg{ev: ev, err: err} }

// goWork runs f as a worker of the current stage; ActStopWork cancels it.
func (u *upRun) goWork(f func(ctx context.Context)) {
	ctx, wg := u.workCtx, u.workers
	wg.Add(1)
	go func() {
		defer wg.Done()
		f(ctx)
	}()
}

// waitOldWorkers blocks until every worker of earlier stages has returned.
func (u *upRun) waitOldWorkers(old []*sync.WaitGroup) {
	for _, wg := range old {
		wg.Wait()
	}
}

func (u *upRun) updateJournal(f func(j *Journal)) error {
	u.jmu.Lock()
	defer u.jmu.Unlock()
	f(u.j)
	if u.wiped {
		return nil
	}
	return writeJournal(u.paths, u.j)
}

// run is the controller loop: the only place the phase changes.
func (u *upRun) run() int {
	u.events = make(chan evMsg, 16)
	u.workCtx, u.workCancel = context.WithCancel(context.Background())
	u.workers = new(sync.WaitGroup)
	u.masterCtx, u.masterCancel = context.WithCancel(context.Background())
	defer u.masterCancel()
	u.setPhase(Preparing, Preparing)
	u.goWork(u.prepare)

	for !u.phase.Terminal() {
		var m evMsg
		select {
		case sig := <-u.env.Signals:
			m = evMsg{ev: signalEvent(sig, u.windowOpen)}
		case m = <-u.events:
			if m.ev == EvConfirmExpired && (!u.windowOpen || m.gen != u.windowGen) {
				continue // a window that already closed
			}
		}
		t, ok := Step(u.phase, m.ev)
		if !ok {
			continue
		}
		if m.err != nil {
			u.failure = m.err.Error()
		}
		if t.Exit != 0 {
			u.exit = t.Exit
		}
		from := u.phase
		if t.Next != from {
			u.setPhase(from, t.Next)
		}
		for _, a := range t.Actions {
			u.do(a, from, m.ev)
		}
	}
	u.finish()
	return u.exit
}

func (u *upRun) setPhase(from, to Phase) {
	u.phase = to
	if !to.FirstBoot() {
		u.closeWindow()
	}
	u.env.Out.SetPhase(to)
	if to == Booting || to == Running {
		u.started = true
	}
	u.jmu.Lock()
	quiet := u.kind == startReup && !u.vmChanged && !u.started
	u.jmu.Unlock()
	if quiet {
		return
	}
	err := u.updateJournal(func(j *Journal) {
		j.Phase = to.String()
		j.PID = os.Getpid()
		if to == Failed || to == StopFailed {
			j.FailedIn = from.String()
		} else if !to.Terminal() {
			j.FailedIn = ""
		}
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		u.env.Out.Warn("cannot write %s: %v", u.paths.Journal(), err)
	}
}

// markChanged records that a re-up is changing the VM: its phases are journalled from now on.
func (u *upRun) markChanged() {
	u.jmu.Lock()
	u.vmChanged = true
	u.jmu.Unlock()
}

func (u *upRun) closeWindow() {
	u.windowOpen = false
	if u.stopWindow != nil {
		u.stopWindow()
		u.stopWindow = nil
	}
}

func (u *upRun) do(a Action, from Phase, ev Event) {
	out := u.env.Out
	switch a {
	case ActWarnConfirm:
		u.windowGen++
		gen := u.windowGen
		u.windowOpen = true
		secs := int(u.env.ConfirmWindow.Round(time.Second) / time.Second)
		u.stopWindow = u.env.Clock.AfterFunc(u.env.ConfirmWindow, func() {
			u.events <- evMsg{ev: EvConfirmExpired, gen: gen}
		})
		out.Say("confirm_abort", "Press Ctrl+C again within %ds to abort the first boot; the VM will be destroyed", secs)
	case ActSayNotConfirmed:
		u.closeWindow()
		out.Say("abort_not_confirmed", "abort not confirmed, continuing")
	case ActSayAlreadyAborting:
		out.Say("already_aborting", "already aborting, please wait")
	case ActStartFirstBoot:
		u.goWork(func(ctx context.Context) { u.boot(ctx, true) })
	case ActStartBoot:
		u.goWork(func(ctx context.Context) { u.boot(ctx, false) })
	case ActRunPlaybook:
		u.goWork(u.provision)
	case ActCompleteFirstBoot:
		u.completeFirstBoot()
	case ActEnterRunning:
		u.enterRunning()
	case ActStopWork:
		u.stopWork()
	case ActShutdown:
		u.startShutdown()
	case ActForceOff:
		u.goWork(u.forceOff)
	case ActRemovePartial:
		if ev == EvPrepareRejected {
			out.Say("aborting", "Nothing was started: removing what this run created")
		} else {
			out.Say("aborting", "Interrupted while preparing: removing what this run created")
		}
		old := u.oldWorkersSnapshot()
		u.goWork(func(context.Context) { u.removePartial(old) })
	case ActWipe:
		out.Say("aborting", "Aborting the first boot: destroying VM %s and its volumes", u.o.Name)
		old := u.oldWorkersSnapshot()
		u.goWork(func(ctx context.Context) { u.wipe(ctx, old) })
	case ActSayStoppedExternally:
		out.Say("stopped_externally", "VM stopped externally")
	case ActReportFailure:
		u.reportFailure(from)
	}
}

// stopWork cancels the current stage's workers; later workers wait for them.
func (u *upRun) stopWork() {
	u.workCancel()
	u.oldWorkers = append(u.oldWorkers, u.workers)
	u.workCtx, u.workCancel = context.WithCancel(context.Background())
	u.workers = new(sync.WaitGroup)
}

// finish runs once a terminal phase is reached.
func (u *upRun) finish() {
	out := u.env.Out
	if u.phase != Detached {
		u.stopWork()
		u.waitOldWorkers(u.oldWorkers)
	}
	if u.forwards != nil {
		u.forwards.Close()
	}
	if u.ssh != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		u.ssh.Exit(ctx)
		cancel()
	}
	u.masterCancel()
	if u.masterDone != nil {
		select {
		case <-u.masterDone:
		case <-time.After(15 * time.Second):
		}
	}
	if u.ssh != nil {
		os.Remove(controlPath(u.paths)) // a master that died by a signal leaves its socket
	}
	u.workCancel()
	switch u.phase {
	case Stopped:
		out.Say("stopped", "VM %s is shut off (start it again with: vmup up %s)", u.o.Name, u.o.Name)
	case Aborted:
		if u.wiped {
			out.Say("aborted", "Aborted: VM %s was removed", u.o.Name)
		} else {
			out.Say("aborted", "Aborted")
		}
	case Detached:
		out.Say("detached", "VM %s keeps running (stop it with: vmup down %s)", u.o.Name, u.o.Name)
	}
	out.Exit(u.exit, u.phase.String())
}

func (u *upRun) reportFailure(from Phase) {
	out := u.env.Out
	name := u.o.Name
	switch {
	case u.phase == StopFailed:
		out.Error("VM %s could not be stopped: %s", name, u.failure)
		out.Hint("try: virsh -c %s destroy %s", u.o.Connect, name)
	case from == Wiping:
		out.Error("could not remove VM %s completely: %s", name, u.failure)
		out.Hint("run: vmup destroy %s", name)
	case from == Preparing:
		out.Error("preparing VM %s failed: %s", name, u.failure)
		out.Hint("`vmup up %s` again starts it clean; `vmup destroy %s` removes what was made", name, name)
	default:
		out.Error("%s failed: %s", from, u.failure)
		if from == Provisioning && u.logPath != "" {
			out.Hint("the VM keeps running; playbook log: %s", u.logPath)
		}
		out.Hint("inspect with `vmup ssh %s` or the console log %s; `vmup up %s` retries; `vmup destroy %s` removes it",
			name, u.paths.Console(), name, name)
	}
}

// ---- workers: each ends by sending one event, unless it was cancelled ----

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
	state, err := u.virsh.DomState(ctx, u.o.Name)
	if err != nil {
		fail(err)
		return
	}
	if state == "running" {
		out.Skip("already running")
	} else {
		if err := u.virsh.Start(ctx, u.o.Name); err != nil {
			fail(err)
			return
		}
		out.Done("")
	}
	out.Step("Waiting for SSH")
	ep, err := u.endpoint(ctx)
	if err != nil {
		fail(err)
		return
	}
	u.ssh = newSSH(u.env.Runner, u.o.Name, u.j.User, u.paths, ep)
	done, err := u.ssh.WaitMaster(ctx, u.masterCtx, u.env.Poll, u.domainAlive)
	u.masterDone = done
	if err != nil {
		fail(fmt.Errorf("no SSH login on %s: %w", ep, err))
		return
	}
	out.Done(ep.String())
	if firstBoot {
		out.Step("Waiting for cloud-init")
		res, err := u.ssh.Exec(ctx, "cloud-init", "status", "--wait")
		var ee *ExitError
		switch {
		case err == nil:
			out.Done("")
		case errors.As(err, &ee) && ee.ExitCode == 2:
			// 2: cloud-init finished with recoverable errors (deprecated keys and such).
			out.Done("finished with warnings")
		default:
			fail(fmt.Errorf("cloud-init: %s", strings.TrimSpace(string(res.Stdout)+" "+err.Error())))
			return
		}
	}
	u.send(EvReady, nil)
}

// domainAlive fails once the domain stopped: waiting for its SSH is pointless then.
func (u *upRun) domainAlive(ctx context.Context) error {
	state, err := u.virsh.DomState(ctx, u.o.Name)
	if err != nil {
		return err
	}
	if state != "running" {
		return fmt.Errorf("the domain is %s; see the console log %s", state, u.paths.Console())
	}
	return nil
}

// endpoint says where to reach the guest's sshd.
func (u *upRun) endpoint(ctx context.Context) (Endpoint, error) {
	if u.j.Network == "user" {
		return Endpoint{Host: "127.0.0.1", Port: u.j.SSHPort}, nil
	}
	for {
		ip, err := u.virsh.DomIPv4(ctx, u.o.Name)
		if err == nil && ip != "" {
			u.updateJournal(func(j *Journal) { j.SSHHost, j.SSHPort = ip, 22 })
			return Endpoint{Host: ip, Port: 22}, nil
		}
		if err := sleepCtx(ctx, u.env.Poll); err != nil {
			return Endpoint{}, err
		}
	}
}

func (u *upRun) provision(ctx context.Context) {
	out := u.env.Out
	if u.o.Playbook == "" || u.o.NoProvision {
		out.Step("Provisioning")
		out.Skip("no playbook")
		u.send(EvProvisioned, nil)
		return
	}
	out.Step("Provisioning with " + u.o.Playbook)
	if err := writeInventory(u.paths, u.o.Name, u.j.User, u.ssh.ep); err != nil {
		out.Fail(err.Error())
		u.send(EvProvisionFailed, err)
		return
	}
	logPath, err := newAnsible(u.env.Runner).Run(ctx, u.paths, u.ssh, u.o.Playbook, u.o.PlaybookArgs,
		out.Indented("      "), func(pgid int) { u.updateJournal(func(j *Journal) { j.PlaybookPGID = pgid }) })
	u.logPath = logPath
	u.updateJournal(func(j *Journal) { j.PlaybookPGID = 0 })
	if ctx.Err() != nil {
		out.Fail("interrupted")
		return
	}
	if err != nil {
		out.Fail("see " + logPath)
		u.send(EvProvisionFailed, err)
		return
	}
	out.Done("")
	u.send(EvProvisioned, nil)
}

// completeFirstBoot journals, before Running is entered, that no interrupt
// may ever wipe this VM again. Then it replaces the seed, which holds the
// guest's private host key, by one with the same instance-id and nothing
// else: without any seed cloud-init would take the next boot for a new
// instance and make new host keys, which vmup's pinned known_hosts rejects.
func (u *upRun) completeFirstBoot() {
	if err := u.updateJournal(func(j *Journal) { j.FirstBootDone = true }); err != nil {
		u.env.Out.Warn("cannot record the completed first boot: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vol := u.o.Name + "-seed.iso"
	if err := u.virsh.VolDelete(ctx, u.o.Pool, vol); err != nil {
		u.env.Out.Warn("cannot delete the cloud-init seed volume: %v", err)
		return
	}
	iso := buildISO("cidata", map[string][]byte{
		"meta-data": metaData(u.o.Name, u.j.InstanceID),
		"user-data": []byte("#cloud-config\n"),
	})
	if err := u.uploadBytes(ctx, iso, vol); err != nil {
		u.env.Out.Warn("cannot write the cloud-init seed for later boots: %v", err)
	}
}

func (u *upRun) enterRunning() {
	out := u.env.Out
	ep := Endpoint{Host: u.j.SSHHost, Port: u.j.SSHPort}
	if ep.Host == "" {
		ep.Host = "127.0.0.1"
	}
	// The ready line lists only forwards that are served: a user network's by
	// QEMU, a NAT network's by the listeners Preparing bound, while vmup runs.
	var served []Forward
	switch {
	case u.j.Network == "user":
		served = u.o.Forwards
	case u.forwards != nil:
		u.forwards.serve(ep.Host)
		served = u.o.Forwards
	case len(u.o.Forwards) > 0:
		out.Warn("forwards %s are not served: on the NAT network vmup serves them only while `vmup up %s` runs in the foreground",
			strings.Join(forwardStrings(u.o.Forwards), ", "), u.o.Name)
	}
	msg := fmt.Sprintf("VM %s is running: `vmup ssh %s` (%s@%s)", u.o.Name, u.o.Name, u.j.User, ep)
	for _, f := range served {
		msg += fmt.Sprintf(", %s:%d -> %d", f.Addr, f.Host, f.Guest)
	}
	out.Say("ready", "%s", msg)
	if u.o.Detach {
		u.send(EvDetach, nil)
		return
	}
	out.Say("waiting", "Press Ctrl+C to shut the VM down")
	u.goWork(u.watch)
}

// watch reports when the domain stops by itself or from outside.
func (u *upRun) watch(ctx context.Context) {
	for sleepCtx(ctx, u.env.Poll) == nil {
		state, err := u.virsh.DomState(ctx, u.o.Name)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNotFound) || (err == nil && state != "running" && state != "paused" && state != "in shutdown") {
			u.send(EvDomainStopped, nil)
			return
		}
	}
}

func (u *upRun) startShutdown() {
	old := u.oldWorkers
	u.env.Out.Say("stopping", "Shutting down VM %s (up to %s; Ctrl+C again forces it off)", u.o.Name, u.o.ShutdownTimeout)
	u.goWork(func(ctx context.Context) {
		u.waitOldWorkers(old)
		timer := time.NewTimer(u.o.ShutdownTimeout)
		defer timer.Stop()
		if err := u.virsh.Shutdown(ctx, u.o.Name); err != nil && ctx.Err() == nil {
			if st, serr := u.virsh.DomState(ctx, u.o.Name); serr == nil && st == "running" {
				u.env.Out.Warn("ACPI shutdown failed: %v", err)
				u.send(EvShutdownTimeout, nil)
			}
		}
		timedOut := false
		for {
			state, err := u.virsh.DomState(ctx, u.o.Name)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errNotFound) || (err == nil && state == "shut off") {
				u.send(EvDomainStopped, nil)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
				if !timedOut {
					timedOut = true
					u.env.Out.Warn("the guest did not shut down within %s", u.o.ShutdownTimeout)
					u.send(EvShutdownTimeout, nil)
				}
			case <-time.After(u.env.Poll):
			}
		}
	})
}

func (u *upRun) forceOff(ctx context.Context) {
	u.env.Out.Say("force_off", "Forcing VM %s off", u.o.Name)
	err := u.virsh.Destroy(ctx, u.o.Name)
	if err == nil || ctx.Err() != nil || errors.Is(err, errNotFound) {
		return // the shutdown poll sees the domain stop
	}
	if st, serr := u.virsh.DomState(ctx, u.o.Name); serr == nil && st != "running" {
		return
	}
	u.send(EvForceOffFailed, err)
}

func (u *upRun) wipe(_ context.Context, old []*sync.WaitGroup) {
	u.waitOldWorkers(old)
	// Cleanup must finish even though the run was interrupted.
	ctx := context.Background()
	reapGroup(u.j.PlaybookPGID, u.paths)
	if u.ssh != nil {
		u.ssh.Exit(ctx)
	}
	u.masterCancel()
	if err := wipeVM(ctx, u.virsh, u.o.Pool, u.paths); err != nil {
		u.send(EvWipeFailed, err)
		return
	}
	u.jmu.Lock()
	u.wiped = true
	u.jmu.Unlock()
	u.send(EvWipeDone, nil)
}

func (u *upRun) oldWorkersSnapshot() []*sync.WaitGroup {
	return append([]*sync.WaitGroup(nil), u.oldWorkers...)
}

// removePartial undoes what this run created in Preparing, and nothing else.
func (u *upRun) removePartial(old []*sync.WaitGroup) {
	u.waitOldWorkers(old)
	ctx := context.Background() // cleanup must finish even though the run was interrupted
	c := &u.created
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	if c.domain {
		errs = append(errs, u.virsh.Undefine(ctx, u.o.Name))
	}
	for i := len(c.volumes) - 1; i >= 0; i-- {
		errs = append(errs, u.virsh.VolDelete(ctx, u.o.Pool, c.volumes[i]))
	}
	if c.dir {
		u.jmu.Lock()
		u.wiped = true
		u.jmu.Unlock()
		errs = append(errs, os.RemoveAll(u.paths.Dir))
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, errNotFound) {
			u.send(EvWipeFailed, err)
			return
		}
	}
	u.send(EvWipeDone, nil)
}

// reapGroup kills what is left of a process group that an earlier vmup
// started for this VM. A recorded group id may have been reused since, so only
// members whose command line names the VM's state dir are killed.
func reapGroup(pgid int, p Paths) {
	if pgid <= 1 {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := unix.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), p.Dir) {
			unix.Kill(pid, syscall.SIGKILL)
		}
	}
}

// wipeVM removes a vmup VM: domain, volumes, state. Nothing of it is left
// but the shared base volume. A domain vmup did not create is refused.
func wipeVM(ctx context.Context, v *Virsh, pool string, p Paths) error {
	name := p.Name()
	owned, err := v.Owned(ctx, name)
	switch {
	case errors.Is(err, errNotFound):
	case err != nil:
		return err
	case !owned:
		return fmt.Errorf("domain %s was not created by vmup; not touching it", name)
	default:
		if err := v.Destroy(ctx, name); err != nil && !errors.Is(err, errNotFound) && !isNotRunning(err) {
			return err
		}
		if err := v.Undefine(ctx, name); err != nil && !errors.Is(err, errNotFound) {
			return err
		}
	}
	for _, vol := range vmVolumes(name) {
		if err := v.VolDelete(ctx, pool, vol); err != nil {
			return err
		}
	}
	os.Remove(controlPath(p))
	return os.RemoveAll(p.Dir)
}

func isNotRunning(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "not running")
}
