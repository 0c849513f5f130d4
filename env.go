// `vmup up` of an environment: one loop that steps the environment's table
// (envphase.go) and each VM's own (phase.go).
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// envRun is one `vmup up` of an environment. Its loop (run) is the only
// place where the environment's phase and its VMs' phases change: a VM's
// event steps that VM's row, and what the VMs report (vm_ready, vm_running,
// their ends) steps the environment's. Only that loop's goroutine reads or
// writes its fields but events.
type envRun struct {
	workerGroup // the playbook's worker: stop_playbook cancels it
	env         Env
	o           *Options // the command's (o.Env, -d, --parallel)
	e           *Environment
	vms         []*upRun // the VMs of this run, in the file's order
	parallel    int
	// holdLocks: the VMs' locks stay held once each VM's up ended (`vmup run`
	// goes on working on them and lets go at its end).
	holdLocks bool

	phase  EnvPhase
	exit   int
	events chan evMsg // workers, timers and the VMs' workers send; the loop receives
	queue  []evMsg    // what rows and the loop itself tell the VMs and the environment, in order

	started  map[*upRun]bool // begun (Preparing); the others wait for a slot
	ended    map[*upRun]bool // reached a terminal phase, or never started once the run stopped
	finished sync.WaitGroup  // each ended VM's finish

	windowOpen bool
	windowGen  int
	stopWindow func() bool

	// Set by the playbook worker before it sends its result.
	recorded []*upRun // the new VMs whose completed first boot is on disk
	failures []*upRun // the new VMs whose record failed
	fault    error    // why the playbook or a record failed
}

// report is a VM's outcome for the environment (a VM's action, in the loop).
func (r *envRun) report(ev EnvEvent) { r.queue = append(r.queue, evMsg{isEnv: true, envEv: ev}) }

// tell gives VM u an event, stepped by the loop after the current row.
func (r *envRun) tell(u *upRun, ev Event, err error) {
	r.queue = append(r.queue, evMsg{vm: u, ev: ev, err: err})
}

func (r *envRun) sendEnv(ev EnvEvent) { r.events <- evMsg{isEnv: true, envEv: ev} }

// run is the environment's loop. `vmup run` steps the same pieces
// (start, signal, handle, finish) from its own loop (runsetup.go).
func (r *envRun) run() int {
	r.start()
	for !r.phase.Terminal() {
		select {
		case sig := <-r.env.Signals:
			r.signal(sig)
		case m := <-r.events:
			r.handle(m)
		}
	}
	r.finish()
	return r.exit
}

// start enters first_boots and begins the first VMs.
func (r *envRun) start() {
	r.startGroup()
	r.started, r.ended = map[*upRun]bool{}, map[*upRun]bool{}
	r.setPhase(EnvFirstBoots)
	r.startVMs()
}

// signal steps the environment's row for a signal.
func (r *envRun) signal(sig os.Signal) {
	r.handle(evMsg{isEnv: true, envEv: envSignalEvent(sig, r.windowOpen)})
}

// handle applies one message, then what it set off, in order.
func (r *envRun) handle(m evMsg) {
	for {
		r.step(m)
		if !isAggregate(m) {
			r.derive()
		}
		if r.phase == EnvFirstBoots && len(r.queue) == 0 { // once what this message set off is done
			r.startVMs()
		}
		if len(r.queue) == 0 || r.phase.Terminal() {
			return
		}
		m, r.queue = r.queue[0], r.queue[1:]
	}
}

// step applies one message: a VM's row, or the environment's.
func (r *envRun) step(m evMsg) {
	if !m.isEnv {
		u := m.vm
		if r.ended[u] || !r.started[u] {
			return
		}
		u.apply(m)
		if u.phase.Terminal() {
			r.end(u)
		}
		return
	}
	if m.envEv == EnvEvConfirmExpired && (!r.windowOpen || m.gen != r.windowGen) {
		return
	}
	t, ok := EnvStep(r.phase, m.envEv)
	if !ok {
		return
	}
	if t.Exit != keep {
		r.exit = t.Exit
	}
	if t.Next != r.phase {
		r.setPhase(t.Next)
	}
	for _, a := range t.Actions {
		r.do(a, m.envEv)
	}
}

// end notes that VM u reached a terminal phase: its finish runs on, and
// the environment learns how it ended.
func (r *envRun) end(u *upRun) {
	r.ended[u] = true
	r.finished.Add(1)
	go func() {
		defer r.finished.Done()
		u.finish()
		if !r.holdLocks {
			u.lock.Unlock() // its own up is over: `vmup down` of it need not wait for the others
		}
	}()
	if u.phase == Failed || u.phase == StopFailed {
		r.report(EnvEvVMFailed)
	} else {
		r.report(EnvEvVMEnded)
	}
}

