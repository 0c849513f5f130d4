package main

// RunPhase is where a `vmup run` stands. It sits above the VMs' and the
// environment's tables: in setup their rows decide (this loop steps them),
// and what they end in is this table's event. Only the run's loop (run.go)
// changes it, and only by looking up a row of runTable.
type RunPhase int

const (
	RunSetup            RunPhase = iota // the VMs come up as `up -d` does; their own rows decide what a signal does
	RunStoppingSetup                    // a signal stopped the setup: first boots are wiped, the others stopped
	RunWorkload                         // files synced, then the workload runs under each guest's runner
	RunStoppingWorkload                 // a stop request with the run id is in every guest; waits for each runner's confirmation
	RunCollecting                       // --collect paths are copied back, also after a failed or stopped workload
	RunTeardown                         // the --teardown playbook runs
	RunStoppingTeardown                 // the teardown playbook is stopped
	RunCleanup                          // the VMs the run made are destroyed or kept (--destroy); VMs that were there are put back
	RunFinished                         // the workload ran to its end on every VM
	RunAborted                          // a signal stopped the run, and every runner confirmed it
	RunFailed                           // the setup, the start of a workload or the teardown failed
	RunStopFailed                       // a runner did not confirm the stop in time: every VM is kept
	numRunPhases
)

// runToEnd as a row's next phase is the end the run recorded (a row's End):
// cleanup is one phase whichever way the run went.
const runToEnd RunPhase = -1

var runPhaseNames = [numRunPhases]string{
	RunSetup: "setup", RunStoppingSetup: "stopping_setup", RunWorkload: "workload", RunStoppingWorkload: "stopping_workload",
	RunCollecting: "collecting", RunTeardown: "teardown", RunStoppingTeardown: "stopping_teardown", RunCleanup: "cleanup",
	RunFinished: "finished", RunAborted: "aborted", RunFailed: "failed", RunStopFailed: "stop_failed",
}

func (p RunPhase) String() string {
	if p == runToEnd {
		return "its end"
	}
	if p < 0 || p >= numRunPhases {
		return "unknown"
	}
	return runPhaseNames[p]
}

// Terminal phases end the run.
func (p RunPhase) Terminal() bool { return p >= RunFinished && p < numRunPhases }

// RunEvent is a signal, or what the layer below or a worker of the run ended in.
type RunEvent int

const (
	RunEvInterrupt       RunEvent = iota // SIGINT, no confirmation window open
	RunEvInterruptAgain                  // SIGINT while the window is open
	RunEvTerminate                       // SIGTERM
	RunEvHangup                          // SIGHUP
	RunEvConfirmExpired                  // the window closed without a second Ctrl+C
	RunEvSetupStopping                   // the setup's loop took a signal as a stop
	RunEvSetupPassed                     // every VM runs (the setup detached)
	RunEvSetupFailed                     // the setup ended failed (its code)
	RunEvSetupAborted                    // the setup ended stopped by a signal (its code)
	RunEvWorkloadPassed                  // the workload exited 0 on every VM
	RunEvWorkloadFailed                  // the workload ran to its end on every VM, not 0 on one or more (the first's code)
	RunEvWorkloadLost                    // a sync or a runner's start failed: the workload cannot run everywhere
	RunEvStopConfirmed                   // every runner confirmed the stop by the run id, or its workload had ended
	RunEvStopUnconfirmed                 // the stop timeout passed without a runner's confirmation
	RunEvCollected
	RunEvTeardownPassed // the teardown playbook passed, or there is none
	RunEvTeardownFailed
	RunEvCleaned
	numRunEvents
)

var runEventNames = [numRunEvents]string{
	RunEvInterrupt: "interrupt", RunEvInterruptAgain: "interrupt_again", RunEvTerminate: "terminate", RunEvHangup: "hangup",
	RunEvConfirmExpired: "abort_not_confirmed", RunEvSetupStopping: "setup_stopping", RunEvSetupPassed: "setup_passed",
	RunEvSetupFailed: "setup_failed", RunEvSetupAborted: "setup_aborted", RunEvWorkloadPassed: "workload_passed",
	RunEvWorkloadFailed: "workload_failed", RunEvWorkloadLost: "workload_lost", RunEvStopConfirmed: "stop_confirmed",
	RunEvStopUnconfirmed: "stop_unconfirmed", RunEvCollected: "collected", RunEvTeardownPassed: "teardown_passed",
	RunEvTeardownFailed: "teardown_failed", RunEvCleaned: "cleaned",
}

