package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cmd is one external program run. Args[0] is the program; nothing is ever
// passed through a shell.
type Cmd struct {
	Args   []string
	Env    []string  // added to vmup's environment
	Stdout io.Writer // nil: captured into Result.Stdout
	Stderr io.Writer // nil: captured into Result.Stderr
	Stdin  io.Reader // nil: /dev/null
	// Grace, when set, replaces the runner's time per signal for stopping a
	// cancelled child: an upload must end within a second of an interrupt.
	Grace time.Duration
	// Started, when set, learns the child's process group as soon as it runs,
	// so the journal can name it for a later `up` to reap.
	Started func(pgid int)
}

type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// Runner runs every external program vmup uses (except `vmup ssh`, which
// replaces itself with ssh). Cancelling ctx stops the child's whole process
// group; Run returns only once that group is gone, cancelled or not.
type Runner interface {
	Run(ctx context.Context, c Cmd) (Result, error)
}

// ExitError is a child that ran and exited non-zero.
type ExitError struct {
	Args     []string
	ExitCode int
	Stderr   string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:]
	}
	if msg == "" {
		msg = fmt.Sprintf("exit status %d", e.ExitCode)
	}
	return fmt.Sprintf("%s: %s", e.Args[0], msg)
}

// execRunner starts children in their own process group, with stdin from
// Cmd.Stdin or /dev/null and a parent-death signal, and stops a cancelled
// child's group, or what is left of it once the child exited, by escalating
// SIGINT, SIGTERM, SIGKILL, each given Grace (or Cmd.Grace) to work.
type execRunner struct {
	Grace time.Duration
}

func (r execRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(c.Args[0], c.Args[1:]...)
	cmd.Env = append(cmd.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	cmd.Stdin = c.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A grandchild holding a pipe open must not hang vmup once the child exited.
	cmd.WaitDelay = 2 * time.Second

	waited := make(chan error, 1)
	if err := startHeld(cmd, func() { waited <- cmd.Wait() }); err != nil {
		return Result{ExitCode: -1}, fmt.Errorf("cannot run %s: %w", c.Args[0], err)
	}
	pgid := cmd.Process.Pid
	if c.Started != nil {
		c.Started(pgid)
	}

	var waitErr error
	select {
	case waitErr = <-waited:
		// The child is gone, but what it started in its group (a playbook's
		// `cmd &`) is not: it gets the same escalation as a cancelled child.
		if unix.Kill(-pgid, 0) != unix.ESRCH {
			exited := make(chan error, 1)
			exited <- waitErr
			waitErr = stopGroup(pgid, r.grace(), exited)
		}
	case <-ctx.Done():
		grace := r.grace()
		if c.Grace > 0 {
			grace = c.Grace
		}
		waitErr = stopGroup(pgid, grace, waited)
	}
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: cmd.ProcessState.ExitCode()}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	var exitErr *exec.ExitError
	if errors.As(waitErr, &exitErr) {
		return res, &ExitError{Args: c.Args, ExitCode: res.ExitCode, Stderr: stderr.String()}
	}
	return res, waitErr
}

// startHeld starts cmd, then runs wait, on a thread of its own for the
// child's life: Pdeathsig fires when the thread that started the child exits.
func startHeld(cmd *exec.Cmd, wait func()) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		wait()
		// Left locked on purpose: the runtime ends this thread with the goroutine.
	}()
	return <-started
}

func (r execRunner) grace() time.Duration {
	if r.Grace > 0 {
		return r.Grace
	}
	return 5 * time.Second
}

// stopGroup signals the process group with ever stronger signals until no
// process of it is left. The leader is reaped by the waiting goroutine meanwhile.
func stopGroup(pgid int, grace time.Duration, waited <-chan error) (waitErr error) {
	leaderDone := false
	for _, sig := range []unix.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGKILL} {
		if unix.Kill(-pgid, sig) == unix.ESRCH {
			break
		}
		deadline := time.Now().Add(grace)
		for time.Now().Before(deadline) {
			if !leaderDone {
				select {
				case waitErr = <-waited:
					leaderDone = true
				case <-time.After(20 * time.Millisecond):
				}
			} else {
				time.Sleep(20 * time.Millisecond)
			}
			if leaderDone && unix.Kill(-pgid, 0) == unix.ESRCH {
				return waitErr
			}
		}
	}
	if !leaderDone {
		waitErr = <-waited
	}
	return waitErr
}