func isAggregate(m evMsg) bool {
	return m.isEnv && (m.envEv == EnvEvAllReady || m.envEv == EnvEvAllRunning || m.envEv == EnvEvAllEnded)
}

// derive sends what holds for every VM, after each other message.
func (r *envRun) derive() {
	ready, running, ended := 0, 0, 0
	for _, u := range r.vms {
		switch {
		case r.ended[u]:
			ended++
		case !r.started[u]:
		case u.phase == Provisioning:
			ready++ // its first boot waits for the environment's playbook
		case u.phase == Running:
			running++
		}
	}
	n := len(r.vms)
	if ended == 0 && ready+running == n {
		r.report(EnvEvAllReady)
	}
	if running+ended == n {
		r.report(EnvEvAllRunning)
	}
	if ended == n {
		r.report(EnvEvAllEnded)
	}
}

// startVMs begins VMs while fewer than --parallel are on their way.
func (r *envRun) startVMs() {
	busy := 0
	for _, u := range r.vms {
		if r.started[u] && !r.ended[u] && u.phase != Provisioning && u.phase != Running {
			busy++
		}
	}
	for _, u := range r.vms {
		if busy >= r.parallel {
			return
		}
		if !r.started[u] {
			r.started[u] = true
			u.begin(r.events)
			busy++
		}
	}
}

func (r *envRun) setPhase(p EnvPhase) {
	from := r.phase
	r.phase = p
	if p != EnvFirstBoots && p != EnvSetupPlaybook && p != EnvFailing {
		r.closeWindow()
	}
	msg := p.String()
	if from != p {
		msg = from.String() + " -> " + p.String()
	}
	r.env.Out.SayPhase(p.String(), msg)
}

func (r *envRun) closeWindow() {
	r.windowOpen = false
	if r.stopWindow != nil {
		r.stopWindow()
		r.stopWindow = nil
	}
}

// waiting are the VMs whose first boot waits for the playbook.
func (r *envRun) waiting() []*upRun {
	var w []*upRun
	for _, u := range r.vms {
		if r.started[u] && !r.ended[u] && u.phase == Provisioning {
			w = append(w, u)
		}
	}
	return w
}

func (r *envRun) do(a EnvAction, ev EnvEvent) {
	out := r.env.Out
	switch a {
	case EnvActWarnConfirm:
		r.windowGen++
		gen := r.windowGen
		r.windowOpen = true
		r.stopWindow = r.env.Clock.AfterFunc(r.env.ConfirmWindow, func() {
			r.events <- evMsg{isEnv: true, envEv: EnvEvConfirmExpired, gen: gen}
		})
		out.Say("confirm_abort", "Press Ctrl+C again within %ds: %s",
			int(r.env.ConfirmWindow.Round(time.Second)/time.Second), r.secondInterrupt())
	case EnvActSayNotConfirmed:
		r.closeWindow()
		out.Say("abort_not_confirmed", "abort not confirmed, continuing")
	case EnvActForward:
		for _, u := range r.vms {
			switch {
			case !r.started[u] && !r.ended[u]:
				r.ended[u] = true // never begun: nothing of it changed
			case !r.ended[u]:
				u.waitAlso(r.oldWorkers) // a wipe waits for the stopped playbook
				r.tell(u, vmEventOf(ev), nil)
			}
		}
	case EnvActStopPlaybook:
		r.stopWork()
	case EnvActRunPlaybook:
		vms := r.waiting()
		r.goWork(func(ctx context.Context) { r.runPlaybook(ctx, vms) })
	case EnvActFanOut:
		for _, u := range r.recorded {
			r.tell(u, EvCompleted, nil)
			u.goWork(u.keepFirstBoot)
		}
		for _, u := range r.failures {
			r.tell(u, EvRecordFailed, r.fault)
		}
	case EnvActCancelSetup:
		for _, u := range r.vms {
			if !r.started[u] {
				r.ended[u] = true // not begun (--parallel), and never will be: left as it is
			}
		}
		for _, u := range r.waiting() {
			r.tell(u, EvSetupCancelled, fmt.Errorf("the environment's playbook does not run: %s", r.failedNames()))
		}
	case EnvActFailProvision:
		for _, u := range r.waiting() {
			r.tell(u, EvProvisionFailed, r.fault)
		}
	case EnvActDetachRunning:
		for _, u := range r.vms {
			if r.started[u] && !r.ended[u] && u.phase == Running {
				r.tell(u, EvDetach, nil)
			}
		}
	case EnvActEnterRunning:
		r.enterRunning()
	}
}

