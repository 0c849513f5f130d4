// The guest side of `vmup run`: a runner vmup puts in the guest for each
// run, and the protocol vmup speaks with it over its own ssh commands.
//
// The workload runs under the runner, not under an ssh session, so a dropped
// connection or a killed vmup does not end it. In the guest, relative to the
// login's home, each run has a dir .vmup/runs/RUNID (mode 0700) holding:
//
//	runner.sh    the runner: a header vmup generates, then guestrunner.sh
//	runner.out   the runner's own stdout and stderr
//	runner.pid   "PID" of the runner
//	output.log   the workload's stdout and stderr
//	started      "RUNID EPOCHSECONDS PGID" once the workload runs, in group PGID
//	exit         "RUNID CODE" once the workload's group is gone: its exit
//	             code, 128+N for signal N, 130 when a stop came before it started
//	stop         "RUNID", written by vmup to ask for a stop
//	confirmed    "RUNID CODE" once a requested stop is done (CODE as in exit)
//
// The runner writes every state file whole (a temporary file, then mv); so
// does vmup its stop. A line counts only when it names its own run. It
// writes confirmed before exit: once exit is seen, the state is final.
//
// Each guest command is `sh -c '…'` (whatever the login shell is), its script
// made only of vmup's constants, a validated run id and integers: no quote,
// backslash, newline or '!' that a login shell could read its own way.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed guestrunner.sh
var guestRunnerBody string

const (
	// runsDir is where runs live in the guest, relative to the home dir an
	// ssh command starts in.
	runsDir = ".vmup/runs"
	// runCodeNotStarted is the code of a run stopped before its workload started.
	runCodeNotStarted = 130
	// runnerCallTimeout bounds each ssh call of a stop: a paused guest makes
	// ssh hang, and the deadline is the caller's to keep.
	runnerCallTimeout = 3 * time.Second
	// pollLogMax is the most log one poll returns; runnerState.LogMore says
	// there is more.
	pollLogMax = 1 << 20
)

var runIDPattern = lazyRE(`^[a-z0-9][a-z0-9-]{0,63}$`)

func validRunID(id string) error {
	if !runIDPattern.MatchString(id) {
		return fmt.Errorf("invalid run id %q: want lowercase letters, digits and '-', at most 64", id)
	}
	return nil
}

// newRunID names a run by its start (in now's location) and 6 random hex
// digits: "20261204-153012-a1b2c3".
func newRunID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return now.Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

func runDir(runID string) string { return runsDir + "/" + runID }

// singleQuote makes one sh word of s, whatever it holds.
func singleQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// guestSh is a guest command that runs script with sh, not the login shell.
func guestSh(script string) string {
	if strings.ContainsAny(script, "'\\\n!") {
		panic("guest script with a character a login shell may read its own way: " + script)
	}
	return "sh -c " + singleQuote(script)
}

// stopTimeoutSeconds is the runner's stop timeout: whole seconds, at least 1.
func stopTimeoutSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// runnerScript is the runner.sh of a run: the header, then guestRunnerBody.
// The workload's words are single-quoted: sh runs them as argv, unparsed.
func runnerScript(runID string, argv []string, stopTimeout time.Duration) (string, error) {
	if err := validRunID(runID); err != nil {
		return "", err
	}
	if len(argv) == 0 {
		return "", errors.New("no command to run")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# vmup run %s: the runner, written by vmup\nRUN_ID=%s\nSTOP_TIMEOUT=%d\nset --",
		runID, runID, stopTimeoutSeconds(stopTimeout))
	for _, w := range argv {
		if strings.IndexByte(w, 0) >= 0 {
			return "", fmt.Errorf("the command's word %q holds a NUL byte, which no argument can", w)
		}
		b.WriteString(" " + singleQuote(w))
	}
	b.WriteString("\n\n" + guestRunnerBody)
	return b.String(), nil
}

// startRunner puts the run's runner in the guest and starts it, in one ssh
// round trip that returns at once: the runner lives on, detached. A run id
// whose runner.sh is there already is refused (a run starts once).
func startRunner(ctx context.Context, s *SSH, runID string, argv []string, stopTimeout time.Duration) error {
	_, _, err := startAndWait(ctx, s, runID, argv, stopTimeout, 0)
	return err
}

