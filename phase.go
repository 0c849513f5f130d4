package main

// Phase is where one `vmup up` stands. Only the controller loop changes it,
// and only by looking up a row of transitions.
type Phase int

const (
	Preparing    Phase = iota // image, volumes, seed, domain defined: nothing running yet
	Starting                  // first boot: waiting for SSH and cloud-init
	Provisioning              // first boot: the playbook runs
	Booting                   // a VM whose first boot completed is started again
	Running
	Stopping
	Wiping // a confirmed abort removes what this run (or its first boot) made
	Stopped
	Detached
	Aborted
	Failed
	StopFailed
	numPhases
)

var phaseNames = [numPhases]string{
	Preparing: "preparing", Starting: "starting", Provisioning: "provisioning", Booting: "booting",
	Running: "running", Stopping: "stopping", Wiping: "wiping", Stopped: "stopped",
	Detached: "detached", Aborted: "aborted", Failed: "failed", StopFailed: "stop_failed",
}

func (p Phase) String() string {
	if p < 0 || p >= numPhases {
		return "unknown"
	}
	return phaseNames[p]
}

func parsePhase(s string) (Phase, bool) {
	for p, name := range phaseNames {
		if name == s {
			return Phase(p), true
		}
	}
	return 0, false
}

// Terminal phases end the process.
func (p Phase) Terminal() bool { return p >= Stopped && p < numPhases }

// FirstBoot phases are the ones a confirmed interrupt may wipe.
func (p Phase) FirstBoot() bool { return p == Starting || p == Provisioning }

// Event is anything that can move the phase: a signal, a worker's result, a timer.
type Event int

const (
	EvInterrupt         Event = iota // SIGINT, no confirmation window open
	EvInterruptAgain                 // SIGINT while the first-boot confirmation window is open
	EvTerminate                      // SIGTERM
	EvHangup                         // SIGHUP
	EvPreparedFirstBoot              // prepared a VM whose first boot has not completed
	EvPreparedBoot                   // prepared a VM whose first boot completed, domain shut off
	EvPreparedRunning                // the VM's first boot completed and its domain already runs
	EvPrepareFailed
	EvPrepareRejected // bad input found while preparing (a checksum, a changed setting): exit 2
	EvReady           // SSH login works and cloud-init finished
	EvBootTimeout
	EvBootFailed
	EvProvisioned // the playbook passed and the completed first boot is on disk
	EvProvisionFailed
	EvRecordFailed   // the completed first boot could not be recorded
	EvConfirmExpired // the first-boot confirmation window closed without a second Ctrl+C
	EvDetach
	EvDomainStopped // the domain is no longer running
	EvShutdownTimeout
	EvForceOffFailed
	EvWipeDone
	EvWipeFailed
	EvCompletedMeanwhile // a wipe found the first boot recorded complete before the abort took hold
	numEvents
)

var eventNames = [numEvents]string{
	EvInterrupt: "interrupt", EvInterruptAgain: "interrupt_again", EvTerminate: "terminate", EvHangup: "hangup",
	EvPreparedFirstBoot: "prepared_first_boot", EvPreparedBoot: "prepared_boot", EvPreparedRunning: "prepared_running",
	EvPrepareFailed: "prepare_failed", EvPrepareRejected: "prepare_rejected", EvReady: "ready", EvBootTimeout: "boot_timeout", EvBootFailed: "boot_failed",
	EvProvisioned: "provisioned", EvProvisionFailed: "provision_failed", EvRecordFailed: "record_failed",
	EvConfirmExpired: "abort_not_confirmed",
	EvDetach:         "detach", EvDomainStopped: "domain_stopped", EvShutdownTimeout: "shutdown_timeout",
	EvForceOffFailed: "force_off_failed", EvWipeDone: "wipe_done", EvWipeFailed: "wipe_failed",
	EvCompletedMeanwhile: "completed_meanwhile",
}

func (e Event) String() string {
	if e < 0 || e >= numEvents {
		return "unknown"
	}
	return eventNames[e]
}

// Action is one thing the controller does when a row fires, in the order listed.
type Action int

