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

// notifySuspend delivers SIGUSR1, `vmup down --suspend`'s request, to ch.
func notifySuspend(ch chan<- os.Signal) { signal.Notify(ch, syscall.SIGUSR1) }

// signalEvent turns a signal into the controller's event. A SIGINT is a
// confirmation only while the first-boot window is open. SIGUSR1 asks for a
// save, and so does any stop signal when stopSaves (--suspend-on-stop, once
// the first boot completed).
func signalEvent(sig os.Signal, windowOpen, stopSaves bool) Event {
	if sig == syscall.SIGUSR1 || stopSaves {
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