// runnerState is what one poll saw of a run; only lines naming the run count.
type runnerState struct {
	Started       bool
	PGID          int // the workload's process group, once Started
	Exited        bool
	ExitCode      int // once Exited
	StopConfirmed bool
	ConfirmCode   int  // once StopConfirmed
	Missing       bool // no such run dir
	// NoRunner: no runner.sh in the run dir (so also when Missing). A stop
	// written before this was seen stops any runner that starts later
	// before its workload starts.
	NoRunner bool
	// LogMore: this poll returned pollLogMax bytes of log and there is more.
	LogMore bool
}

// pollRunner reads a run's state and its log from byte logOffset on (none
// when logOffset < 0), in one ssh round trip. The state files are read
// first: once exit is seen, the log read after it is complete.
func pollRunner(ctx context.Context, s *SSH, runID string, logOffset int64) (st runnerState, newLog []byte, err error) {
	return waitRunner(ctx, s, runID, logOffset, 0)
}

// waitRunner is pollRunner after a wait in the guest, up to wait, for the
// runner's end (it ends once it wrote the exit, and the confirmation of a
// stop). Called over and over, it sees an end one round trip after it
// came, where polls would add their period; the log comes every wait.
func waitRunner(ctx context.Context, s *SSH, runID string, logOffset int64, wait time.Duration) (st runnerState, newLog []byte, err error) {
	if err := validRunID(runID); err != nil {
		return st, nil, err
	}
	return execPoll(ctx, s, runID, logOffset, pollScript(runID, logOffset, wait), nil)
}

// pollScript is the guest's side of waitRunner, run from the home dir.
func pollScript(runID string, logOffset int64, wait time.Duration) string {
	dir := runDir(runID)
	script := ""
	if secs := wait.Seconds(); secs > 0 {
		// GNU tail --pid waits for the runner's end with a look every 50 ms
		// and no process started per look: a guest of one slow vCPU runs the
		// workload too.
		script = "if cd " + dir + " 2>/dev/null; then if [ -f exit ] || [ -f confirmed ]; then :; " +
			"elif read -r p <runner.pid 2>/dev/null; then " +
			"timeout " + strconv.FormatFloat(secs, 'f', 2, 64) + " tail -f /dev/null --pid=\"$p\" -s 0.05 >/dev/null 2>&1; fi; cd; fi; "
	}
	// State lines keep only the bytes a state line may have: each file is
	// one line of output, whatever it holds.
	script += "echo vmup-run " + runID + "; cd " + dir + " 2>/dev/null || { echo missing; exit 0; }; " +
		"[ -f runner.sh ] && echo runner; " +
		// Three processes for the three files, not three each: each costs a
		// guest of one slow vCPU tens of ms.
		"for f in started exit confirmed; do if [ -f $f ] && read -r l <$f; then echo \"$f $l\"; fi; done | head -c 1000 | tr -cd \"a-z0-9 [:space:]-\"; " +
		"echo log"
	if logOffset >= 0 {
		script += "; tail -c +" + strconv.FormatInt(logOffset+1, 10) + " output.log 2>/dev/null | head -c " + strconv.Itoa(pollLogMax+1)
	}
	return script
}

// execPoll runs a guest script that ends as pollScript does and reads its answer.
func execPoll(ctx context.Context, s *SSH, runID string, logOffset int64, script string, stdin io.Reader) (st runnerState, newLog []byte, err error) {
	var out bytes.Buffer
	if _, err := s.ExecWith(ctx, stdin, &out, guestSh(script)); err != nil {
		return st, nil, fmt.Errorf("cannot read the state of run %s in VM %s: %w", runID, s.name, err)
	}
	st, newLog, err = parseRunnerPoll(out.Bytes(), runID)
	if err != nil {
		return st, nil, fmt.Errorf("cannot read the state of run %s in VM %s: %w", runID, s.name, err)
	}
	if logOffset < 0 {
		newLog = nil
	}
	return st, newLog, nil
}

// startAndWait is startRunner and a first waitRunner in one ssh round trip:
// a short workload's end is seen by the command that started it.
func startAndWait(ctx context.Context, s *SSH, runID string, argv []string, stopTimeout, wait time.Duration) (runnerState, []byte, error) {
	script, err := runnerScript(runID, argv, stopTimeout)
	if err != nil {
		return runnerState{}, nil, err
	}
	dir := runDir(runID)
	start := "umask 077 && mkdir -p " + dir + " && cd " + dir + " && set -C && cat >runner.sh || exit 1; " +
		// In a subshell that ends at once: the runner is init's to reap, not
		// a zombie of this shell that tail --pid would wait on.
		"set +C; (nohup sh runner.sh </dev/null >runner.out 2>&1 &); " +
		"for t in 1 2 3 4 5 6 7 8 9 10; do if [ -s runner.pid ]; then break; fi; sleep 0.05; done; cd; "
	st, log, err := execPoll(ctx, s, runID, 0, start+pollScript(runID, 0, wait), strings.NewReader(script))
	if err != nil {
		return st, nil, fmt.Errorf("cannot start the runner of run %s in VM %s: %w", runID, s.name, err)
	}
	return st, log, nil
}

