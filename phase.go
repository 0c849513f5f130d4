package main

import (
	"fmt"
)

// Phase is where one `vmup up` stands. Only the controller loop changes it,
// and only by looking up a row of table.
type Phase int

const (
	Preparing    Phase = iota // image, volumes, seed, domain defined: nothing running yet
	Starting                  // first boot: waiting for SSH and cloud-init
	Provisioning              // first boot: the playbook runs
	Keeping                   // the first boot is recorded complete; its provisioned state is being kept
	Cloning                   // a clone of a template: its memory restored (on nat: its disk booted), its own identity given (no playbook)
	Booting                   // a VM whose first boot completed is started again
	Running
	Stopping
	Suspending // the VM's memory is saved (managedsave); the next up resumes it
	Resetting  // the VM goes back to its provisioned state
	Wiping     // a confirmed abort removes what this run (or its first boot) made
	Stopped
	Saved
	Detached
	Aborted
	Failed
	StopFailed
	numPhases
)

var phaseNames = [numPhases]string{
	Preparing: "preparing", Starting: "starting", Provisioning: "provisioning", Keeping: "keeping", Cloning: "cloning", Booting: "booting",
	Running: "running", Stopping: "stopping", Suspending: "suspending", Resetting: "resetting",
	Wiping: "wiping", Stopped: "stopped", Saved: "saved", Detached: "detached", Aborted: "aborted", Failed: "failed", StopFailed: "stop_failed",
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

// AfterFirstBoot phases run a VM whose first boot completed: a stop there
// may save it (--suspend-on-stop).
func (p Phase) AfterFirstBoot() bool { return p == Booting || p == Running }

// FirstBoot phases are the ones a confirmed interrupt may wipe.
func (p Phase) FirstBoot() bool { return p == Starting || p == Provisioning || p == Cloning }

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
	EvCompleted   // the playbook passed and the completed first boot is on disk
	EvProvisioned // then the provisioned state was kept (or could not be)
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
	EvSuspend            // SIGUSR1 (`vmup down --suspend`), or a stop signal under --suspend-on-stop
	EvSaved              // the VM's state is saved and its domain shut off
	EvSaveFailed         // the save failed or was aborted: the VM still runs
	EvPreparedReset      // prepared a reset to the provisioned state
	EvResetDone          // the VM is back in its provisioned state (running, or shut off to boot)
	EvResetFailed
	EvStop      // SIGUSR2: `vmup down` or `destroy` asks a foreground up to stop; never saves
	EvForceStop // sigForceStop: `vmup down --force` asks it to power the VM off at once
	// EvSetupCancelled: the environment's playbook will not run (another VM
	// of it failed); the VM, waiting for it, fails and is kept.
	EvSetupCancelled
	EvPreparedClone // prepared a clone of a template: its disk, keys, seed and domain
	EvCloned        // the clone runs with its own identity, its first boot recorded complete
	EvCloneFailed
	numEvents
)

var eventNames = [numEvents]string{
	EvInterrupt: "interrupt", EvInterruptAgain: "interrupt_again", EvTerminate: "terminate", EvHangup: "hangup",
	EvPreparedFirstBoot: "prepared_first_boot", EvPreparedBoot: "prepared_boot", EvPreparedRunning: "prepared_running",
	EvPrepareFailed: "prepare_failed", EvPrepareRejected: "prepare_rejected", EvReady: "ready", EvBootTimeout: "boot_timeout", EvBootFailed: "boot_failed",
	EvCompleted: "completed", EvProvisioned: "provisioned", EvProvisionFailed: "provision_failed", EvRecordFailed: "record_failed",
	EvConfirmExpired: "abort_not_confirmed",
	EvDetach:         "detach", EvDomainStopped: "domain_stopped", EvShutdownTimeout: "shutdown_timeout",
	EvForceOffFailed: "force_off_failed", EvWipeDone: "wipe_done", EvWipeFailed: "wipe_failed",
	EvCompletedMeanwhile: "completed_meanwhile",
	EvSuspend:            "suspend", EvSaved: "saved", EvSaveFailed: "save_failed",
	EvPreparedReset: "prepared_reset", EvResetDone: "reset_done", EvResetFailed: "reset_failed",
	EvStop: "stop", EvForceStop: "force_stop", EvSetupCancelled: "setup_cancelled",
	EvPreparedClone: "prepared_clone", EvCloned: "cloned", EvCloneFailed: "clone_failed",
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
	ActSave          // save the VM's state (managedsave); a save that overruns is aborted in libvirt
	ActSayBusySaving // a signal while saving changes nothing
	ActReset         // bring the VM back to its provisioned state; never cut short
	ActSayBusyResetting
	ActSayStopOnceKept // a signal while the provisioned state is kept: the VM shuts down after it
	ActClone           // restore the template's memory as this VM, give it its identity, record the first boot
)

