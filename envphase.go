package main

// EnvPhase is where the `vmup up` of an environment stands. Each VM keeps
// its own Phase and table (phase.go); this table decides what the VMs are
// asked to do, from their outcomes and from signals. Only the environment's
// loop (env.go) changes it, and only by looking up a row of envTable.
type EnvPhase int

const (
	EnvFirstBoots    EnvPhase = iota // every VM prepares and boots, in parallel
	EnvSetupPlaybook                 // the one ansible-playbook runs over the new VMs
	EnvKeeping                       // every new VM's first boot is recorded complete; their provisioned states are kept
	EnvRunning                       // every VM runs
	EnvFailing                       // a VM or the playbook failed: no playbook, every VM kept; waits for each to end
	EnvStopping                      // the VMs were told to stop (a first boot: to abort); waits for each to end
	EnvStopped
	EnvDetached
	EnvFailed
	numEnvPhases
)

var envPhaseNames = [numEnvPhases]string{
	EnvFirstBoots: "first_boots", EnvSetupPlaybook: "setup_playbook", EnvKeeping: "keeping", EnvRunning: "running",
	EnvFailing: "failing", EnvStopping: "stopping", EnvStopped: "stopped", EnvDetached: "detached", EnvFailed: "failed",
}

func (p EnvPhase) String() string {
	if p < 0 || p >= numEnvPhases {
		return "unknown"
	}
	return envPhaseNames[p]
}

// Terminal phases end the environment's run.
func (p EnvPhase) Terminal() bool { return p >= EnvStopped && p < numEnvPhases }

// EnvEvent is a signal, a VM's outcome, or the playbook's.
type EnvEvent int

const (
	EnvEvInterrupt      EnvEvent = iota // SIGINT, no confirmation window open
	EnvEvInterruptAgain                 // SIGINT while the window is open
	EnvEvTerminate                      // SIGTERM
	EnvEvHangup                         // SIGHUP
	EnvEvStop                           // SIGUSR2: `vmup down` or `destroy` asks it to stop
	EnvEvForceStop                      // sigForceStop: `vmup down --force`
	EnvEvSuspend                        // SIGUSR1: `vmup down --suspend`
	EnvEvConfirmExpired                 // the window closed without a second Ctrl+C
	EnvEvVMReady                        // a VM's first boot is ready for the playbook (SSH and cloud-init)
	EnvEvVMRunning                      // a VM whose first boot completed runs
	EnvEvVMFailed                       // a VM ended failed (preparing, booting)
	EnvEvVMEnded                        // a VM ended otherwise (stopped, aborted, detached, saved)
	EnvEvAllReady                       // every VM is ready for the playbook or runs
	EnvEvAllRunning                     // every VM that has not ended runs
	EnvEvAllEnded                       // every VM ended
	EnvEvPlaybookPassed                 // the playbook passed, and each new VM's completed first boot is on disk
	EnvEvPlaybookFailed
	EnvEvRecordFailed // the playbook passed, but a new VM's completed first boot could not be recorded
	EnvEvDetach       // -d: every VM runs and was told to detach
	numEnvEvents
)

var envEventNames = [numEnvEvents]string{
	EnvEvInterrupt: "interrupt", EnvEvInterruptAgain: "interrupt_again", EnvEvTerminate: "terminate", EnvEvHangup: "hangup",
	EnvEvStop: "stop", EnvEvForceStop: "force_stop", EnvEvSuspend: "suspend", EnvEvConfirmExpired: "abort_not_confirmed",
	EnvEvVMReady: "vm_ready", EnvEvVMRunning: "vm_running", EnvEvVMFailed: "vm_failed", EnvEvVMEnded: "vm_ended",
	EnvEvAllReady: "all_ready", EnvEvAllRunning: "all_running", EnvEvAllEnded: "all_ended",
	EnvEvPlaybookPassed: "playbook_passed", EnvEvPlaybookFailed: "playbook_failed", EnvEvRecordFailed: "record_failed",
	EnvEvDetach: "detach",
}

func (e EnvEvent) String() string {
	if e < 0 || e >= numEnvEvents {
		return "unknown"
	}
	return envEventNames[e]
}

// EnvAction is one thing the environment's loop does when a row fires.
type EnvAction int

const (
	EnvActWarnConfirm     EnvAction = iota // say, per VM, what a second Ctrl+C does; open the window
	EnvActSayNotConfirmed                  // the window closed: say we continue
	EnvActForward                          // give the event to every VM that has not ended: its own row decides
	EnvActStopPlaybook                     // stop the playbook's process group (SIGINT, SIGTERM, SIGKILL)
	EnvActRunPlaybook                      // one ansible-playbook over the environment's inventory, limited to the new VMs; then record each one's completed first boot
	EnvActFanOut                           // tell each new VM its first boot completed: it keeps its provisioned state, then runs
	EnvActCancelSetup                      // tell each VM waiting for the playbook that it will not run: it fails, kept
	EnvActFailProvision                    // tell each new VM the playbook failed: it fails, kept running
	EnvActDetachRunning                    // tell each running VM to detach: it is kept running
	EnvActEnterRunning                     // -d: every VM detaches; else each VM's domain is watched
	numEnvActions
)

