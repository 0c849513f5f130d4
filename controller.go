package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	// replaced is the journal of the VM that --reset replaces.
	replaced *Journal
	// holdJournal keeps j off the disk while the journal there still
	// describes the VM as it was (see releaseJournal).
	holdJournal bool

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

	// failHint says what to do about the failure when more is known than the generic hint.
	failHint string
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

// validVMVolume says whether vol is a name vmup gives a volume of VM name
// (NAME.qcow2, NAME-seed*.iso, NAME-kernel, NAME-initrd), so that a journal
// read from disk cannot make vmup delete any other volume.
func validVMVolume(name, vol string) bool {
	if !validName(name) {
		return false
	}
	switch vol {
	case name + ".qcow2", name + "-kernel", name + "-initrd":
		return true
	}
	mid, ok := strings.CutPrefix(vol, name+"-seed")
	mid, iso := strings.CutSuffix(mid, ".iso")
	return ok && iso && seedSuffixRE.MatchString(mid)
}

var seedSuffixRE = regexp.MustCompile(`^(-[0-9a-z]+)?$`)

// The first boot's seed holds the guest's private host key; the seed of later
// boots only the instance id.
func firstSeedVolume(name string) string { return name + "-seed.iso" }
func laterSeedVolume(name string) string { return name + "-seed-boot.iso" }

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
	if u.wiped || u.holdJournal {
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
			var h interface{ Hint() string }
			if errors.As(m.err, &h) {
				u.failHint = h.Hint()
			}
		}
		if t.Exit != keep {
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
	if to == Starting || to == Booting || to == Running {
		u.releaseJournal()
	}
	err := u.updateJournal(func(j *Journal) {
		j.Phase = to
		j.PID = os.Getpid()
		if to == Failed || to == StopFailed {
			j.FailedIn = from
		} else if !to.Terminal() {
			j.FailedIn = noPhase
		}
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		u.env.Out.Warn("cannot write %s: %v", u.paths.Journal(), err)
	}
}

// releaseJournal lets this run's journal onto the disk: the run is about to
// change the VM or has started it, so the journal there must say so.
func (u *upRun) releaseJournal() {
	u.jmu.Lock()
	u.holdJournal = false
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
	case ActEnterRunning:
		u.enterRunning()
	case ActStopWork:
		u.stopWork()
	case ActShutdown:
		u.startShutdown()
	case ActForceOff:
		u.goWork(u.forceOff)
	case ActRemovePartial:
		if ev == EvPrepareRejected || ev == EvPrepareFailed {
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
		u.reportFailure(from, ev)
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
	masterEnded := true
	if u.masterDone != nil {
		select {
		case <-u.masterDone:
		case <-time.After(15 * time.Second):
			masterEnded = false
		}
	}
	if u.ssh != nil && u.ssh.control != "" {
		os.Remove(u.ssh.control) // a master that died by a signal leaves its socket
	}
	if masterEnded {
		u.removeControlDir()
	}
	u.workCancel()
	switch u.phase {
	case Stopped:
		out.Say("stopped", "VM %s is shut off (start it again with `vmup up %s`)", u.o.Name, u.o.Name)
	case Aborted:
		if u.wiped {
			out.Say("aborted", "Aborted: VM %s was removed", u.o.Name)
		} else {
			out.Say("aborted", "Aborted")
		}
	case Detached:
		out.Say("detached", "VM %s keeps running (stop it with `vmup down %s`)", u.o.Name, u.o.Name)
	}
	out.Exit(u.exit, u.phase.String())
}

// reportFailure reports what failed and what to do about it; the table's row
// has set the exit code.
func (u *upRun) reportFailure(from Phase, ev Event) {
	name := u.o.Name
	var err *hintedError
	switch {
	case ev == EvPrepareRejected:
		err = &hintedError{msg: u.failure, hint: u.failHint}
	case ev == EvRecordFailed:
		err = &hintedError{
			msg:  "the playbook passed, but the completed first boot could not be recorded: " + u.failure,
			hint: fmt.Sprintf("free space in %s, then run `vmup up %s` to run the first boot's playbook again", u.env.Home, name),
		}
	case u.phase == StopFailed:
		err = &hintedError{
			msg:  fmt.Sprintf("VM %s could not be stopped: %s", name, u.failure),
			hint: fmt.Sprintf("run `virsh -c %s destroy %s` to force it off", u.o.Connect, name),
		}
	case from == Wiping:
		err = &hintedError{
			msg:  fmt.Sprintf("could not remove VM %s completely: %s", name, u.failure),
			hint: fmt.Sprintf("run `vmup destroy %s` to remove the rest", name),
		}
	case from == Preparing:
		err = &hintedError{msg: fmt.Sprintf("preparing VM %s failed: %s", name, u.failure), hint: u.failHint}
		if err.hint == "" {
			err.hint = fmt.Sprintf("fix the cause, then run `vmup up %s` again", name)
		}
	default:
		err = &hintedError{msg: fmt.Sprintf("%s failed: %s", from, u.failure)}
		if from == Provisioning && u.logPath != "" {
			err.hint = fmt.Sprintf("read the playbook's log %s (the VM keeps running)\n", u.logPath)
		}
		err.hint += fmt.Sprintf("run `vmup ssh %s` or read the console log %s to see what went wrong\n", name, u.paths.Console()) +
			fmt.Sprintf("run `vmup up %s` to try again, or `vmup destroy %s` to remove the VM", name, name)
	}
	reportError(u.env.Out, err)
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
	if u.ssh.control, err = u.controlSocket(); err != nil {
		fail(fmt.Errorf("cannot make a dir for the ssh ControlMaster's socket: %w", err))
		return
	}
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

// controlSocket picks this run's ControlMaster socket. When the state dir's
// path is too long for one, it lives in a private dir in the temp dir,
// journalled so `vmup ssh` finds it and a wipe removes it.
func (u *upRun) controlSocket() (string, error) {
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
func (u *upRun) removeControlDir() {
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
func (u *upRun) domainAlive(ctx context.Context) error {
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
		u.completeFirstBoot(ctx)
		return
	}
	out.Step("Provisioning with " + u.o.Playbook)
	if err := writeInventory(u.paths, u.o.Name, u.j.User, u.ssh.ep); err != nil {
		out.Fail(err.Error())
		u.send(EvProvisionFailed, err)
		return
	}
	// While there is space: the playbook may fill the disk.
	if err := u.prepareCompletion(); err != nil {
		out.Fail(err.Error())
		u.send(EvProvisionFailed, fmt.Errorf("cannot prepare the record of the completed first boot: %w", err))
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
	u.completeFirstBoot(ctx)
}

func (u *upRun) prepareCompletion() error {
	u.jmu.Lock()
	defer u.jmu.Unlock()
	return prepareCompletion(u.paths, *u.j)
}

// completeFirstBoot records on disk, before Running is entered, that no
// interrupt may ever wipe this VM again, unless an abort took hold first.
// Then the seed that holds the guest's private host key goes.
func (u *upRun) completeFirstBoot(ctx context.Context) {
	u.jmu.Lock()
	if ctx.Err() != nil {
		u.jmu.Unlock()
		return // a confirmed abort came first: the VM is being removed
	}
	err := commitCompletion(u.paths)
	if err != nil {
		// No prepared record (no playbook ran): write the journal itself.
		done := *u.j
		done.FirstBootDone, done.PlaybookPGID = true, 0
		err = writeJournal(u.paths, &done)
	}
	if err == nil {
		u.j.FirstBootDone, u.j.PlaybookPGID = true, 0
	}
	u.jmu.Unlock()
	if err != nil {
		u.send(EvRecordFailed, err)
		return
	}
	// Not cancellable: once recorded, the VM is kept, so this finishes too.
	seedCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	u.replaceSeed(seedCtx)
	cancel()
	u.send(EvProvisioned, nil)
}

// replaceSeed attaches the seed of later boots, made in Preparing, then
// deletes the first-boot seed, which holds the guest's private host key. In
// that order, the VM always has a seed: without one cloud-init would take
// the next boot for a new instance and make new host keys, which the pinned
// known_hosts rejects. A later up finishes what fails here.
func (u *upRun) replaceSeed(ctx context.Context) {
	later := laterSeedVolume(u.o.Name)
	if u.j.SeedVolume == later {
		return
	}
	err := u.ensureLaterSeed(ctx)
	if err == nil {
		err = u.virsh.Define(ctx, u.paths.File("domain-later.xml"))
	}
	if err != nil {
		u.env.Out.Warn("the cloud-init seed still holds the guest's private host key (%v); `vmup up %s` replaces it later", err, u.o.Name)
		return
	}
	u.updateJournal(func(j *Journal) { j.SeedVolume = later })
	first := firstSeedVolume(u.o.Name)
	if err := u.virsh.VolDelete(ctx, u.o.Pool, first); err != nil {
		u.env.Out.Warn("cannot delete the first boot's cloud-init seed: %v", err)
		return
	}
	u.updateJournal(func(j *Journal) {
		j.Volumes = slices.DeleteFunc(j.Volumes, func(v string) bool { return v == first })
	})
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
	u.jmu.Lock()
	completed := u.j.FirstBootDone
	u.jmu.Unlock()
	if completed {
		u.env.Out.Say("kept", "The first boot of VM %s completed before the abort took hold: it is kept", u.o.Name)
		u.send(EvCompletedMeanwhile, nil)
		return
	}
	// Cleanup must finish even though the run was interrupted.
	ctx := context.Background()
	reapGroup(u.j.PlaybookPGID, u.paths)
	if u.ssh != nil {
		u.ssh.Exit(ctx)
	}
	u.masterCancel()
	u.jmu.Lock()
	vols := slices.Clone(u.j.Volumes)
	u.jmu.Unlock()
	if err := wipeVM(ctx, u.virsh, u.o.Pool, u.paths, vols); err != nil {
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
		errs = append(errs, u.virsh.VolDeleteWhenFree(ctx, u.o.Pool, c.volumes[i], 10*time.Second))
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
		if err == nil && namesDir(cmdline, p.Dir) {
			unix.Kill(pid, syscall.SIGKILL)
		}
	}
}

// namesDir says whether an argv word names dir or a path in it: dir must be a
// whole path component (vms/web is not vms/web2). It may start a word, follow
// '=' (-o IdentityFile=…) or stand in ansible's joined, quoted ssh_args.
func namesDir(cmdline []byte, dir string) bool {
	if dir == "" {
		return false
	}
	for _, arg := range strings.Split(string(cmdline), "\x00") {
		for i := 0; ; {
			j := strings.Index(arg[i:], dir)
			if j < 0 {
				break
			}
			start, end := i+j, i+j+len(dir)
			before := start == 0 || strings.ContainsRune("= '\"", rune(arg[start-1]))
			after := end == len(arg) || strings.ContainsRune("/ '\"", rune(arg[end]))
			if before && after {
				return true
			}
			i = start + 1
		}
	}
	return false
}

// wipeVM removes a vmup VM: domain, the volumes its journal lists (vols),
// state. Nothing of it is left but the shared base volume. A domain vmup did
// not create is refused, and so is a journal that names a volume vmup would
// not have made for this VM.
func wipeVM(ctx context.Context, v *Virsh, pool string, p Paths, vols []string) error {
	name := p.Name()
	for _, vol := range vols {
		if !validVMVolume(name, vol) {
			return fmt.Errorf("%s names volume %q, which is no volume of VM %s; not deleting anything", p.Journal(), vol, name)
		}
	}
	owned, err := v.Owned(ctx, name)
	switch {
	case errors.Is(err, errNotFound):
	case err != nil:
		return err
	case !owned:
		return fmt.Errorf("domain %s was not created by vmup; not touching it", name)
	default:
		if err := removeDomain(ctx, v, name); err != nil {
			return err
		}
	}
	for _, vol := range vols {
		if err := v.VolDelete(ctx, pool, vol); err != nil {
			return err
		}
	}
	// A private socket dir (see controlPath) goes with the VM.
	if j, err := readJournal(p); err == nil && j != nil && validControlDir(j.ControlDir) == nil {
		os.RemoveAll(j.ControlDir)
	}
	return os.RemoveAll(p.Dir)
}

// removeDomain stops and undefines a domain with what virsh users may have
// added by hand: internal snapshots, a managed save image, UEFI NVRAM.
// External snapshots name files vmup did not make: refused before anything
// is changed.
func removeDomain(ctx context.Context, v *Virsh, name string) error {
	external, err := v.Snapshots(ctx, name, "--external")
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	if len(external) > 0 {
		return &hintedError{
			msg:  fmt.Sprintf("domain %s has external snapshots that vmup did not make (%s); nothing was removed", name, strings.Join(external, ", ")),
			hint: fmt.Sprintf("remove them with `virsh -c %s snapshot-delete %s NAME`, or merge them into the disk, then run the command again", v.uri, name),
		}
	}
	if err := v.Destroy(ctx, name); err != nil && !errors.Is(err, errNotFound) && !isNotRunning(err) {
		return err
	}
	internal, err := v.Snapshots(ctx, name, "--internal")
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	for _, snap := range internal {
		if err := v.SnapshotDelete(ctx, name, snap); err != nil && !errors.Is(err, errNotFound) {
			return err
		}
	}
	if err := v.Undefine(ctx, name); err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	return nil
}

func isNotRunning(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "not running")
}
