// One interactive virsh per libvirt URI runs vmup's quick virsh commands: a
// virsh process costs ≈ 35 ms to start and connect here, a command in a
// session a few ms, and a destroy or a clone asks a dozen questions.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sessionCommands are the virsh commands that take milliseconds. vol-create-as
// only for a volume that is not written in full (see sessionable).
var sessionCommands = map[string]bool{
	"uri": true, "domstate": true, "domuuid": true, "dominfo": true, "dumpxml": true, "metadata": true, "define": true,
	"undefine": true, "domstats": true, "domcapabilities": true, "list": true,
	"vol-dumpxml": true, "vol-path": true, "vol-list": true, "vol-info": true, "vol-delete": true,
	"vol-create-as": true, "vol-resize": true, "pool-info": true,
	"snapshot-list": true, "snapshot-dumpxml": true,
	"save-image-dumpxml": true, "managedsave-dumpxml": true, "managedsave-remove": true, "managedsave-define": true,
}

// sessionLongCommands wait on QEMU or a guest for seconds. One runs in the
// session unless another holds it, saving a virsh's own ≈ 35 ms (a twentieth
// of a save here); it waits for the quick command running, and what comes
// after it runs as a process of its own rather than wait. No deadline but
// the caller's. Whatever reads a stream or virsh's stdin never runs here.
var sessionLongCommands = map[string]bool{
	"start": true, "managedsave": true, "destroy": true, "shutdown": true, "snapshot-revert": true,
	"suspend": true, "resume": true,
}

// sessionArgRE: an argument a session passes exactly as argv would. virsh
// parses a session's line itself (quotes, backslashes, `;`, `#`, spaces):
// an argument with any such character runs as a process of its own.
var sessionArgRE = lazyRE(`^[A-Za-z0-9._/:=@,+-]+$`)

var (
	sessionIdle      = 10 * time.Second // an older session is replaced: its connection may be gone
	sessionHandshake = 3 * time.Second  // else one process per command, as before
	// sessionDeadline ends a command whose end never came: the session is
	// killed, and the command fails as a hung virsh process would not.
	sessionDeadline = 2 * time.Minute
	stderrGrace     = time.Second // for stderr's end once stdout's came
)

const (
	sessionMaxOutput = 64 << 20
	smallVolume      = 64 << 20 // vol-create-as writes a raw volume's every byte
)

// sessionRunner sends prog's quick commands to a session of their URI and
// everything else, or everything once a session of that URI failed to
// start, to inner.
type sessionRunner struct {
	inner Runner
	prog  string
	// cacheDir is where the sessions' virsh keeps its history (XDG_CACHE_HOME),
	// not the user's own; "" leaves it.
	cacheDir string
	mu       sync.Mutex
	byURI    map[string]*sessionSlot
	closed   bool
}

// sessionSlot is a URI's session: being started until ready is closed, then
// s, or nil if none could be had (off: none is tried again).
type sessionSlot struct {
	ready chan struct{}
	s     *virshSession
}

// virshSessions is the vmup command's; main ends them before it exits.
var virshSessions = newSessionRunner(execRunner{}, "virsh")

// mainRunner is the runner of a vmup command: virsh's sessions, unless
// VMUP_VIRSH names another program (a wrapper may not read commands on stdin).
func mainRunner(home string) Runner {
	if os.Getenv("VMUP_VIRSH") != "" {
		return execRunner{}
	}
	virshSessions.cacheDir = filepath.Join(home, "cache", "virsh")
	return virshSessions
}

func newSessionRunner(inner Runner, prog string) *sessionRunner {
	return &sessionRunner{inner: inner, prog: prog, byURI: map[string]*sessionSlot{}}
}

// sessionable is the URI of a command a session can run.
func (r *sessionRunner) sessionable(c Cmd) (string, bool) {
	a := c.Args
	if len(a) < 4 || a[0] != r.prog || a[1] != "-c" || !sessionCommands[a[3]] && !sessionLongCommands[a[3]] ||
		c.Env != nil || c.Stdin != nil || c.Stdout != nil || c.Stderr != nil || c.Started != nil || c.Grace != 0 {
		return "", false
	}
	for _, arg := range a[2:] {
		// A file virsh would read from the session's own stdin, or never end.
		if !sessionArgRE.MatchString(arg) || strings.HasPrefix(arg, "/dev/") || strings.HasPrefix(arg, "/proc/") {
			return "", false
		}
	}
	if a[3] == "vol-create-as" && len(a) > 6 && !slices.Contains(a, "--backing-vol") && !slices.Contains(a, "--allocation") {
		if n, err := strconv.ParseInt(a[6], 10, 64); err != nil || n > smallVolume {
			return "", false
		}
	}
	return a[2], true
}