var envActionNames = [numEnvActions]string{
	EnvActWarnConfirm: "warn_confirm", EnvActSayNotConfirmed: "say_not_confirmed", EnvActForward: "forward",
	EnvActStopPlaybook: "stop_playbook", EnvActRunPlaybook: "run_playbook", EnvActFanOut: "fan_out",
	EnvActCancelSetup: "cancel_setup", EnvActFailProvision: "fail_provision", EnvActDetachRunning: "detach_running",
	EnvActEnterRunning: "enter_running",
}

func (a EnvAction) String() string { return envActionNames[a] }

// EnvTransition is one row of envTable.
type EnvTransition struct {
	Next    EnvPhase
	Actions []EnvAction
	Exit    int // keep: leave the code as an earlier row set it
}

func envTo(next EnvPhase, exit int, acts ...EnvAction) EnvTransition {
	return EnvTransition{Next: next, Actions: acts, Exit: exit}
}

// envTable is what each event does in each phase of an environment. Read
// it as the design: first boots in parallel; one playbook once every VM is
// ready; its result fans out; a first Ctrl+C warns per VM, a second (or
// SIGTERM, SIGHUP, a stop) stops the playbook and hands the signal to every
// VM, whose own table wipes a first boot and shuts a provisioned VM down.
// README.md shows it (readme_test.go keeps it current).
var envTable = [numEnvPhases]map[EnvEvent]EnvTransition{
	EnvFirstBoots: {
		EnvEvInterrupt:      envTo(EnvFirstBoots, keep, EnvActWarnConfirm),
		EnvEvConfirmExpired: envTo(EnvFirstBoots, keep, EnvActSayNotConfirmed),
		EnvEvInterruptAgain: envTo(EnvStopping, exitSIGINT, EnvActForward),
		EnvEvTerminate:      envTo(EnvStopping, exitSIGTERM, EnvActForward),
		EnvEvHangup:         envTo(EnvStopping, exitSIGHUP, EnvActForward),
		EnvEvStop:           envTo(EnvStopping, exitSIGTERM, EnvActForward),
		EnvEvForceStop:      envTo(EnvStopping, exitSIGTERM, EnvActForward),
		EnvEvAllReady:       envTo(EnvSetupPlaybook, keep, EnvActRunPlaybook),
		EnvEvVMFailed:       envTo(EnvFailing, exitFailed, EnvActCancelSetup, EnvActDetachRunning),
		EnvEvVMEnded:        envTo(EnvFailing, exitFailed, EnvActCancelSetup, EnvActDetachRunning),
	},
	EnvSetupPlaybook: {
		EnvEvInterrupt:      envTo(EnvSetupPlaybook, keep, EnvActWarnConfirm),
		EnvEvConfirmExpired: envTo(EnvSetupPlaybook, keep, EnvActSayNotConfirmed),
		EnvEvInterruptAgain: envTo(EnvStopping, exitSIGINT, EnvActStopPlaybook, EnvActForward),
		EnvEvTerminate:      envTo(EnvStopping, exitSIGTERM, EnvActStopPlaybook, EnvActForward),
		EnvEvHangup:         envTo(EnvStopping, exitSIGHUP, EnvActStopPlaybook, EnvActForward),
		EnvEvStop:           envTo(EnvStopping, exitSIGTERM, EnvActStopPlaybook, EnvActForward),
		EnvEvForceStop:      envTo(EnvStopping, exitSIGTERM, EnvActStopPlaybook, EnvActForward),
		EnvEvPlaybookPassed: envTo(EnvKeeping, keep, EnvActFanOut),
		EnvEvPlaybookFailed: envTo(EnvFailing, exitProvision, EnvActFailProvision, EnvActDetachRunning),
		// The VMs recorded go on; the others fail (their own record_failed).
		EnvEvRecordFailed: envTo(EnvFailing, exitFailed, EnvActFanOut),
	},
	// Nothing can wipe a VM any more: a signal shuts each down once it runs.
	EnvKeeping: {
		EnvEvInterrupt:      envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvInterruptAgain: envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvTerminate:      envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvHangup:         envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvStop:           envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvForceStop:      envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvAllRunning:     envTo(EnvRunning, keep, EnvActEnterRunning),
		EnvEvAllEnded:       envTo(EnvStopped, keep),
	},
	EnvRunning: {
		EnvEvInterrupt:      envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvInterruptAgain: envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvTerminate:      envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvHangup:         envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvStop:           envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvForceStop:      envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvSuspend:        envTo(EnvStopping, exitOK, EnvActForward),
		EnvEvDetach:         envTo(EnvDetached, exitOK),
		EnvEvAllEnded:       envTo(EnvStopped, keep),
	},
	// No playbook runs; VMs still on their way are kept as they arrive.
	EnvFailing: {
		EnvEvInterrupt:      envTo(EnvFailing, keep, EnvActWarnConfirm),
		EnvEvConfirmExpired: envTo(EnvFailing, keep, EnvActSayNotConfirmed),
		EnvEvInterruptAgain: envTo(EnvStopping, exitSIGINT, EnvActForward),
		EnvEvTerminate:      envTo(EnvStopping, exitSIGTERM, EnvActForward),
		EnvEvHangup:         envTo(EnvStopping, exitSIGHUP, EnvActForward),
		EnvEvStop:           envTo(EnvStopping, exitSIGTERM, EnvActForward),
		EnvEvForceStop:      envTo(EnvStopping, exitSIGTERM, EnvActForward),
		EnvEvVMReady:        envTo(EnvFailing, keep, EnvActCancelSetup),
		EnvEvVMRunning:      envTo(EnvFailing, keep, EnvActDetachRunning),
		EnvEvAllEnded:       envTo(EnvFailed, keep),
	},
	// Each VM's own table finishes what it was told; signals go to them too
	// (a wipe acknowledges them, a shutdown is forced off).
	EnvStopping: {
		EnvEvInterrupt:      envTo(EnvStopping, keep, EnvActForward),
		EnvEvInterruptAgain: envTo(EnvStopping, keep, EnvActForward),
		EnvEvTerminate:      envTo(EnvStopping, keep, EnvActForward),
		EnvEvHangup:         envTo(EnvStopping, keep, EnvActForward),
		EnvEvForceStop:      envTo(EnvStopping, keep, EnvActForward),
		EnvEvAllEnded:       envTo(EnvStopped, keep),
	},
}