const (
	ActWarnConfirm        Action = iota // warn that a second Ctrl+C wipes the VM; open the window
	ActSayNotConfirmed                  // the window closed: say we continue
	ActSayAlreadyAborting               // a signal during Wiping changes nothing
	ActStartFirstBoot                   // start the domain, wait for SSH + cloud-init
	ActStartBoot                        // start the domain (if needed), wait for SSH
	ActRunPlaybook                      // run the playbook, then record the completed first boot
	ActEnterRunning                     // report ready; detach, or watch the domain and serve forwards
	ActShutdown                         // ACPI shutdown and start the shutdown timer
	ActForceOff                         // virsh destroy
	ActStopWork                         // stop every worker and child process group (escalating)
	ActRemovePartial                    // remove what this run created before anything ran
	ActWipe                             // destroy, undefine, delete volumes and state of this VM
	ActSayStoppedExternally
	ActReportFailure // tell the user how to inspect and remove the kept VM
)

var actionNames = []string{
	ActWarnConfirm: "warn_confirm", ActSayNotConfirmed: "say_not_confirmed", ActSayAlreadyAborting: "say_already_aborting",
	ActStartFirstBoot: "start_first_boot", ActStartBoot: "start_boot", ActRunPlaybook: "run_playbook",
	ActEnterRunning: "enter_running", ActShutdown: "shutdown",
	ActForceOff: "force_off", ActStopWork: "stop_work", ActRemovePartial: "remove_partial", ActWipe: "wipe",
	ActSayStoppedExternally: "say_stopped_externally", ActReportFailure: "report_failure",
}

func (a Action) String() string { return actionNames[a] }

// Transition is one row's outcome. Exit, when not zero, becomes the code the
// process exits with once a terminal phase is reached; zero keeps the earlier one
// (so a Wiping that began with SIGTERM still ends with 143).
type Transition struct {
	Next    Phase
	Actions []Action
	Exit    int
}

type key struct {
	Phase Phase
	Event Event
}

// ignored lists the pairs that deliberately do nothing. Together with
// transitions it must cover every phase × event pair (phase_test.go checks).
var ignored = map[key]bool{}

var transitions = map[key]Transition{}

const (
	exitOK           = 0
	exitFailed       = 1
	exitUsage        = 2
	exitProvision    = 3
	exitStopFailed   = 4
	exitBusy         = 5
	exitSIGINT       = 130
	exitSIGTERM      = 143
	exitSIGHUP       = 129
	statusNotRunning = 3
	statusNoSuchVM   = 4
)

