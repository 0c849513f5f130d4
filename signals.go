package main

import (
	"os"
	"os/signal"
	"syscall"
)

// notifySignals delivers SIGINT, SIGTERM and SIGHUP to ch. A SIGHUP that was
// ignored when vmup started (nohup) stays ignored. Never signal.Ignore: an
// ignored signal is inherited by children across exec.
func notifySignals(ch chan<- os.Signal) (stop func()) {
	sigs := []os.Signal{syscall.SIGINT, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	signal.Notify(ch, sigs...)
	return func() { signal.Stop(ch) }
}

// surviveClosedOutput keeps vmup alive when the reader of its stdout or
// stderr is gone (`vmup up | tee` after Ctrl+C, `--json | head`): Go kills a
// program that writes to a broken pipe on fd 1 or 2 unless SIGPIPE is
// notified; with it, such writes fail with EPIPE, which progress output
// ignores. Notify, not Ignore: children get SIGPIPE's default back on exec.
func surviveClosedOutput() {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
}

// sigForceStop is `vmup down --force`'s request to a foreground up: power
// the VM off at once. A real-time signal (SIGRTMIN+2 as glibc counts), which
// nothing but vmup sends.
const sigForceStop = syscall.Signal(36)

// notifyRequests delivers the requests of other vmup commands to a
// foreground up: SIGUSR1 to save (`down --suspend`), SIGUSR2 to stop
// (`down`, `destroy`), sigForceStop to force off (`down --force`).
func notifyRequests(ch chan<- os.Signal) {
	signal.Notify(ch, syscall.SIGUSR1, syscall.SIGUSR2, sigForceStop)
}

// signalEvent turns a signal into the controller's event. A SIGINT is a
// confirmation only while the first-boot window is open. SIGUSR1 asks for a
// save, and so does any stop signal when stopSaves (--suspend-on-stop, once
// the first boot completed), but not the stop and force-off that `down`
// and `destroy` ask for.
func signalEvent(sig os.Signal, windowOpen, stopSaves bool) Event {
	switch {
	case sig == syscall.SIGUSR2:
		return EvStop // vmup's own stop request never saves
	case sig == sigForceStop:
		return EvForceStop
	case sig == syscall.SIGUSR1 || stopSaves:
		return EvSuspend
	}
	switch sig {
	case syscall.SIGTERM:
		return EvTerminate
	case syscall.SIGHUP:
		return EvHangup
	}
	if windowOpen {
		return EvInterruptAgain
	}
	return EvInterrupt
}

// signalExit is the exit code for dying of sig the way shells report it.
func signalExit(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return exitFailed
}