// enterRunning: with -d every VM detaches (and then the environment);
// else each VM's domain is watched until Ctrl+C.
func (r *envRun) enterRunning() {
	var names []string
	for _, u := range r.vms {
		if r.ended[u] {
			continue
		}
		names = append(names, u.o.EnvVM)
		if r.o.Detach {
			r.tell(u, EvDetach, nil)
		} else {
			u.goWork(u.watch)
		}
	}
	out := r.env.Out
	out.Say("ready", "Environment %s is running: %s", r.e.Name, strings.Join(names, ", "))
	if r.o.Detach {
		r.report(EnvEvDetach)
		return
	}
	out.Say("waiting", "Press Ctrl+C to shut the VMs down")
}

// secondInterrupt says what a second Ctrl+C does to each VM, as its own
// row will: a first boot is wiped, a VM whose first boot completed shut
// down, one still preparing loses what this run made, one not begun stays.
func (r *envRun) secondInterrupt() string {
	var first, done, preparing, waiting []string
	for _, u := range r.vms {
		switch {
		case r.ended[u]:
		case !r.started[u]:
			waiting = append(waiting, u.o.EnvVM)
		case u.phase == Preparing:
			preparing = append(preparing, u.o.EnvVM)
		case u.phase.FirstBoot():
			first = append(first, u.o.EnvVM)
		default:
			done = append(done, u.o.EnvVM)
		}
	}
	var parts []string
	if len(first) > 0 {
		parts = append(parts, "it aborts the first boot of "+strings.Join(first, ", ")+" (destroyed)")
	}
	if len(done) > 0 {
		verb := " are"
		if len(done) == 1 {
			verb = " is"
		}
		parts = append(parts, strings.Join(done, ", ")+", whose first boot completed,"+verb+" shut down")
	}
	if len(preparing) > 0 {
		parts = append(parts, "what this run made for "+strings.Join(preparing, ", ")+" is removed")
	}
	if len(waiting) > 0 {
		parts = append(parts, strings.Join(waiting, ", ")+" (not begun) stay as they are")
	}
	return strings.Join(parts, "; ")
}

// failedNames names the VMs that failed, for the VMs the playbook leaves out.
func (r *envRun) failedNames() string {
	var names []string
	for _, u := range r.vms {
		if r.ended[u] && (u.phase == Failed || u.phase == StopFailed) {
			names = append(names, u.o.EnvVM)
		}
	}
	if len(names) == 0 {
		return "a VM of the environment ended before it"
	}
	return "VM " + strings.Join(names, ", ") + " failed"
}

// vmEventOf is the signal event of the environment as a VM's event.
func vmEventOf(ev EnvEvent) Event {
	return map[EnvEvent]Event{EnvEvInterrupt: EvInterrupt, EnvEvInterruptAgain: EvInterruptAgain, EnvEvTerminate: EvTerminate,
		EnvEvHangup: EvHangup, EnvEvStop: EvStop, EnvEvForceStop: EvForceStop, EnvEvSuspend: EvSuspend}[ev]
}

// envSignalEvent is a signal as the environment's event.
func envSignalEvent(sig os.Signal, windowOpen bool) EnvEvent {
	switch signalEvent(sig, windowOpen, false) {
	case EvInterruptAgain:
		return EnvEvInterruptAgain
	case EvTerminate:
		return EnvEvTerminate
	case EvHangup:
		return EnvEvHangup
	case EvStop:
		return EnvEvStop
	case EvForceStop:
		return EnvEvForceStop
	case EvSuspend:
		return EnvEvSuspend
	}
	return EnvEvInterrupt
}

// finish waits for every VM's finish and ends with the exit event, which
// lists each VM's outcome.
func (r *envRun) finish() {
	// A worker's late event must not block it: nobody steps rows any more.
	drained := make(chan struct{})
	defer close(drained)
	go func() {
		for {
			select {
			case <-r.events:
			case <-drained:
				return
			}
		}
	}()
	r.stopWork()
	r.waitOldWorkers(r.oldWorkers)
	r.finished.Wait()
	out := r.env.Out
	for _, u := range r.vms {
		paths := pathsFor(r.env.Home, u.o.Name)
		oc := outcomeOf(u.env.Out, paths, exitOK)
		if c, ok := u.env.Out.childOutcome(); ok {
			oc.ExitCode, oc.Phase = c.ExitCode, c.Phase
		} else {
			oc.ExitCode = r.exit // never begun
		}
		out.addOutcome(oc)
	}
	switch r.phase {
	case EnvDetached:
		out.Say("detached", "Environment %s keeps running (stop it with `vmup down`)", r.e.Name)
	case EnvFailed:
		out.Say("failed", "Environment %s failed; its VMs are kept (`vmup status` shows them, `vmup up` tries again)", r.e.Name)
	case EnvStopped:
		out.Say("stopped", "Environment %s stopped", r.e.Name)
	}
	out.Exit(r.exit, r.phase.String())
}