// parseRunnerPoll reads pollRunner's output: anything a login's rc file
// printed, "vmup-run RUNID", then "missing", or state lines up to "log" and
// the log's bytes after it.
func parseRunnerPoll(out []byte, runID string) (st runnerState, log []byte, err error) {
	head := []byte("vmup-run " + runID + "\n")
	i := bytes.Index(out, head)
	for i > 0 && out[i-1] != '\n' {
		j := bytes.Index(out[i+1:], head)
		if j < 0 {
			i = -1
			break
		}
		i += 1 + j
	}
	if i < 0 {
		return st, nil, errors.New("the guest's answer has no state")
	}
	rest := out[i+len(head):]
	st.NoRunner = true
	for {
		line, after, ok := bytes.Cut(rest, []byte("\n"))
		if !ok {
			return st, nil, errors.New("the guest's answer ends early")
		}
		rest = after
		f := strings.Fields(string(line))
		switch {
		case len(f) == 1 && f[0] == "missing":
			st.Missing = true
			return st, nil, nil
		case len(f) == 1 && f[0] == "runner":
			st.NoRunner = false
		case len(f) == 1 && f[0] == "log":
			if len(rest) > pollLogMax {
				st.LogMore, rest = true, rest[:pollLogMax]
			}
			return st, rest, nil
		case len(f) == 4 && f[0] == "started" && f[1] == runID:
			if pg, err := strconv.Atoi(f[3]); err == nil && pg > 0 {
				st.Started, st.PGID = true, pg
			}
		case len(f) == 3 && f[0] == "exit" && f[1] == runID:
			if code, ok := runnerCode(f[2]); ok {
				st.Exited, st.ExitCode = true, code
			}
		case len(f) == 3 && f[0] == "confirmed" && f[1] == runID:
			if code, ok := runnerCode(f[2]); ok {
				st.StopConfirmed, st.ConfirmCode = true, code
			}
		}
	}
}

// runnerCode reads a state file's code: digits only, at most 255, as a
// process's status is; anything else (a guest's lie) is no code.
func runnerCode(s string) (int, bool) {
	code, err := strconv.Atoi(s)
	return code, err == nil && s[0] != '-' && s[0] != '+' && code <= 255
}

// requestStop asks the run's runner to stop its workload: it writes stop,
// making the run dir if it is not there yet (a runner that starts later
// then never starts its workload). Writing it again is harmless.
func requestStop(ctx context.Context, s *SSH, runID string) error {
	if err := validRunID(runID); err != nil {
		return err
	}
	dir := runDir(runID)
	cmd := guestSh("umask 077 && mkdir -p " + dir + " && cd " + dir +
		" && echo " + runID + " >stop.tmp.$$ && mv -f stop.tmp.$$ stop")
	if _, err := s.Exec(ctx, cmd); err != nil {
		return fmt.Errorf("cannot ask the runner of run %s in VM %s to stop: %w", runID, s.name, err)
	}
	return nil
}

// awaitStop writes the stop request, as requestStop does, and waits in the
// guest, up to wait, for the runner to end (GNU tail --pid looks every 50
// ms), which it does once it wrote its exit and its confirmation: a stop is
// seen as soon as it is done, not at the next poll. It is nil once one of
// them is there.
func awaitStop(ctx context.Context, s *SSH, runID string, wait time.Duration) error {
	if err := validRunID(runID); err != nil {
		return err
	}
	dir := runDir(runID)
	cmd := guestSh("umask 077 && mkdir -p " + dir + " && cd " + dir +
		" && echo " + runID + " >stop.tmp.$$ && mv -f stop.tmp.$$ stop && if [ -f exit ] || [ -f confirmed ]; then :; " +
		"elif read -r p <runner.pid 2>/dev/null; then timeout " + strconv.FormatFloat(wait.Seconds(), 'f', 2, 64) +
		" tail -f /dev/null --pid=\"$p\" -s 0.05 >/dev/null 2>&1; fi; [ -f exit ] || [ -f confirmed ]")
	if _, err := s.Exec(ctx, cmd); err != nil {
		return fmt.Errorf("the runner of run %s in VM %s did not confirm its stop: %w", runID, s.name, err)
	}
	return nil
}