var actionNames = []string{
	ActWarnConfirm: "warn_confirm", ActSayNotConfirmed: "say_not_confirmed", ActSayAlreadyAborting: "say_already_aborting",
	ActStartFirstBoot: "start_first_boot", ActStartBoot: "start_boot", ActRunPlaybook: "run_playbook",
	ActEnterRunning: "enter_running", ActShutdown: "shutdown",
	ActForceOff: "force_off", ActStopWork: "stop_work", ActRemovePartial: "remove_partial", ActWipe: "wipe",
	ActSayStoppedExternally: "say_stopped_externally", ActReportFailure: "report_failure",
	ActSave: "save", ActSayBusySaving: "say_busy_saving", ActReset: "reset", ActSayBusyResetting: "say_busy_resetting",
	ActSayStopOnceKept: "say_stop_once_kept", ActClone: "clone",
}

func (a Action) String() string { return actionNames[a] }

// Transition is one row's outcome: the next phase, what to do there, and the
// code the process exits with once a terminal phase is reached.
type Transition struct {
	Next    Phase
	Actions []Action
	Exit    int // keep: leave the code as an earlier row set it
}

// keep leaves the exit code as it is, so that a Wiping that began with
// SIGTERM still ends with 143.
const keep = -1

func to(next Phase, exit int, acts ...Action) Transition {
	return Transition{Next: next, Actions: acts, Exit: exit}
}

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

