package main

import (
	"context"
	"os"
	"sync"
	"time"
)

// abortWait is how long a signalled command may take to unwind before vmup
// exits without it: what it waits on may be out of any context's reach (a
// read on a hung file system), and a signal acts within a second.
const abortWait = 500 * time.Millisecond

// abortGuard lets a signal end a command before it changes anything: the
// first signal cancels ctx and the command ends with that signal's code.
// A command that must not stop halfway calls commit before its first
// change; from then on the signals are its own to handle.
type abortGuard struct {
	ctx     context.Context
	cancel  context.CancelFunc
	out     *Output
	exitFor func(os.Signal) (code int, ends bool)

	mu        sync.Mutex
	code      int
	aborted   chan struct{} // closed by the signal that ends the command
	quit      chan struct{} // commit: stop watching
	gone      chan struct{} // the watcher returned
	committed bool
	// holds: a cleanup that must end before vmup exits (prune's token)
	// read-locks it; a signalled command's exit waits past abortWait for it.
	holds sync.RWMutex
}

// newAbortGuard watches sigs from now on.
func newAbortGuard(sigs <-chan os.Signal, out *Output, exitFor func(os.Signal) (int, bool)) *abortGuard {
	g := &abortGuard{out: out, exitFor: exitFor, aborted: make(chan struct{}), quit: make(chan struct{}), gone: make(chan struct{})}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	go g.watch(sigs)
	return g
}

func (g *abortGuard) watch(sigs <-chan os.Signal) {
	defer close(g.gone)
	for {
		select {
		case sig := <-sigs:
			code, ends := g.exitFor(sig)
			if !ends {
				continue
			}
			g.mu.Lock()
			g.code = code
			g.mu.Unlock()
			// What the command says while it unwinds ("context canceled") is noise.
			g.out.Mute()
			g.cancel()
			close(g.aborted)
			return
		case <-g.quit:
			return
		}
	}
}

// commit stops the guard; false when a signal already ended the command,
// which must then return without changing anything.
func (g *abortGuard) commit() bool {
	g.mu.Lock()
	if !g.committed {
		g.committed = true
		close(g.quit)
	}
	g.mu.Unlock()
	<-g.gone
	select {
	case <-g.aborted:
		return false
	default:
		return true
	}
}

// run runs f and returns its exit code, or the signal's once one ended it:
// as soon as f returns, or after abortWait if it does not.
func (g *abortGuard) run(f func() int) int {
	defer g.cancel()
	done := make(chan int, 1)
	go func() { done <- f() }()
	var code int
	select {
	case code = <-done:
		if g.commit() {
			return code
		}
	case <-g.aborted:
		select {
		case <-done:
		case <-time.After(abortWait):
			g.holds.Lock() // a cleanup under way ends first (bounded by its own timeout)
			g.holds.Unlock()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.code
}

// abortExit is what a signal does to a command that has changed nothing
// yet: what it does to an up in preparing (exit 130, 143 or 129; SIGUSR1,
// a save request, waits for the VM to run).
func abortExit(sig os.Signal) (int, bool) {
	t, ok := Step(Preparing, signalEvent(sig, false, false))
	return t.Exit, ok && t.Exit != keep
}

// ctx is the context of a command's work before it commits: a signal
// cancels it. Commands run by tests without a guard get one never cancelled.
func (e Env) ctx() context.Context {
	if e.Abort == nil {
		return context.Background()
	}
	return e.Abort.ctx
}

// hold keeps vmup from exiting on a signal until release is called: for a
// cleanup that must not be cut off halfway and has a timeout of its own.
func (e Env) hold() (release func()) {
	if e.Abort == nil {
		return func() {}
	}
	e.Abort.holds.RLock()
	return e.Abort.holds.RUnlock
}

// commit tells the guard that the command begins to change things; false:
// a signal came first, and the command returns at once.
func (e Env) commit() bool { return e.Abort == nil || e.Abort.commit() }