func (r *sessionRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	uri, ok := r.sessionable(c)
	// A second try, in a new session, when the first one ran nothing.
	for try := 0; ok && try < 2; try++ {
		s, err := r.session(ctx, uri)
		if err != nil {
			return Result{ExitCode: -1}, err
		}
		if s == nil {
			break
		}
		res, err, notRun := s.run(ctx, c.Args)
		if errors.Is(err, errSessionBusy) {
			break
		}
		if !notRun {
			return res, err
		}
		r.forget(s)
	}
	return r.inner.Run(ctx, c)
}

// session is uri's session, started if need be (by one caller; the others
// wait for it, or for their ctx); nil if none can be had.
func (r *sessionRunner) session(ctx context.Context, uri string) (*virshSession, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, nil
	}
	slot := r.byURI[uri]
	starter := slot == nil
	if starter {
		slot = &sessionSlot{ready: make(chan struct{})}
		r.byURI[uri] = slot
	}
	r.mu.Unlock()
	if starter {
		s, err := startSession(ctx, r.prog, uri, r.sessionEnv(uri))
		r.mu.Lock()
		switch {
		case (ctx.Err() != nil || r.closed) && s != nil:
			s.kill()
		case err == nil:
			slot.s = s
		}
		if ctx.Err() != nil {
			delete(r.byURI, uri) // not the session's fault: the next caller tries
		}
		r.mu.Unlock()
		close(slot.ready)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return slot.s, nil
	}
	select {
	case <-slot.ready:
		return slot.s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// sessionEnv is what a session's virsh gets on top of vmup's environment:
// a plain line echo as wide as any line (no terminal's escapes, no user's
// inputrc), and its history where vmup keeps its cache, not the user's
// (qemu:///session's daemon, which the client may start, keeps the user's).
func (r *sessionRunner) sessionEnv(uri string) []string {
	env := []string{"TERM=dumb", "INPUTRC=/dev/null", "COLUMNS=100000"}
	if r.cacheDir != "" && !strings.Contains(uri, "/session") && os.MkdirAll(r.cacheDir, 0o700) == nil {
		env = append(env, "XDG_CACHE_HOME="+r.cacheDir)
	}
	return env
}

// forget drops s (killed) as its URI's session; the next command starts another.
func (r *sessionRunner) forget(s *virshSession) {
	s.kill()
	r.mu.Lock()
	if slot := r.byURI[s.uri]; slot != nil && slot.s == s {
		delete(r.byURI, s.uri)
	}
	r.mu.Unlock()
}

// Close ends every session: killed, so that virsh writes no history file.
// Commands after it run as processes of their own.
func (r *sessionRunner) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, slot := range r.byURI {
		if slot.s != nil {
			slot.s.kill()
		}
	}
}

// virshSession is one `virsh -c URI` reading commands on its stdin. After
// each command vmup sends `echo --err TAG` and `echo TAG`: what comes before
// them is the command's output, and any `error:` line on stderr its failure.
type virshSession struct {
	uri string
	sem chan struct{} // one command at a time
	// long: one of sessionLongCommands holds the session (runs, or waits
	// for the quick command running).
	long   atomic.Bool
	pgid   int
	stdin  io.WriteCloser
	out    *bufio.Reader
	errOut *bufio.Reader
	prompt []byte // virsh's, read back at the start: readline echoes each line after it
	nonce  string
	n      int
	last   time.Time
	dead   atomic.Bool
	// exited: virsh is gone (a zombie still, so its pid is no other's yet);
	// its group is signalled only before, under procMu.
	procMu sync.Mutex
	exited bool
}