// table is what each event does in each phase. Terminal phases have no rows:
// reaching one ends the loop. README.md shows this table (readme_test.go
// keeps it current).
var table = [numPhases]map[Event]Transition{
	// Nothing runs yet: an interrupt or a failure undoes this run's partial work.
	Preparing: {
		EvInterrupt:         to(Wiping, exitSIGINT, ActStopWork, ActRemovePartial),
		EvInterruptAgain:    to(Wiping, exitSIGINT, ActStopWork, ActRemovePartial),
		EvTerminate:         to(Wiping, exitSIGTERM, ActStopWork, ActRemovePartial),
		EvHangup:            to(Wiping, exitSIGHUP, ActStopWork, ActRemovePartial),
		EvPreparedFirstBoot: to(Starting, keep, ActStartFirstBoot),
		EvPreparedBoot:      to(Booting, keep, ActStartBoot),
		EvPreparedRunning:   to(Running, keep, ActEnterRunning),
		EvPrepareFailed:     to(Wiping, exitFailed, ActReportFailure, ActRemovePartial),
		EvPrepareRejected:   to(Wiping, exitUsage, ActReportFailure, ActRemovePartial),
		EvPreparedReset:     to(Resetting, keep, ActReset),
		EvPreparedClone:     to(Cloning, keep, ActClone),
		// Another vmup's request: a stop stops this run as SIGTERM does.
		EvStop:      to(Wiping, exitSIGTERM, ActStopWork, ActRemovePartial),
		EvForceStop: to(Wiping, exitSIGTERM, ActStopWork, ActRemovePartial),
	},
	// First boot: one Ctrl+C only warns; a confirmed one, SIGTERM or SIGHUP wipes the VM.
	Starting: {
		EvInterrupt:      to(Starting, keep, ActWarnConfirm),
		EvConfirmExpired: to(Starting, keep, ActSayNotConfirmed),
		EvInterruptAgain: to(Wiping, exitSIGINT, ActStopWork, ActWipe),
		EvTerminate:      to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
		EvHangup:         to(Wiping, exitSIGHUP, ActStopWork, ActWipe),
		EvReady:          to(Provisioning, keep, ActRunPlaybook),
		EvBootTimeout:    to(Failed, exitFailed, ActStopWork, ActReportFailure),
		EvBootFailed:     to(Failed, exitFailed, ActStopWork, ActReportFailure),
		// destroy's stop; down refuses a first boot, and a force meanwhile
		// is a stop (a wipe keeps a first boot recorded complete).
		EvStop:      to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
		EvForceStop: to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
	},
	Provisioning: {
		EvInterrupt:      to(Provisioning, keep, ActWarnConfirm),
		EvConfirmExpired: to(Provisioning, keep, ActSayNotConfirmed),
		EvInterruptAgain: to(Wiping, exitSIGINT, ActStopWork, ActWipe),
		EvTerminate:      to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
		EvHangup:         to(Wiping, exitSIGHUP, ActStopWork, ActWipe),
		// Sent only once the completed first boot is on disk.
		EvCompleted:       to(Keeping, keep),
		EvProvisionFailed: to(Failed, exitProvision, ActReportFailure),
		EvRecordFailed:    to(Failed, exitFailed, ActReportFailure),
		EvSetupCancelled:  to(Failed, exitFailed, ActReportFailure),
		EvStop:            to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
		EvForceStop:       to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
	},
	// A clone is a first boot until it is recorded complete: as Starting.
	Cloning: {
		EvInterrupt:      to(Cloning, keep, ActWarnConfirm),
		EvConfirmExpired: to(Cloning, keep, ActSayNotConfirmed),
		EvInterruptAgain: to(Wiping, exitSIGINT, ActStopWork, ActWipe),
		EvTerminate:      to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
		EvHangup:         to(Wiping, exitSIGHUP, ActStopWork, ActWipe),
		EvCloned:         to(Running, keep, ActEnterRunning),
		EvCloneFailed:    to(Failed, exitFailed, ActStopWork, ActReportFailure),
		EvRecordFailed:   to(Failed, exitFailed, ActReportFailure),
		EvStop:           to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
		EvForceStop:      to(Wiping, exitSIGTERM, ActStopWork, ActWipe),
	},
	// Nothing can wipe the VM any more. Its provisioned state is being kept:
	// a signal shuts the VM down once it is; only a second Ctrl+C (in
	// stopping) or `down --force` cuts it short, forcing the VM off.
	Keeping: {
		EvInterrupt: to(Stopping, exitOK, ActSayStopOnceKept),
		EvTerminate: to(Stopping, exitOK, ActSayStopOnceKept),
		EvHangup:    to(Stopping, exitOK, ActSayStopOnceKept),
		EvStop:      to(Stopping, exitOK, ActSayStopOnceKept),
		// `down --force` means at once, even before the provisioned state is kept.
		EvForceStop:   to(Stopping, exitOK, ActForceOff),
		EvProvisioned: to(Running, keep, ActEnterRunning),
	},
	// The first boot is over: no interrupt can wipe anything, each one shuts down.
	Booting: {
		EvInterrupt:      to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvInterruptAgain: to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvTerminate:      to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvHangup:         to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvDomainStopped:  to(Stopped, exitOK, ActStopWork, ActSayStoppedExternally),
		EvSuspend:        to(Suspending, exitOK, ActStopWork, ActSave),
		EvReady:          to(Running, keep, ActEnterRunning),
		EvBootTimeout:    to(Failed, exitFailed, ActStopWork, ActReportFailure),
		EvBootFailed:     to(Failed, exitFailed, ActStopWork, ActReportFailure),
		EvStop:           to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvForceStop:      to(Stopping, exitOK, ActStopWork, ActForceOff),
	},
	Running: {
		EvInterrupt:      to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvInterruptAgain: to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvTerminate:      to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvHangup:         to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvDomainStopped:  to(Stopped, exitOK, ActStopWork, ActSayStoppedExternally),
		EvSuspend:        to(Suspending, exitOK, ActStopWork, ActSave),
		EvDetach:         to(Detached, exitOK),
		EvStop:           to(Stopping, exitOK, ActStopWork, ActShutdown),
		EvForceStop:      to(Stopping, exitOK, ActStopWork, ActForceOff),
	},
	// Impatience or a timeout forces the VM off.
	Stopping: {
		EvInterrupt:       to(Stopping, keep, ActForceOff),
		EvInterruptAgain:  to(Stopping, keep, ActForceOff),
		EvTerminate:       to(Stopping, keep, ActForceOff),
		EvHangup:          to(Stopping, keep, ActForceOff),
		EvShutdownTimeout: to(Stopping, keep, ActForceOff),
		EvDomainStopped:   to(Stopped, keep),
		EvForceOffFailed:  to(StopFailed, exitStopFailed, ActReportFailure),
		EvForceStop:       to(Stopping, keep, ActForceOff),
		// A stop asked while the provisioned state was kept (Keeping).
		EvProvisioned: to(Stopping, keep, ActShutdown),
	},
	// A save is quick and all or nothing: signals are acknowledged and wait for it.
	// A failed one leaves the VM running.
	Suspending: {
		EvInterrupt:      to(Suspending, keep, ActSayBusySaving),
		EvInterruptAgain: to(Suspending, keep, ActSayBusySaving),
		EvTerminate:      to(Suspending, keep, ActSayBusySaving),
		EvHangup:         to(Suspending, keep, ActSayBusySaving),
		EvSaved:          to(Saved, keep),
		EvSaveFailed:     to(StopFailed, exitStopFailed, ActReportFailure),
		EvDomainStopped:  to(Stopped, keep), // the guest powered off instead
		EvStop:           to(Suspending, keep, ActSayBusySaving),
		EvForceStop:      to(Suspending, keep, ActSayBusySaving),
	},
	// Cut short, a reset would leave neither state: it runs to its end, then boots.
	Resetting: {
		EvInterrupt:      to(Resetting, keep, ActSayBusyResetting),
		EvInterruptAgain: to(Resetting, keep, ActSayBusyResetting),
		EvTerminate:      to(Resetting, keep, ActSayBusyResetting),
		EvHangup:         to(Resetting, keep, ActSayBusyResetting),
		EvResetDone:      to(Booting, keep, ActStartBoot),
		EvResetFailed:    to(Failed, exitFailed, ActReportFailure),
		EvStop:           to(Resetting, keep, ActSayBusyResetting),
		EvForceStop:      to(Resetting, keep, ActSayBusyResetting),
	},
	// Signals are acknowledged and otherwise ignored.
	Wiping: {
		EvInterrupt:      to(Wiping, keep, ActSayAlreadyAborting),
		EvInterruptAgain: to(Wiping, keep, ActSayAlreadyAborting),
		EvTerminate:      to(Wiping, keep, ActSayAlreadyAborting),
		EvHangup:         to(Wiping, keep, ActSayAlreadyAborting),
		EvWipeDone:       to(Aborted, keep),
		EvWipeFailed:     to(Failed, exitFailed, ActReportFailure),
		EvStop:           to(Wiping, keep, ActSayAlreadyAborting),
		EvForceStop:      to(Wiping, keep, ActSayAlreadyAborting),
		// An abort that came after the first boot was recorded complete keeps the VM.
		EvCompletedMeanwhile: to(Stopping, keep, ActShutdown),
	},
}