// envIgnored lists, per phase, the events that deliberately do nothing
// there. With envTable it covers every pair of a non-terminal phase
// (envphase_test.go checks).
var envIgnored = [numEnvPhases][]EnvEvent{
	// Single VMs' readiness is counted by the loop (all_ready); no VM is
	// saved in a first boot, and nothing has ended yet.
	EnvFirstBoots: {
		EnvEvSuspend, EnvEvVMReady, EnvEvVMRunning, EnvEvAllRunning, EnvEvAllEnded,
		EnvEvPlaybookPassed, EnvEvPlaybookFailed, EnvEvRecordFailed, EnvEvDetach,
	},
	// A VM that ends meanwhile is found unreachable by the playbook.
	EnvSetupPlaybook: {
		EnvEvSuspend, EnvEvVMReady, EnvEvVMRunning, EnvEvVMFailed, EnvEvVMEnded,
		EnvEvAllReady, EnvEvAllRunning, EnvEvAllEnded, EnvEvDetach,
	},
	// No window is open once the first boots completed; a VM whose
	// provisioned state is being kept is not saved.
	EnvKeeping: {
		EnvEvSuspend, EnvEvConfirmExpired, EnvEvVMReady, EnvEvVMRunning, EnvEvVMFailed, EnvEvVMEnded,
		EnvEvAllReady, EnvEvPlaybookPassed, EnvEvPlaybookFailed, EnvEvRecordFailed, EnvEvDetach,
	},
	EnvRunning: {
		EnvEvConfirmExpired, EnvEvVMReady, EnvEvVMRunning, EnvEvVMFailed, EnvEvVMEnded,
		EnvEvAllReady, EnvEvAllRunning, EnvEvPlaybookPassed, EnvEvPlaybookFailed, EnvEvRecordFailed,
	},
	EnvFailing: {
		EnvEvSuspend, EnvEvVMFailed, EnvEvVMEnded, EnvEvAllReady, EnvEvAllRunning,
		EnvEvPlaybookPassed, EnvEvPlaybookFailed, EnvEvRecordFailed, EnvEvDetach,
	},
	// A stop under way runs its course, as a VM's own stopping does; the
	// stopped playbook's result comes too late to matter.
	EnvStopping: {
		EnvEvStop, EnvEvSuspend, EnvEvConfirmExpired, EnvEvVMReady, EnvEvVMRunning, EnvEvVMFailed, EnvEvVMEnded,
		EnvEvAllReady, EnvEvAllRunning, EnvEvPlaybookPassed, EnvEvPlaybookFailed, EnvEvRecordFailed, EnvEvDetach,
	},
}

// EnvStep looks up what event e does in phase p. ok is false for an ignored pair.
func EnvStep(p EnvPhase, e EnvEvent) (EnvTransition, bool) {
	if p < 0 || p >= numEnvPhases {
		return EnvTransition{}, false
	}
	t, ok := envTable[p][e]
	return t, ok
}
