// The setup of `vmup run`: the layer below the run, one VM's up or an
// environment's, stepped by the run's loop.
package main

import (
	"os"
)

// setupLayer is `up -d` of the run's VMs, as pieces the run's loop calls:
// it is the one loop, and these step the VMs' (and the environment's) own
// rows. What the layer ends in is the run's event.
type setupLayer interface {
	start()
	events() <-chan evMsg
	signal(sig os.Signal)
	handle(m evMsg)
	done() bool
	// stopping says a signal was taken as a stop: first boots are wiped,
	// the others stopped.
	stopping() bool
	// end waits for what is left and returns the layer's exit code.
	end() int
	// detached says the VMs run and were left running (-d).
	detached() bool
}

// vmSetup is one VM's up (controller.go's rows).
type vmSetup struct {
	u  *upRun
	ch chan evMsg
}

func (s *vmSetup) start()               { s.u.begin(s.ch) }
func (s *vmSetup) events() <-chan evMsg { return s.ch }
func (s *vmSetup) signal(sig os.Signal) {
	s.u.apply(evMsg{ev: signalEvent(sig, s.u.windowOpen, false), vm: s.u})
}
func (s *vmSetup) handle(m evMsg) { s.u.apply(m) }
func (s *vmSetup) done() bool     { return s.u.phase.Terminal() }
func (s *vmSetup) stopping() bool {
	switch s.u.phase {
	case Stopping, Wiping, Stopped, Aborted:
		return true
	}
	return false
}
func (s *vmSetup) end() int {
	s.u.finish()
	return s.u.exit
}
func (s *vmSetup) detached() bool { return s.u.phase == Detached }

// envSetup is an environment's up (env.go's rows, and each VM's).
type envSetup struct{ r *envRun }

func (s *envSetup) start()               { s.r.start() }
func (s *envSetup) events() <-chan evMsg { return s.r.events }
func (s *envSetup) signal(sig os.Signal) { s.r.signal(sig) }
func (s *envSetup) handle(m evMsg)       { s.r.handle(m) }
func (s *envSetup) done() bool           { return s.r.phase.Terminal() }
func (s *envSetup) stopping() bool {
	return s.r.phase == EnvStopping || s.r.phase == EnvStopped
}
func (s *envSetup) end() int {
	s.r.finish()
	return s.r.exit
}
func (s *envSetup) detached() bool { return s.r.phase == EnvDetached }