func init() {
	row := func(p Phase, e Event, next Phase, exit int, acts ...Action) {
		transitions[key{p, e}] = Transition{Next: next, Actions: acts, Exit: exit}
	}
	signals := []struct {
		ev   Event
		exit int
	}{{EvInterrupt, exitSIGINT}, {EvInterruptAgain, exitSIGINT}, {EvTerminate, exitSIGTERM}, {EvHangup, exitSIGHUP}}

	// Preparing: nothing runs yet, so any interrupt just undoes this run's partial work.
	for _, s := range signals {
		row(Preparing, s.ev, Wiping, s.exit, ActStopWork, ActRemovePartial)
	}
	row(Preparing, EvPreparedFirstBoot, Starting, 0, ActStartFirstBoot)
	row(Preparing, EvPreparedBoot, Booting, 0, ActStartBoot)
	row(Preparing, EvPreparedRunning, Running, 0, ActEnterRunning)
	// A failure leaves nothing of this run behind either (a seed holds a private key).
	row(Preparing, EvPrepareFailed, Wiping, exitFailed, ActReportFailure, ActRemovePartial)
	row(Preparing, EvPrepareRejected, Wiping, exitUsage, ActRemovePartial)

	// First boot: one Ctrl+C only warns; a confirmed one, SIGTERM or SIGHUP wipes the VM.
	for _, p := range []Phase{Starting, Provisioning} {
		row(p, EvInterrupt, p, 0, ActWarnConfirm)
		row(p, EvConfirmExpired, p, 0, ActSayNotConfirmed)
		for _, s := range signals[1:] {
			row(p, s.ev, Wiping, s.exit, ActStopWork, ActWipe)
		}
	}
	row(Starting, EvBootTimeout, Failed, exitFailed, ActStopWork, ActReportFailure)
	row(Starting, EvBootFailed, Failed, exitFailed, ActStopWork, ActReportFailure)
	row(Starting, EvReady, Provisioning, 0, ActRunPlaybook)
	// EvProvisioned comes only once the completed first boot is on disk.
	row(Provisioning, EvProvisioned, Running, 0, ActEnterRunning)
	row(Provisioning, EvProvisionFailed, Failed, exitProvision, ActReportFailure)
	row(Provisioning, EvRecordFailed, Failed, exitFailed, ActReportFailure)

	// Booting and Running: the first boot is over, so no interrupt can wipe anything.
	for _, p := range []Phase{Booting, Running} {
		for _, s := range signals {
			row(p, s.ev, Stopping, exitOK, ActStopWork, ActShutdown)
		}
		row(p, EvDomainStopped, Stopped, exitOK, ActStopWork, ActSayStoppedExternally)
	}
	row(Booting, EvReady, Running, 0, ActEnterRunning)
	row(Booting, EvBootTimeout, Failed, exitFailed, ActStopWork, ActReportFailure)
	row(Booting, EvBootFailed, Failed, exitFailed, ActStopWork, ActReportFailure)
	row(Running, EvDetach, Detached, exitOK)

	// Stopping: impatience or a timeout forces the VM off.
	for _, s := range signals {
		row(Stopping, s.ev, Stopping, 0, ActForceOff)
	}
	row(Stopping, EvShutdownTimeout, Stopping, 0, ActForceOff)
	row(Stopping, EvDomainStopped, Stopped, 0)
	row(Stopping, EvForceOffFailed, StopFailed, exitStopFailed, ActReportFailure)

	// Wiping: signals are acknowledged and otherwise ignored.
	for _, s := range signals {
		row(Wiping, s.ev, Wiping, 0, ActSayAlreadyAborting)
	}
	row(Wiping, EvWipeDone, Aborted, 0)
	row(Wiping, EvWipeFailed, Failed, exitFailed, ActReportFailure)
	// An abort that came after the first boot was recorded complete keeps the VM.
	row(Wiping, EvCompletedMeanwhile, Stopping, 0, ActShutdown)

	// What each phase deliberately ignores: results of work that an earlier
	// transition already stopped or superseded, and events that cannot matter
	// there. phase_test.go checks that this and the rows above cover every pair.
	prepared := []Event{EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected}
	bootResults := []Event{EvReady, EvBootTimeout, EvBootFailed}
	provisionResults := []Event{EvProvisioned, EvProvisionFailed, EvRecordFailed}
	stopResults := []Event{EvShutdownTimeout, EvForceOffFailed}
	wipeResults := []Event{EvWipeDone, EvWipeFailed, EvCompletedMeanwhile}
	ignore := func(p Phase, groups ...[]Event) {
		for _, g := range groups {
			for _, e := range g {
				ignored[key{p, e}] = true
			}
		}
	}
	ignore(Preparing, bootResults, provisionResults, stopResults, wipeResults,
		[]Event{EvConfirmExpired, EvDetach, EvDomainStopped})
	// During the first boot the boot worker and the playbook notice a dead domain themselves.
	ignore(Starting, prepared, provisionResults, stopResults, wipeResults, []Event{EvDetach, EvDomainStopped})
	ignore(Provisioning, prepared, bootResults, stopResults, wipeResults, []Event{EvDetach, EvDomainStopped})
	ignore(Booting, prepared, provisionResults, stopResults, wipeResults, []Event{EvConfirmExpired, EvDetach})
	ignore(Running, prepared, bootResults, provisionResults, stopResults, wipeResults, []Event{EvConfirmExpired})
	ignore(Stopping, prepared, bootResults, provisionResults, wipeResults, []Event{EvConfirmExpired, EvDetach})
	ignore(Wiping, prepared, bootResults, provisionResults, stopResults,
		[]Event{EvConfirmExpired, EvDetach, EvDomainStopped})
	for p := Stopped; p < numPhases; p++ {
		for e := Event(0); e < numEvents; e++ {
			ignored[key{p, e}] = true // a terminal phase ends the loop
		}
	}
}

// Step looks up what event e does in phase p. ok is false for an ignored pair.
func Step(p Phase, e Event) (Transition, bool) {
	t, ok := transitions[key{p, e}]
	return t, ok
}