func (e RunEvent) String() string {
	if e < 0 || e >= numRunEvents {
		return "unknown"
	}
	return runEventNames[e]
}

// RunAction is one thing the run's loop does when a row fires.
type RunAction int

const (
	RunActForward           RunAction = iota // give the signal to the setup's loop: the VMs' own rows decide
	RunActWarnConfirm                        // say what a second Ctrl+C does; open the window
	RunActSayNotConfirmed                    // the window closed: say we continue
	RunActSayStopping                        // a further signal while stopping or cleaning up: acknowledged, nothing changes
	RunActStartWorkload                      // sync, then start each VM's runner (or the workload playbook) and follow them
	RunActRequestStop                        // the stop request with the run id in every guest; confirmations awaited until the stop timeout
	RunActReportUnconfirmed                  // name each VM whose runner did not confirm; every VM is kept
	RunActCollect                            // copy the --collect paths of every VM back
	RunActStopCollect                        // cut the collection short
	RunActTeardown                           // run the --teardown playbook (none: passed at once)
	RunActStopTeardown                       // stop the teardown playbook's process group
	RunActCleanup                            // destroy or keep the VMs the run made, as --destroy says; put back the others
	numRunActions
)

var runActionNames = [numRunActions]string{
	RunActForward: "forward", RunActWarnConfirm: "warn_confirm", RunActSayNotConfirmed: "say_not_confirmed",
	RunActSayStopping: "say_stopping", RunActStartWorkload: "start_workload", RunActRequestStop: "request_stop",
	RunActReportUnconfirmed: "report_unconfirmed", RunActCollect: "collect", RunActStopCollect: "stop_collect",
	RunActTeardown: "teardown", RunActStopTeardown: "stop_teardown", RunActCleanup: "cleanup",
}

func (a RunAction) String() string { return runActionNames[a] }

// RunTransition is one row of runTable. End is the terminal phase the run
// will end in once it cleaned up (runKeepEnd: as an earlier row set it);
// Exit may be fromEvent: the code the event carries (the setup's, the
// workload's).
type RunTransition struct {
	Next    RunPhase
	Actions []RunAction
	Exit    int
	End     RunPhase
}

const (
	runKeepEnd RunPhase = -2
	fromEvent           = -2
)

func runTo(next RunPhase, exit int, end RunPhase, acts ...RunAction) RunTransition {
	return RunTransition{Next: next, Actions: acts, Exit: exit, End: end}
}

