// `vmup run`: setup, workload, results, teardown and cleanup, as one loop
// that steps the run's table (runphase.go) and, in setup, the VMs'.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// runVM is one VM of a run, in the file's order.
type runVM struct {
	o       *Options
	label   string  // its name in the file (or the VM's), for lines and results
	out     *Output // its lines begin with the label where there are several
	paths   Paths
	created bool   // this run made it: only then may cleanup destroy it
	before  string // its domain's state before the run ("" when it did not exist)
	ssh     *SSH
	lock    *Lock  // held from the setup to the cleanup
	up      *upRun // its setup

	// Set by the loop from the workers' messages.
	attempted bool // its runner's start was tried: only the runner can say it stopped
	startErr  error
	exited    bool
	code      int
	confirmed bool
}

// runMsg is a message to the run's loop: a table event, or one VM's news.
type runMsg struct {
	ev   RunEvent
	code int // setup's, workload's exit code
	gen  int // a window's or a stop deadline's timer
	vm   *runVM
	news vmNews
	err  error
}

type vmNews int

const (
	newsNone      vmNews = iota
	newsStarted          // its runner was started (or its start was tried)
	newsStartFail        // its sync or its runner's start failed
	newsExited           // its workload ended (code)
	newsConfirmed        // its runner confirmed the stop (or had ended)
)

// runRun is one `vmup run`. Only its loop reads or writes its fields.
type runRun struct {
	workerGroup // the workload's, the collection's and the teardown's workers
	env         Env
	o           *Options
	id          string
	argv        []string // the workload, when it is a command
	vms         []*runVM
	setup       setupLayer
	envName     string // the environment's name, "" for a VM alone

	phase  RunPhase
	exit   int
	end    RunPhase
	stage  RunPhase // the phase in which the run's end was decided
	events chan runMsg

	windowOpen bool
	windowGen  int
	stopWindow func() bool
	stopGen    int
	stopAsked  bool
	results    string // --results/RUN_ID
	teardownOK bool
	follow     context.CancelFunc // ends the runners' followers and the masters
	followCtx  context.Context
}

func (r *runRun) send(m runMsg) { r.events <- m }

// loop is the run's loop: the only place where the run's phase changes,
// and, in setup, where the VMs' rows are stepped.
func (r *runRun) loop() int {
	r.startGroup()
	r.followCtx, r.follow = context.WithCancel(context.Background())
	defer r.follow()
	r.exit, r.end, r.stage = exitOK, runKeepEnd, RunSetup
	r.setPhase(RunSetup)
	r.setup.start()
	setupEvents := r.setup.events()
	for !r.phase.Terminal() {
		select {
		case sig := <-r.env.Signals:
			r.step(runMsg{ev: r.signalEvent(sig)}, sig)
		case m := <-setupEvents:
			r.setup.handle(m)
			r.afterSetupStep()
		case m := <-r.events:
			r.take(m)
		}
		if r.phase != RunSetup && r.phase != RunStoppingSetup {
			setupEvents = nil
		}
	}
	return r.finish()
}

// afterSetupStep turns what the setup's rows did into the run's events.
func (r *runRun) afterSetupStep() {
	if r.phase == RunSetup && r.setup.stopping() {
		r.step(runMsg{ev: RunEvSetupStopping}, nil)
	}
	if !r.setup.done() {
		return
	}
	code := r.setup.end()
	switch {
	case r.setup.detached():
		for _, v := range r.vms {
			if v.up.booted && v.before == "running" {
				v.before = "shut off" // its journal said running, but the setup had to boot it
			}
		}
		r.step(runMsg{ev: RunEvSetupPassed}, nil)
	case code >= 128:
		r.step(runMsg{ev: RunEvSetupAborted, code: code}, nil)
	default:
		if code == exitOK {
			code = exitFailed // it ended without running: not what a run needs
		}
		r.step(runMsg{ev: RunEvSetupFailed, code: code}, nil)
	}
}

