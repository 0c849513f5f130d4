// How an environment's command speaks for each of its VMs.
package main

import (
	"io"
	"sync"
)

// vmOutcome is how a command ended for one VM of an environment, as the
// environment's exit event lists it.
type vmOutcome struct {
	VM       string `json:"vm"`
	Phase    string `json:"phase,omitempty"`
	ExitCode int    `json:"exit_code"`
	// Outcome is kept (the VM is there) or removed (it is gone).
	Outcome string `json:"outcome"`
	// WorkloadExit is the exit status of `vmup run`'s workload on the VM,
	// when it ran to its end there.
	WorkloadExit *int `json:"workload_exit_code,omitempty"`
}

// serialWriter writes each Write whole: the Outputs of an environment's VMs
// share one, so their lines and events never interleave.
type serialWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *serialWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// forVM is an Output for one VM of an environment: every human line begins
// with label (the VM's name in the file), every event names the VM, and its
// exit is recorded (outcome), not sent. No spinner: several VMs speak at once.
func (o *Output) forVM(vm, label string) *Output {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := &Output{human: o.human, json: o.json, vm: vm, phase: noPhase, now: o.now, child: true, parent: o, envName: o.envName}
	if label != "" {
		c.prefix = label + " | "
	}
	return c
}

// addOutcome records one VM's outcome for the exit event.
func (o *Output) addOutcome(v vmOutcome) {
	o.mu.Lock()
	o.vms = append(o.vms, v)
	o.mu.Unlock()
}

// childOutcome is what Exit recorded of a child, if it was called.
func (o *Output) childOutcome() (vmOutcome, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.outcome == nil {
		return vmOutcome{VM: o.vm}, false
	}
	return *o.outcome, true
}

// SayPhase sends an environment's phase change as a phase event whose
// phase is the environment's.
func (o *Output) SayPhase(phase, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.emitEvent(jsonEvent{Event: "phase", Phase: phase, Message: msg})
}

// SayRunPhase sends a run's phase change as a run_phase event.
func (o *Output) SayRunPhase(phase, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.emitEvent(jsonEvent{Event: "run_phase", Phase: phase, Message: msg})
}

// SetRun makes the exit event carry the run's id and the stage it ended in.
func (o *Output) SetRun(id, stage string) {
	o.mu.Lock()
	o.runID, o.runStage = id, stage
	o.mu.Unlock()
}

// SetEnvironment makes every event from now on name the environment.
func (o *Output) SetEnvironment(name string) {
	o.mu.Lock()
	o.envName = name
	o.mu.Unlock()
}

// silenced: o, or the environment's Output it speaks for, was muted (o.mu
// is held; a child locks its parent's, never the other way round).
func (o *Output) silenced() bool {
	if o.muted || o.parent == nil {
		return o.muted
	}
	o.parent.mu.Lock()
	defer o.parent.mu.Unlock()
	return o.parent.muted
}