// errStopUnconfirmed is what stopRunner's error Is when the deadline came
// before the runner confirmed.
var errStopUnconfirmed = errors.New("stop not confirmed")

type stopUnconfirmedError struct {
	RunID string
	// Requested: the stop request is in the guest. A runner that runs again
	// (a resumed guest) acts on it; one that starts later never starts its workload.
	Requested bool
	Last      error // the last ssh failure, if any
}

func (e *stopUnconfirmedError) Error() string {
	msg := "cannot reach the guest to stop run " + e.RunID
	if e.Requested {
		msg = "the runner of run " + e.RunID + " did not confirm the stop in time (the request is in the guest)"
	}
	if e.Last != nil {
		msg += ": " + e.Last.Error()
	}
	return msg
}

func (e *stopUnconfirmedError) Is(target error) bool { return target == errStopUnconfirmed }
func (e *stopUnconfirmedError) Unwrap() error        { return e.Last }

// stopRunner stops a run and returns its code: it asks for the stop until
// that reaches the guest, then polls every poll until the runner confirms or
// the workload has ended by itself. A run with no runner is stopped before
// it started (runCodeNotStarted). By the deadline it gives up with an error
// that Is errStopUnconfirmed. For `run`'s interrupt and for an orphaned run.
func stopRunner(ctx context.Context, s *SSH, runID string, deadline time.Time, poll time.Duration) (code int, err error) {
	if err := validRunID(runID); err != nil {
		return 0, err
	}
	e := &stopUnconfirmedError{RunID: runID}
	call := func(f func(context.Context) error) error {
		callDeadline := time.Now().Add(runnerCallTimeout)
		if deadline.Before(callDeadline) {
			callDeadline = deadline
		}
		cctx, cancel := context.WithDeadline(ctx, callDeadline)
		defer cancel()
		err := f(cctx)
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, context.DeadlineExceeded):
			e.Last = errors.New("ssh got no answer from the guest in time")
		default:
			e.Last = err
		}
		return err
	}
	wait := func() error {
		if left := time.Until(deadline); left > 0 {
			return sleepCtx(ctx, min(poll, left))
		}
		return nil
	}
	for !e.Requested {
		if time.Now().After(deadline) {
			return 0, e
		}
		if call(func(c context.Context) error { return requestStop(c, s, runID) }) == nil {
			e.Requested, e.Last = true, nil
		} else if err := wait(); err != nil {
			return 0, err
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	for {
		if time.Now().After(deadline) {
			return 0, e
		}
		var st runnerState
		err := call(func(c context.Context) (err error) {
			st, _, err = pollRunner(c, s, runID, -1)
			return err
		})
		switch {
		case ctx.Err() != nil:
			return 0, ctx.Err()
		case err != nil:
		case st.StopConfirmed:
			return st.ConfirmCode, nil
		case st.Exited:
			return st.ExitCode, nil
		case st.NoRunner:
			return runCodeNotStarted, nil
		}
		if err := wait(); err != nil {
			return 0, err
		}
	}
}

// lineWriter writes whole lines to w, each after prefix; see prefixLines.
type lineWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
	closed bool
}

// maxLine is the longest line lineWriter keeps whole; a longer one is cut.
const maxLine = 64 << 10

// prefixLines streams a workload's output: each line goes to w in one
// write, prefix first ("VM | "), so lines from several writers interleave
// whole. Close writes what is left of a last line, ending it with a newline.
func prefixLines(w io.Writer, prefix string) io.WriteCloser {
	return &lineWriter{w: w, prefix: prefix}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, errors.New("write to a closed line writer")
	}
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 && len(l.buf) < maxLine {
			break
		}
		if i < 0 {
			i = maxLine - 1
			if err := l.emit(l.buf[:i+1], true); err != nil {
				return len(p), err
			}
		} else if err := l.emit(l.buf[:i+1], false); err != nil {
			return len(p), err
		}
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) == 0 {
		l.buf = nil // let a large buffer go
	}
	return len(p), nil
}

func (l *lineWriter) emit(line []byte, addNewline bool) error {
	out := make([]byte, 0, len(l.prefix)+len(line)+1)
	out = append(append(out, l.prefix...), line...)
	if addNewline {
		out = append(out, '\n')
	}
	_, err := l.w.Write(out)
	return err
}

func (l *lineWriter) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if len(l.buf) == 0 {
		return nil
	}
	err := l.emit(l.buf, true)
	l.buf = nil
	return err
}