func startSession(ctx context.Context, prog, uri string, env []string) (*virshSession, error) {
	cmd := exec.Command(prog, "-c", uri) // not -q: it drops the tables' headers
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	s := &virshSession{uri: uri, sem: make(chan struct{}, 1), stdin: stdin,
		out: bufio.NewReader(stdout), errOut: bufio.NewReader(stderr), nonce: "vmup" + randomHex(8), last: time.Now()}
	err = startHeld(cmd, func() {
		var info unix.Siginfo
		unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		s.procMu.Lock()
		s.exited = true
		s.procMu.Unlock()
		cmd.Wait()
	})
	if err != nil {
		return nil, err
	}
	s.pgid = cmd.Process.Pid
	hctx, cancel := context.WithTimeout(ctx, sessionHandshake)
	defer cancel()
	if err := s.handshake(hctx); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// handshake reads virsh's prompt back from two echoes, and checks that the
// connection was made (virsh says nothing on stderr).
func (s *virshSession) handshake(ctx context.Context) error {
	tag := s.nonce + "0"
	out, errOut, err := s.exchange(ctx, "", tag, []byte("echo "+tag+"\n"+tag+"\n"), sessionDeadline)
	if err != nil {
		return err
	}
	// After virsh's welcome, each line is echoed after the prompt.
	i := bytes.Index(out, []byte("echo --err "+tag+"\n"))
	j := bytes.LastIndexByte(out[:max(i, 0)], '\n') + 1
	if i < 0 || i == j || i-j > 64 {
		return fmt.Errorf("virsh session: no prompt in %q", out)
	}
	s.prompt = bytes.Clone(out[j:i])
	if !bytes.Equal(out[j:], s.suffix(tag)) {
		return fmt.Errorf("virsh session: unexpected echo %q", out)
	}
	if len(errOut) > 0 {
		return fmt.Errorf("virsh session: %s", bytes.TrimSpace(errOut))
	}
	return nil
}

// suffix is what stdout ends with once both echoes of tag ran (virsh ends
// each command's output with an empty line, as a process of its own does).
func (s *virshSession) suffix(tag string) []byte {
	p := string(s.prompt)
	return []byte(p + "echo --err " + tag + "\n\n" + p + "echo " + tag + "\n" + tag + "\n")
}

var errSessionNotSent = errors.New("virsh session gone before the command was sent")

// exchange sends line (if any) and the two echoes of tag, and reads stdout
// through outEnd and stderr through the tag's line, failing after limit (0:
// none). Any failure to read both ends kills the session: what it would
// print next is not known.
func (s *virshSession) exchange(ctx context.Context, line, tag string, outEnd []byte, limit time.Duration) (out, errOut []byte, err error) {
	if line != "" {
		line += "\n"
	}
	if _, err := io.WriteString(s.stdin, line+"echo --err "+tag+"\necho "+tag+"\n"); err != nil {
		return nil, nil, errSessionNotSent
	}
	// On the tag alone: virsh writes "error: " and the rest apart, and a
	// message of its event thread may come in between.
	errEnd := []byte(tag + "\n")
	type read struct {
		b   []byte
		err error
	}
	outc, errc := make(chan read, 1), make(chan read, 1)
	go func() { b, err := readThrough(s.out, outEnd); outc <- read{b, err} }()
	go func() { b, err := readThrough(s.errOut, errEnd); errc <- read{b, err} }()
	if limit == 0 {
		limit = math.MaxInt64
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	var o, e *read
	for o == nil || e == nil {
		select {
		case r := <-outc:
			o = &r
			// `echo --err` ran before `echo`: its line is in the pipe already,
			// unless this virsh has no --err (older than libvirt's echo of it).
			deadline.Reset(stderrGrace)
		case r := <-errc:
			e = &r
		case <-ctx.Done():
			s.kill()
			return nil, nil, ctx.Err()
		case <-deadline.C:
			s.kill()
			if o != nil {
				return nil, nil, errors.New("virsh session: stderr never ended (its echo has no --err)")
			}
			return nil, nil, fmt.Errorf("virsh session: no answer within %v", limit)
		}
		for _, r := range []*read{o, e} {
			if r != nil && r.err != nil {
				s.kill()
				return nil, nil, fmt.Errorf("virsh session ended: %w", r.err)
			}
		}
	}
	errOut = e.b[:len(e.b)-len(errEnd)]
	if i := bytes.LastIndex(errOut, []byte("error: ")); i >= 0 && i == len(errOut)-len("error: ") {
		errOut = errOut[:i]
	}
	return o.b, errOut, nil
}

// readThrough reads r up to and including end.
func readThrough(r *bufio.Reader, end []byte) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice(end[len(end)-1])
		buf = append(buf, chunk...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
		case err != nil:
			return buf, err
		case bytes.HasSuffix(buf, end):
			return buf, nil
		}
		if len(buf) > sessionMaxOutput {
			return buf, errors.New("output too long")
		}
	}
}