// signalEvent is a signal as the run's event: a SIGINT confirms while the
// window is open.
func (r *runRun) signalEvent(sig os.Signal) RunEvent {
	switch signalEvent(sig, r.windowOpen, false) {
	case EvTerminate, EvStop, EvForceStop:
		return RunEvTerminate
	case EvHangup:
		return RunEvHangup
	case EvInterruptAgain:
		return RunEvInterruptAgain
	}
	return RunEvInterrupt
}

// take is a worker's message: a table event, or one VM's news, which the
// loop sums up into the table's events.
func (r *runRun) take(m runMsg) {
	if m.vm == nil {
		if (m.ev == RunEvConfirmExpired && (!r.windowOpen || m.gen != r.windowGen)) ||
			(m.ev == RunEvStopUnconfirmed && m.gen != r.stopGen) {
			return
		}
		r.step(m, nil)
		return
	}
	v := m.vm
	switch m.news {
	case newsStarted:
		v.attempted = true
	case newsStartFail:
		v.startErr = m.err
		if !r.stopAsked {
			v.out.Warn("%v", m.err)
		}
	case newsExited:
		v.exited, v.code = true, m.code
	case newsConfirmed:
		v.confirmed = true
	}
	r.derive()
}

// derive sends what holds for every VM.
func (r *runRun) derive() {
	switch r.phase {
	case RunWorkload:
		exited, firstFail := 0, -1
		for _, v := range r.vms {
			if v.startErr != nil {
				r.step(runMsg{ev: RunEvWorkloadLost}, nil)
				return
			}
			if v.exited {
				exited++
				if v.code != 0 && firstFail < 0 {
					firstFail = v.code
				}
			}
		}
		switch {
		case exited < len(r.vms):
		case firstFail < 0:
			r.step(runMsg{ev: RunEvWorkloadPassed, code: exitOK}, nil)
		default:
			r.step(runMsg{ev: RunEvWorkloadFailed, code: firstFail}, nil)
		}
	case RunStoppingWorkload:
		for _, v := range r.vms {
			if !v.stopped() {
				return
			}
		}
		r.step(runMsg{ev: RunEvStopConfirmed}, nil)
	}
}

// stopped says nothing of the workload runs on v any more, as far as the
// runner said: confirmed, ended, or never begun.
func (v *runVM) stopped() bool {
	// A runner whose start failed is not waited for: if it did start, it
	// finds the stop request and stops before its workload.
	return v.confirmed || v.exited || !v.attempted || v.startErr != nil
}

// step applies one row of the run's table.
func (r *runRun) step(m runMsg, sig os.Signal) {
	t, ok := RunStep(r.phase, m.ev)
	if !ok {
		return
	}
	bySignal := m.ev == RunEvInterruptAgain || m.ev == RunEvTerminate || m.ev == RunEvHangup
	if bySignal && t.End == RunAborted && r.end != runKeepEnd && !(r.end == RunFinished && r.exit == exitOK) {
		// A late stop (collecting, teardown) aborts a passing run only: a
		// failed one, a failed workload or an earlier stop keep their end,
		// their code and their VMs.
		t.Exit, t.End = keep, runKeepEnd
	}
	switch t.Exit {
	case keep:
	case fromEvent:
		switch {
		case m.ev != RunEvTeardownFailed:
			r.exit = m.code
		case r.exit == exitOK: // a failed workload's own status stays the run's
			r.exit = exitFailed
		}
	default:
		r.exit = t.Exit
	}
	if t.End != runKeepEnd {
		r.end, r.stage = t.End, r.phase
	}
	next := t.Next
	if next == runToEnd {
		next = r.end
	}
	if next != r.phase {
		r.setPhase(next)
	}
	for _, a := range t.Actions {
		r.do(a, sig)
	}
}

func (r *runRun) setPhase(p RunPhase) {
	from := r.phase
	r.phase = p
	if from != p {
		r.closeWindow() // a window is its phase's: a Ctrl+C warned of what that phase does
	}
	msg := p.String()
	if from != p && p != RunSetup {
		msg = from.String() + " -> " + p.String()
	}
	r.env.Out.SayRunPhase(p.String(), msg)
}