// ignored lists, per phase, the events that deliberately do nothing there:
// results of work that an earlier row already stopped or superseded, and
// events that cannot matter. With table it covers every pair of a
// non-terminal phase (phase_test.go checks).
var ignored = [numPhases][]Event{
	// `vmup down --suspend` repeats its SIGUSR1 until the VM runs.
	Preparing: {
		EvReady, EvBootTimeout, EvBootFailed, EvProvisioned, EvProvisionFailed, EvRecordFailed,
		EvShutdownTimeout, EvForceOffFailed, EvWipeDone, EvWipeFailed, EvCompletedMeanwhile,
		EvConfirmExpired, EvDetach, EvDomainStopped, EvSuspend, EvSaved, EvSaveFailed, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvCloned, EvCloneFailed,
	},
	// During the first boot the boot worker and the playbook notice a dead
	// domain themselves, and a half-made VM is never saved.
	Starting: {
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvProvisioned, EvProvisionFailed, EvRecordFailed, EvShutdownTimeout, EvForceOffFailed,
		EvWipeDone, EvWipeFailed, EvCompletedMeanwhile, EvDetach, EvDomainStopped,
		EvSuspend, EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
	Provisioning: {
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvShutdownTimeout, EvForceOffFailed, EvProvisioned,
		EvWipeDone, EvWipeFailed, EvCompletedMeanwhile, EvDetach, EvDomainStopped,
		EvSuspend, EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvPreparedClone, EvCloned, EvCloneFailed,
	}, // The clone worker notices a dead domain; a half-made clone is never saved.
	Cloning: {
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvCompleted, EvProvisioned, EvProvisionFailed,
		EvShutdownTimeout, EvForceOffFailed, EvWipeDone, EvWipeFailed, EvCompletedMeanwhile, EvDetach, EvDomainStopped,
		EvSuspend, EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvSetupCancelled, EvPreparedClone,
	},

	// The provision worker notices a dead domain; no window is open, and a
	// VM whose state is being kept is not saved.
	Keeping: {
		EvInterruptAgain, EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvCompleted, EvProvisionFailed, EvRecordFailed,
		EvShutdownTimeout, EvForceOffFailed, EvWipeDone, EvWipeFailed, EvCompletedMeanwhile,
		EvConfirmExpired, EvDetach, EvDomainStopped, EvSuspend, EvSaved, EvSaveFailed,
		EvPreparedReset, EvResetDone, EvResetFailed, EvSetupCancelled,
		EvPreparedClone, EvCloned, EvCloneFailed,
	},
	Booting: {
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvProvisioned, EvProvisionFailed, EvRecordFailed, EvShutdownTimeout, EvForceOffFailed,
		EvWipeDone, EvWipeFailed, EvCompletedMeanwhile, EvConfirmExpired, EvDetach,
		EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
	Running: {
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvProvisioned, EvProvisionFailed, EvRecordFailed,
		EvShutdownTimeout, EvForceOffFailed, EvWipeDone, EvWipeFailed, EvCompletedMeanwhile,
		EvConfirmExpired, EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
	// A shutdown under way is not turned into a save, and another vmup's
	// stop (not --force) lets it run its course.
	Stopping: {
		EvStop,
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvProvisionFailed, EvRecordFailed,
		EvWipeDone, EvWipeFailed, EvCompletedMeanwhile, EvConfirmExpired, EvDetach,
		EvSuspend, EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
	// The save worker alone decides how a save ended, from the domain's state;
	// `vmup down --suspend` repeats its SIGUSR1 until the save is done.
	Suspending: {
		EvSuspend, EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvProvisioned, EvProvisionFailed, EvRecordFailed,
		EvShutdownTimeout, EvForceOffFailed, EvWipeDone, EvWipeFailed, EvCompletedMeanwhile,
		EvConfirmExpired, EvDetach, EvPreparedReset, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
	Resetting: {
		EvSuspend, EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvProvisioned, EvProvisionFailed, EvRecordFailed,
		EvShutdownTimeout, EvForceOffFailed, EvWipeDone, EvWipeFailed, EvCompletedMeanwhile,
		EvConfirmExpired, EvDetach, EvDomainStopped, EvSaved, EvSaveFailed, EvPreparedReset,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
	Wiping: {
		EvPreparedFirstBoot, EvPreparedBoot, EvPreparedRunning, EvPrepareFailed, EvPrepareRejected,
		EvReady, EvBootTimeout, EvBootFailed, EvProvisioned, EvProvisionFailed, EvRecordFailed,
		EvShutdownTimeout, EvForceOffFailed, EvConfirmExpired, EvDetach, EvDomainStopped,
		EvSuspend, EvSaved, EvSaveFailed, EvPreparedReset, EvResetDone, EvResetFailed,
		EvCompleted, EvSetupCancelled, EvPreparedClone, EvCloned, EvCloneFailed,
	},
}

// Step looks up what event e does in phase p. ok is false for an ignored pair.
func Step(p Phase, e Event) (Transition, bool) {
	if p < 0 || p >= numPhases {
		return Transition{}, false
	}
	t, ok := table[p][e]
	return t, ok
}

// noPhase is a journal's phase before any was recorded, and its failed_in
// when it did not fail: written as "" (failed_in not at all), and read from
// "" or an absent key.
const noPhase Phase = -1

// MarshalText writes a phase by its name, as state.json has always held it.
func (p Phase) MarshalText() ([]byte, error) {
	if p == noPhase {
		return []byte{}, nil
	}
	if p < 0 || p >= numPhases {
		return nil, fmt.Errorf("phase %d is no phase", int(p))
	}
	return []byte(phaseNames[p]), nil
}

// UnmarshalText reads a phase's name; any other name is an error, so a
// journal naming one is not trusted.
func (p *Phase) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*p = noPhase
		return nil
	}
	q, ok := parsePhase(string(text))
	if !ok {
		return fmt.Errorf("%q is no phase", text)
	}
	*p = q
	return nil
}

// IsZero makes `omitzero` leave out noPhase, not Preparing (whose value is 0).
func (p Phase) IsZero() bool { return p == noPhase }