// connectionRE: what virsh says of its connection, at any moment (from its
// event thread) or when it reconnects before a command. Such a line is no
// failure of the command; a session that says one is replaced after it.
var connectionRE = lazyRE(`(?im)^(error: )+(disconnected from .*|reconnected to the hypervisor)\n?`)

// notConnectedRE: virsh did not reach libvirt for the command, so it ran
// nothing: it can run again elsewhere.
var notConnectedRE = lazyRE(`(?i)failed to reconnect to the hypervisor|no valid connection`)

// errSessionBusy: a long command holds the session.
// The command runs as a process of its own; the session stays.
var errSessionBusy = errors.New("virsh session busy")

// run runs one command (argv, with prog -c URI first). notRun: the session
// is gone or was not connected, and ran nothing; run it elsewhere.
func (s *virshSession) run(ctx context.Context, argv []string) (res Result, err error, notRun bool) {
	// A long command claims the session, then waits for the quick one
	// running, if any; nothing new waits behind it.
	long := sessionLongCommands[argv[3]]
	if long && !s.long.CompareAndSwap(false, true) || !long && s.long.Load() {
		return Result{}, errSessionBusy, false
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		if long {
			s.long.Store(false)
		}
		return Result{ExitCode: -1}, ctx.Err(), false
	}
	defer func() {
		if long {
			s.long.Store(false)
		}
		<-s.sem
	}()
	if s.dead.Load() || s.n > 0 && time.Since(s.last) > sessionIdle {
		return Result{}, nil, true
	}
	s.n++
	tag := s.nonce + strconv.Itoa(s.n)
	end := s.suffix(tag)
	limit := sessionDeadline
	if long {
		limit = 0
	}
	out, errOut, err := s.exchange(ctx, strings.Join(argv[3:], " "), tag, end, limit)
	s.last = time.Now()
	switch {
	case errors.Is(err, errSessionNotSent):
		return Result{}, nil, true
	case ctx.Err() != nil:
		return Result{ExitCode: -1}, ctx.Err(), false
	case err != nil:
		return Result{ExitCode: -1}, &ExitError{Args: argv, ExitCode: -1, Stderr: err.Error()}, false
	}
	// out: the prompt and the command's line as readline echoed it (one
	// line), its output, then the echoes.
	nl := bytes.IndexByte(out, '\n')
	if !bytes.HasPrefix(out, s.prompt) || nl < 0 || nl+1 > len(out)-len(end) {
		s.kill()
		return Result{ExitCode: -1}, &ExitError{Args: argv, ExitCode: -1, Stderr: fmt.Sprintf("virsh session: unexpected output %q", out)}, false
	}
	res = Result{Stdout: out[nl+1 : len(out)-len(end)], Stderr: errOut}
	if notConnectedRE.Match(errOut) {
		s.kill()
		return Result{}, nil, true
	}
	if connectionRE.Match(errOut) {
		s.kill() // the next command gets a session of its own
		errOut = connectionRE.ReplaceAll(errOut, nil)
		res.Stderr = errOut
	}
	if !failed(errOut) {
		return res, nil, false
	}
	res.ExitCode = 1
	return res, &ExitError{Args: argv, ExitCode: 1, Stderr: string(errOut)}, false
}

// failed: virsh reported an error (every one begins a line with "error: ").
func failed(stderr []byte) bool {
	return bytes.HasPrefix(stderr, []byte("error: ")) || bytes.Contains(stderr, []byte("\nerror: "))
}

// kill ends the session: its virsh's group is killed unless virsh exited.
func (s *virshSession) kill() {
	if s.dead.Swap(true) {
		return
	}
	s.procMu.Lock()
	if !s.exited && s.pgid > 0 {
		unix.Kill(-s.pgid, unix.SIGKILL)
	}
	s.procMu.Unlock()
	s.stdin.Close()
}