func (r *runRun) closeWindow() {
	r.windowOpen = false
	if r.stopWindow != nil {
		r.stopWindow()
		r.stopWindow = nil
	}
}

func (r *runRun) do(a RunAction, sig os.Signal) {
	out := r.env.Out
	switch a {
	case RunActForward:
		r.setup.signal(sig)
		r.afterSetupStep()
	case RunActWarnConfirm:
		r.windowGen++
		gen := r.windowGen
		r.windowOpen = true
		r.stopWindow = r.env.Clock.AfterFunc(r.env.ConfirmWindow, func() {
			r.send(runMsg{ev: RunEvConfirmExpired, gen: gen})
		})
		out.Say("confirm_stop", "Press Ctrl+C again within %ds to stop the run: %s",
			int(r.env.ConfirmWindow.Round(time.Second)/time.Second), r.secondInterrupt())
	case RunActSayNotConfirmed:
		r.closeWindow()
		out.Say("stop_not_confirmed", "stop not confirmed, continuing")
	case RunActSayStopping:
		out.Say("already_stopping", "already %s, please wait: %s", strings.ReplaceAll(r.phase.String(), "_", " "), r.waitingFor())
	case RunActStartWorkload:
		for _, v := range r.vms {
			v.ssh = sshOfJournal(r.env.Runner, v.o.Name, v.paths)
		}
		r.goWork(r.startWorkload)
	case RunActRequestStop:
		r.requestStops()
	case RunActReportUnconfirmed:
		r.reportUnconfirmed()
	case RunActCollect:
		r.goWork(r.collect)
	case RunActStopCollect:
		out.Say("stopping", "Stopping: the collection is cut short; the teardown still runs")
		r.stopWork() // the collection, cut short, says so itself once it ended
	case RunActTeardown:
		r.goWork(r.teardown)
	case RunActStopTeardown:
		out.Say("stopping", "Stopping the teardown playbook")
		r.stopWork() // its playbook's group stopped, the teardown says so itself
	case RunActCleanup:
		r.goWork(r.cleanup)
	}
}

// secondInterrupt says what a second Ctrl+C does where the run stands.
func (r *runRun) secondInterrupt() string {
	switch r.phase {
	case RunWorkload:
		return "each workload is asked to stop (SIGINT, SIGTERM, then SIGKILL within " + r.o.StopTimeout.String() +
			"), then results are collected, the teardown runs and the VMs are cleaned up"
	case RunCollecting:
		return "the collection is cut short; the teardown and the cleanup still run"
	}
	return "the teardown playbook is stopped; the cleanup still runs"
}

// waitingFor says what a stopping run waits for.
func (r *runRun) waitingFor() string {
	switch r.phase {
	case RunStoppingWorkload:
		var names []string
		for _, v := range r.vms {
			if !v.stopped() {
				names = append(names, v.label)
			}
		}
		return "waiting for the runner of " + strings.Join(names, ", ") + " to confirm the stop"
	case RunCleanup:
		return "a cleanup is never cut short"
	}
	return "waiting for it to end"
}

// reportUnconfirmed names the VMs whose runner did not confirm the stop.
func (r *runRun) reportUnconfirmed() {
	var names []string
	for _, v := range r.vms {
		if !v.stopped() {
			names = append(names, v.o.Name)
		}
	}
	reportError(r.env.Out, &hintedError{
		msg: fmt.Sprintf("the workload's stop was not confirmed within %s by VM %s: every VM is kept as it is",
			r.o.StopTimeout+stopMargin, strings.Join(names, ", ")),
		hint: fmt.Sprintf("run `vmup ssh %s` to look (the run's files are in ~/.vmup/runs/%s), `virsh -c %s resume %s` if it was paused, `vmup destroy %s` to remove it",
			names[0], r.id, r.vms[0].o.Connect, names[0], names[0]),
		code: exitStopFailed,
	})
}
