package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
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
	// Abort ends the command on a signal until it commits (abort.go); nil
	// in tests that call a command directly.
	Abort *abortGuard
}

type evMsg struct {
	ev  Event
	gen int // for timer events: which window armed them
	err error
	// vm is the VM whose event it is: an environment's loop (env.go) steps
	// that VM's row. With isEnv, the message is the environment's own envEv.
	vm    *upRun
	isEnv bool
	envEv EnvEvent
}

// How an `up` begins, decided from the journal before anything runs.
type startKind int

const (
	startFresh       startKind = iota // no VM yet (or a clean restart)
	startResumeFirst                  // the first boot failed earlier: boot and provision again
	startReup                         // the first boot completed
	startReset                        // `vmup reset`: back to the provisioned state
)

// upRun is one `vmup up`: the controller, the one loop that changes the
// phase (this file); the VM it works on and its workers (vm.go, prepare.go);
// and the group of workers that stop_work cancels (workers.go).
type upRun struct {
	controller
	vmRun
	workerGroup
	resetRunning bool // the domain ran when the reset was prepared (prepareReset, for reset)
	// envRun is the environment this VM is brought up in (env.go), nil for
	// a single VM: its loop steps this VM's rows, and some actions report to it.
	envRun *envRun
	lock   *Lock // the VM's lock, while an environment's up holds it
}

// controller is the state of the loop in run. Only that loop's goroutine
// reads or writes it; workers reach it by sending events.
type controller struct {
	phase  Phase
	exit   int        // the code to exit with; rows set it (see keep)
	events chan evMsg // workers and timers send; the loop receives

	windowOpen bool        // the first-boot confirmation window is open (warn_confirm)
	windowGen  int         // which window a timer's event belongs to
	stopWindow func() bool // stops the open window's timer

	booted bool // the VM was started (Booting): it did not run before this up

	failure  string // what went wrong, from the failing event's error, for report_failure
	failHint string // what to do about it, when that error says more than the generic hint
}

func (u *upRun) send(ev Event, err error) { u.events <- evMsg{ev: ev, err: err, vm: u} }

// run is the controller loop of a single VM: the only place the phase
// changes. An environment's loop (env.go) steps each of its VMs the same
// way, by apply.
func (u *upRun) run() int {
	u.begin(make(chan evMsg, 16))
	defer u.masterCancel()
	for !u.phase.Terminal() {
		select {
		case sig := <-u.env.Signals:
			u.apply(evMsg{ev: signalEvent(sig, u.windowOpen, u.o.SuspendOnStop && u.phase.AfterFirstBoot())})
		case m := <-u.events:
			u.apply(m)
		}
	}
	u.finish()
	return u.exit
}

// begin starts the run: Preparing, its worker sending on events.
func (u *upRun) begin(events chan evMsg) {
	u.events = events
	u.startGroup()
	u.masterCtx, u.masterCancel = context.WithCancel(context.Background())
	u.setPhase(Preparing, Preparing)
	u.goWork(u.prepare)
}

// apply steps the VM's row for one event and does its actions.
func (u *upRun) apply(m evMsg) {
	if m.ev == EvConfirmExpired && (!u.windowOpen || m.gen != u.windowGen) {
		return // a window that already closed
	}
	t, ok := Step(u.phase, m.ev)
	if !ok {
		return
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

func (u *upRun) setPhase(from, to Phase) {
	u.phase = to
	if to == Booting {
		u.booted = true
	}
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
			u.events <- evMsg{ev: EvConfirmExpired, gen: gen, vm: u}
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
		if u.envRun != nil {
			u.envRun.report(EnvEvVMReady) // its environment's one playbook provisions it
			return
		}
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
	case ActSave:
		u.goWork(u.save)
	case ActSayBusySaving:
		out.Say("already_saving", "saving VM %s, please wait: a save is never cut short", u.o.Name)
	case ActReset:
		u.goWork(u.reset)
	case ActSayStopOnceKept:
		out.Say("stop_once_kept", "The first boot of VM %s is complete: it shuts down once its provisioned state is kept (Ctrl+C again forces it off now)", u.o.Name)
	case ActClone:
		u.goWork(u.clone)
	case ActSayBusyResetting:
		out.Say("already_resetting", "resetting VM %s, please wait: a reset is never cut short", u.o.Name)
	}
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
	case Saved:
		saySaved(out, u.o.Name)
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
	case from == Suspending, from == Resetting, ev == EvPrepareFailed && u.failHint != "":
		err = &hintedError{msg: u.failure, hint: u.failHint}
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
		if u.failHint != "" {
			err.hint = u.failHint + "\n" + err.hint
		}
	case from == Preparing:
		err = &hintedError{msg: fmt.Sprintf("preparing VM %s failed: %s", name, u.failure), hint: u.failHint}
		if err.hint == "" {
			err.hint = fmt.Sprintf("fix the cause, then run `vmup up %s` again", name)
		}
	default:
		err = &hintedError{msg: fmt.Sprintf("%s failed: %s", from, u.failure)}
		if u.failHint != "" {
			err.hint = u.failHint + "\n"
		}
		if from == Provisioning && u.logPath != "" {
			err.hint = fmt.Sprintf("read the playbook's log %s (the VM keeps running)\n", u.logPath)
		}
		err.hint += fmt.Sprintf("run `vmup ssh %s` or read the console log %s to see what went wrong\n", name, u.paths.Console()) +
			fmt.Sprintf("run `vmup up %s` to try again, or `vmup destroy %s` to remove the VM", name, name)
	}
	reportError(u.env.Out, err)
}