// runTable is what each event does in each phase of a run. Read it as the
// design: the setup is the VMs' own business (signals go to their rows); the
// workload's first Ctrl+C warns, the second (or SIGTERM, SIGHUP) asks every
// runner to stop and waits for each one's confirmation by the run id; a
// confirmed stop or an ended workload goes on to collect, teardown and
// cleanup; an unconfirmed one keeps everything. README.md shows it.
var runTable = [numRunPhases]map[RunEvent]RunTransition{
	RunSetup: {
		RunEvInterrupt:      runTo(RunSetup, keep, runKeepEnd, RunActForward),
		RunEvInterruptAgain: runTo(RunSetup, keep, runKeepEnd, RunActForward),
		RunEvTerminate:      runTo(RunSetup, keep, runKeepEnd, RunActForward),
		RunEvHangup:         runTo(RunSetup, keep, runKeepEnd, RunActForward),
		RunEvSetupStopping:  runTo(RunStoppingSetup, keep, RunAborted),
		RunEvSetupPassed:    runTo(RunWorkload, keep, runKeepEnd, RunActStartWorkload),
		RunEvSetupFailed:    runTo(RunCleanup, fromEvent, RunFailed, RunActCleanup),
		RunEvSetupAborted:   runTo(RunCleanup, fromEvent, RunAborted, RunActCleanup),
	},
	// The setup's own rows finish the stop; further signals go to them too.
	RunStoppingSetup: {
		RunEvInterrupt:      runTo(RunStoppingSetup, keep, runKeepEnd, RunActForward),
		RunEvInterruptAgain: runTo(RunStoppingSetup, keep, runKeepEnd, RunActForward),
		RunEvTerminate:      runTo(RunStoppingSetup, keep, runKeepEnd, RunActForward),
		RunEvHangup:         runTo(RunStoppingSetup, keep, runKeepEnd, RunActForward),
		RunEvSetupAborted:   runTo(RunCleanup, fromEvent, RunAborted, RunActCleanup),
		RunEvSetupFailed:    runTo(RunCleanup, fromEvent, RunFailed, RunActCleanup),
		// A stopped setup never detaches; should it, nothing runs on it.
		RunEvSetupPassed: runTo(RunCleanup, exitFailed, RunFailed, RunActCleanup),
	},
	RunWorkload: {
		RunEvInterrupt:      runTo(RunWorkload, keep, runKeepEnd, RunActWarnConfirm),
		RunEvConfirmExpired: runTo(RunWorkload, keep, runKeepEnd, RunActSayNotConfirmed),
		RunEvInterruptAgain: runTo(RunStoppingWorkload, exitSIGINT, RunAborted, RunActRequestStop),
		RunEvTerminate:      runTo(RunStoppingWorkload, exitSIGTERM, RunAborted, RunActRequestStop),
		RunEvHangup:         runTo(RunStoppingWorkload, exitSIGHUP, RunAborted, RunActRequestStop),
		RunEvWorkloadPassed: runTo(RunCollecting, fromEvent, RunFinished, RunActCollect),
		RunEvWorkloadFailed: runTo(RunCollecting, fromEvent, RunFinished, RunActCollect),
		RunEvWorkloadLost:   runTo(RunStoppingWorkload, exitFailed, RunFailed, RunActRequestStop),
	},
	RunStoppingWorkload: {
		RunEvInterrupt:       runTo(RunStoppingWorkload, keep, runKeepEnd, RunActSayStopping),
		RunEvInterruptAgain:  runTo(RunStoppingWorkload, keep, runKeepEnd, RunActSayStopping),
		RunEvTerminate:       runTo(RunStoppingWorkload, keep, runKeepEnd, RunActSayStopping),
		RunEvHangup:          runTo(RunStoppingWorkload, keep, runKeepEnd, RunActSayStopping),
		RunEvStopConfirmed:   runTo(RunCollecting, keep, runKeepEnd, RunActCollect),
		RunEvStopUnconfirmed: runTo(RunStopFailed, exitStopFailed, RunStopFailed, RunActReportUnconfirmed),
	},
	RunCollecting: {
		RunEvInterrupt:      runTo(RunCollecting, keep, runKeepEnd, RunActWarnConfirm),
		RunEvConfirmExpired: runTo(RunCollecting, keep, runKeepEnd, RunActSayNotConfirmed),
		RunEvInterruptAgain: runTo(RunCollecting, exitSIGINT, RunAborted, RunActStopCollect),
		RunEvTerminate:      runTo(RunCollecting, exitSIGTERM, RunAborted, RunActStopCollect),
		RunEvHangup:         runTo(RunCollecting, exitSIGHUP, RunAborted, RunActStopCollect),
		RunEvCollected:      runTo(RunTeardown, keep, runKeepEnd, RunActTeardown),
	},
	RunTeardown: {
		RunEvInterrupt:      runTo(RunTeardown, keep, runKeepEnd, RunActWarnConfirm),
		RunEvConfirmExpired: runTo(RunTeardown, keep, runKeepEnd, RunActSayNotConfirmed),
		RunEvInterruptAgain: runTo(RunStoppingTeardown, exitSIGINT, RunAborted, RunActStopTeardown),
		RunEvTerminate:      runTo(RunStoppingTeardown, exitSIGTERM, RunAborted, RunActStopTeardown),
		RunEvHangup:         runTo(RunStoppingTeardown, exitSIGHUP, RunAborted, RunActStopTeardown),
		RunEvTeardownPassed: runTo(RunCleanup, keep, runKeepEnd, RunActCleanup),
		RunEvTeardownFailed: runTo(RunCleanup, fromEvent, RunFailed, RunActCleanup),
	},
	// A playbook's group is stopped by escalating signals, which always ends it.
	RunStoppingTeardown: {
		RunEvInterrupt:      runTo(RunStoppingTeardown, keep, runKeepEnd, RunActSayStopping),
		RunEvInterruptAgain: runTo(RunStoppingTeardown, keep, runKeepEnd, RunActSayStopping),
		RunEvTerminate:      runTo(RunStoppingTeardown, keep, runKeepEnd, RunActSayStopping),
		RunEvHangup:         runTo(RunStoppingTeardown, keep, runKeepEnd, RunActSayStopping),
		RunEvTeardownPassed: runTo(RunCleanup, keep, runKeepEnd, RunActCleanup),
		RunEvTeardownFailed: runTo(RunCleanup, keep, runKeepEnd, RunActCleanup),
	},
	// A destroy is never cut short.
	RunCleanup: {
		RunEvInterrupt:      runTo(RunCleanup, keep, runKeepEnd, RunActSayStopping),
		RunEvInterruptAgain: runTo(RunCleanup, keep, runKeepEnd, RunActSayStopping),
		RunEvTerminate:      runTo(RunCleanup, keep, runKeepEnd, RunActSayStopping),
		RunEvHangup:         runTo(RunCleanup, keep, runKeepEnd, RunActSayStopping),
		RunEvCleaned:        runTo(runToEnd, keep, runKeepEnd),
	},
}

// runIgnored lists, per phase, the events that deliberately do nothing
// there. With runTable it covers every pair of a non-terminal phase
// (runphase_test.go checks).
var runIgnored = [numRunPhases][]RunEvent{
	// The setup's window is its own: its rows warn and confirm.
	RunSetup: {
		RunEvConfirmExpired, RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost,
		RunEvStopConfirmed, RunEvStopUnconfirmed, RunEvCollected, RunEvTeardownPassed, RunEvTeardownFailed, RunEvCleaned,
	},
	RunStoppingSetup: {
		RunEvConfirmExpired, RunEvSetupStopping, RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost,
		RunEvStopConfirmed, RunEvStopUnconfirmed, RunEvCollected, RunEvTeardownPassed, RunEvTeardownFailed, RunEvCleaned,
	},
	// The runners' confirmations count only once a stop was asked for.
	RunWorkload: {
		RunEvSetupStopping, RunEvSetupPassed, RunEvSetupFailed, RunEvSetupAborted,
		RunEvStopConfirmed, RunEvStopUnconfirmed, RunEvCollected, RunEvTeardownPassed, RunEvTeardownFailed, RunEvCleaned,
	},
	// A workload that ends while its stop is awaited counts as confirmed
	// (stop_confirmed); its own end changes nothing here.
	RunStoppingWorkload: {
		RunEvConfirmExpired, RunEvSetupStopping, RunEvSetupPassed, RunEvSetupFailed, RunEvSetupAborted,
		RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost,
		RunEvCollected, RunEvTeardownPassed, RunEvTeardownFailed, RunEvCleaned,
	},
	RunCollecting: {
		RunEvSetupStopping, RunEvSetupPassed, RunEvSetupFailed, RunEvSetupAborted,
		RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost, RunEvStopConfirmed, RunEvStopUnconfirmed,
		RunEvTeardownPassed, RunEvTeardownFailed, RunEvCleaned,
	},
	RunTeardown: {
		RunEvSetupStopping, RunEvSetupPassed, RunEvSetupFailed, RunEvSetupAborted,
		RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost, RunEvStopConfirmed, RunEvStopUnconfirmed,
		RunEvCollected, RunEvCleaned,
	},
	RunStoppingTeardown: {
		RunEvConfirmExpired, RunEvSetupStopping, RunEvSetupPassed, RunEvSetupFailed, RunEvSetupAborted,
		RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost, RunEvStopConfirmed, RunEvStopUnconfirmed,
		RunEvCollected, RunEvCleaned,
	},
	RunCleanup: {
		RunEvConfirmExpired, RunEvSetupStopping, RunEvSetupPassed, RunEvSetupFailed, RunEvSetupAborted,
		RunEvWorkloadPassed, RunEvWorkloadFailed, RunEvWorkloadLost, RunEvStopConfirmed, RunEvStopUnconfirmed,
		RunEvCollected, RunEvTeardownPassed, RunEvTeardownFailed,
	},
}

// RunStep looks up what event e does in phase p. ok is false for an ignored pair.
func RunStep(p RunPhase, e RunEvent) (RunTransition, bool) {
	if p < 0 || p >= numRunPhases {
		return RunTransition{}, false
	}
	t, ok := runTable[p][e]
	return t, ok
}
