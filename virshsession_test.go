package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeVirshSession is virsh 9's interactive mode as a pipe sees it: a
// welcome, each line echoed after the prompt (scrolled when long, as
// readline does on a dumb terminal), an empty line after each command's
// output, errors on stderr.
func fakeVirshSession(stdin io.Reader, stdout, stderr io.Writer) int {
	noErr := os.Getenv("FAKE_SESSION_NO_ECHO_ERR") != "" // a virsh whose echo has no --err
	if os.Getenv("FAKE_SESSION_NO_CONNECT") != "" {
		fmt.Fprint(stderr, "error: failed to connect to the hypervisor\n")
		return 1
	}
	out := bufio.NewWriter(stdout)
	fmt.Fprint(out, "Welcome to virsh, the virtualization interactive terminal.\n\nType:  'help' for help with commands\n       'quit' to quit\n\n")
	in := bufio.NewScanner(stdin)
	in.Buffer(nil, 1<<20)
	split := false // the next error line is cut by a message of the event thread
	for {
		fmt.Fprint(out, "virsh # ")
		out.Flush()
		if !in.Scan() {
			fmt.Fprint(out, "\n")
			out.Flush()
			return 0
		}
		line := in.Text()
		if len(line) > 70 {
			fmt.Fprintf(out, "\r<%s\n", line[len(line)-60:])
		} else {
			fmt.Fprintf(out, "%s\n", line)
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "echo" && f[1] == "--err" && noErr:
			fmt.Fprint(stderr, "error: command 'echo' doesn't support option --err\n")
		case len(f) == 3 && f[0] == "echo" && f[1] == "--err":
			if split {
				fmt.Fprint(stderr, "error: ")
				fmt.Fprint(stderr, "error: Disconnected from qemu:///fake due to keepalive timeout\n")
				fmt.Fprintf(stderr, "%s\n", f[2])
				split = false
				break
			}
			fmt.Fprintf(stderr, "error: %s\n", f[2])
		case len(f) == 2 && f[0] == "echo":
			fmt.Fprint(out, f[1])
		case len(f) == 1 && f[0] == "uri":
			fmt.Fprint(out, "qemu:///fake\n")
		case len(f) == 2 && (f[0] == "managedsave" || f[0] == "start"):
			if f[1] == "slow" {
				out.Flush()
				time.Sleep(300 * time.Millisecond)
			}
			fmt.Fprintf(out, "Domain '%s' %s\n", f[1], map[string]string{"managedsave": "state saved by libvirt", "start": "started"}[f[0]])
		case len(f) == 2 && f[0] == "domstate":
			switch name := f[1]; {
			case name == "sleepy":
				out.Flush()
				time.Sleep(time.Hour)
			case name == "slowish":
				out.Flush()
				time.Sleep(200 * time.Millisecond)
				fmt.Fprint(out, "running slowish\n")
			case name == "dying":
				out.Flush()
				return 3
			case name == "lost": // within the command: it may have run, and failed
				fmt.Fprint(stderr, "error: Disconnected from qemu:///fake due to end of file\nerror: failed to get domain 'lost'\n")
			case name == "reconnected": // before the command, which then ran
				fmt.Fprint(stderr, "error: Reconnected to the hypervisor\n")
				fmt.Fprint(out, "running reconnected\n")
			case name == "unconnected": // the command did not run
				fmt.Fprint(stderr, "error: Failed to reconnect to the hypervisor\nerror: no valid connection\n")
			case name == "split":
				split = true
				fmt.Fprint(out, "running split\n")
			case strings.HasPrefix(name, "no-"):
				fmt.Fprintf(stderr, "error: failed to get domain '%s'\nerror: Domain not found: no domain with matching name '%s'\n", name, name)
			default:
				fmt.Fprintf(out, "running %s\n", name)
			}
		default:
			fmt.Fprintf(stderr, "error: unknown command: '%s'\n", f[0])
		}
		fmt.Fprint(out, "\n")
	}
}

type countingRunner struct {
	mu   sync.Mutex
	args [][]string
}

func (c *countingRunner) Run(ctx context.Context, cmd Cmd) (Result, error) {
	c.mu.Lock()
	c.args = append(c.args, cmd.Args)
	c.mu.Unlock()
	return Result{Stdout: []byte("by process\n")}, nil
}

func (c *countingRunner) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.args)
}

func newFakeSessions(t *testing.T) (*sessionRunner, *countingRunner, string) {
	self, _ := os.Executable()
	prog := filepath.Join(t.TempDir(), "virsh-session")
	if err := os.Symlink(self, prog); err != nil {
		t.Fatal(err)
	}
	inner := &countingRunner{}
	r := newSessionRunner(inner, prog)
	t.Cleanup(r.Close)
	return r, inner, prog
}

func vcmd(prog string, args ...string) Cmd {
	return Cmd{Args: append([]string{prog, "-c", "qemu:///fake"}, args...)}
}

func TestVirshSessionAnswersAsAProcessWould(t *testing.T) {
	r, inner, prog := newFakeSessions(t)
	ctx := context.Background()
	res, err := r.Run(ctx, vcmd(prog, "uri"))
	if err != nil || string(res.Stdout) != "qemu:///fake\n\n" || len(res.Stderr) != 0 {
		t.Fatalf("uri: %q %q %v", res.Stdout, res.Stderr, err)
	}
	long := strings.Repeat("v", 500)
	res, err = r.Run(ctx, vcmd(prog, "domstate", long))
	if err != nil || string(res.Stdout) != "running "+long+"\n\n" {
		t.Fatalf("a line readline scrolls: %q %v", res.Stdout, err)
	}
	res, err = r.Run(ctx, vcmd(prog, "domstate", "no-vm"))
	var ee *ExitError
	if !errors.As(err, &ee) || ee.ExitCode != 1 || !errors.Is(classify(err), errNotFound) ||
		string(res.Stderr) != "error: failed to get domain 'no-vm'\nerror: Domain not found: no domain with matching name 'no-vm'\n" {
		t.Fatalf("a failure: %q %v", res.Stderr, err)
	}
	if ee.Args[0] != prog || ee.Args[4] != "no-vm" {
		t.Errorf("the failure names %v", ee.Args)
	}
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Run(ctx, vcmd(prog, "domstate", fmt.Sprint("vm", i)))
			if err != nil || string(res.Stdout) != fmt.Sprintf("running vm%d\n\n", i) {
				t.Errorf("vm%d at once: %q %v", i, res.Stdout, err)
			}
		}()
	}
	wg.Wait()
	if n := inner.count(); n != 0 {
		t.Errorf("%d commands ran as processes", n)
	}
}

// What virsh would parse other than argv does, what takes long, and what
// needs its own stdin, stdout, environment or process group runs alone.
func TestVirshSessionRunsOnlyWhatItRunsAsArgvWould(t *testing.T) {
	r, inner, prog := newFakeSessions(t)
	ctx := context.Background()
	cmds := []Cmd{
		vcmd(prog, "domstate", "a b"), vcmd(prog, "domstate", "a'b"), vcmd(prog, "domstate", `a"b`),
		vcmd(prog, "domstate", `a\b`), vcmd(prog, "domstate", "a;b"), vcmd(prog, "domstate", "#a"),
		vcmd(prog, "domstate", "a\nuri"), vcmd(prog, "domstate", ""), vcmd(prog, "domstate", "a$b"),
		vcmd(prog, "restore", "/x"), vcmd(prog, "console", "vm"), vcmd(prog, "save", "vm", "/x"),
		vcmd(prog, "qemu-agent-command", "vm", "{}"), vcmd(prog, "vol-upload", "--pool", "p", "v", "/f"),
		{Args: []string{"/usr/bin/virsh", "-c", "qemu:///fake", "uri"}},
		{Args: []string{prog, "uri"}},
	}
	withStdin := vcmd(prog, "uri")
	withStdin.Stdin = strings.NewReader("")
	withEnv := vcmd(prog, "uri")
	withEnv.Env = []string{"A=b"}
	withGroup := vcmd(prog, "uri")
	withGroup.Started = func(int) {}
	cmds = append(cmds, withStdin, withEnv, withGroup)
	for i, c := range cmds {
		if res, err := r.Run(ctx, c); err != nil || string(res.Stdout) != "by process\n" {
			t.Errorf("%q: %q %v", c.Args, res.Stdout, err)
		}
		if inner.count() != i+1 {
			t.Fatalf("%q was not run as a process", c.Args)
		}
	}
	if len(r.byURI) != 0 {
		t.Errorf("a session was started: %v", r.byURI)
	}
}

func TestVirshSessionCancelledEndsWithinASecondAndTheNextCommandHasANewOne(t *testing.T) {
	r, inner, prog := newFakeSessions(t)
	if _, err := r.Run(context.Background(), vcmd(prog, "uri")); err != nil {
		t.Fatal(err)
	}
	first := r.byURI["qemu:///fake"].s
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := r.Run(ctx, vcmd(prog, "domstate", "sleepy")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the cancel took %v", took)
	}
	if !first.dead.Load() || unix.Kill(-first.pgid, 0) == nil && !sessionGone(first.pgid) {
		t.Error("the cancelled session is still there")
	}
	res, err := r.Run(context.Background(), vcmd(prog, "domstate", "vm"))
	if err != nil || string(res.Stdout) != "running vm\n\n" || r.byURI["qemu:///fake"].s == first || inner.count() != 0 {
		t.Errorf("after a cancel: %q %v, %d processes", res.Stdout, err, inner.count())
	}
}

func sessionGone(pgid int) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if unix.Kill(-pgid, 0) != nil {
			return true
		}
	}
	return false
}

// A session that ends within a command fails that command (it may have
// run). What virsh says of its connection is no failure; a command it did
// not run for want of one runs alone; the session is replaced after it.
func TestVirshSessionEndedOrDisconnected(t *testing.T) {
	r, inner, prog := newFakeSessions(t)
	ctx := context.Background()
	if _, err := r.Run(ctx, vcmd(prog, "domstate", "dying")); err == nil {
		t.Fatal("a session that died within the command: no error")
	}
	if res, err := r.Run(ctx, vcmd(prog, "domstate", "vm")); err != nil || string(res.Stdout) != "running vm\n\n" {
		t.Fatalf("the next command: %q %v", res.Stdout, err)
	}
	for _, c := range []struct {
		name, stdout string
		failed       bool
		processes    int
	}{
		{"reconnected", "running reconnected\n\n", false, 0},
		{"split", "running split\n\n", false, 0},
		{"lost", "\n", true, 0},
		{"unconnected", "by process\n", false, 1},
	} {
		before := r.byURI["qemu:///fake"].s
		res, err := r.Run(ctx, vcmd(prog, "domstate", c.name))
		if string(res.Stdout) != c.stdout || (err != nil) != c.failed || inner.count() != c.processes {
			t.Errorf("%s: %q %v, %d processes", c.name, res.Stdout, err, inner.count())
		}
		if c.failed && !strings.Contains(err.Error(), "failed to get domain") {
			t.Errorf("%s: the failure says %v", c.name, err)
		}
		if !before.dead.Load() {
			t.Errorf("%s: the session is kept", c.name)
		}
		inner.args = nil
		r.Run(ctx, vcmd(prog, "uri"))
	}

	// An idle session is replaced (its connection may have gone meanwhile).
	r.Run(ctx, vcmd(prog, "uri"))
	old := r.byURI["qemu:///fake"].s
	defer func(d time.Duration) { sessionIdle = d }(sessionIdle)
	sessionIdle = time.Nanosecond
	time.Sleep(time.Millisecond)
	if _, err := r.Run(ctx, vcmd(prog, "uri")); err != nil || r.byURI["qemu:///fake"].s == old || !old.dead.Load() {
		t.Errorf("an idle session: %v, replaced %v", err, r.byURI["qemu:///fake"].s != old)
	}
}

// A command whose end never comes fails once the deadline passed, and ends
// its session.
func TestVirshSessionCommandWithoutEndFailsAtItsDeadline(t *testing.T) {
	r, _, prog := newFakeSessions(t)
	defer func(d time.Duration) { sessionDeadline = d }(sessionDeadline)
	sessionDeadline = 300 * time.Millisecond
	if _, err := r.Run(context.Background(), vcmd(prog, "domstate", "sleepy")); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("a hung command: %v", err)
	}
	if res, err := r.Run(context.Background(), vcmd(prog, "uri")); err != nil || string(res.Stdout) != "qemu:///fake\n\n" {
		t.Errorf("after it: %q %v", res.Stdout, err)
	}
}

func TestVirshSessionableVolumesAndFiles(t *testing.T) {
	r := newSessionRunner(nil, "virsh")
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"vol-create-as", "vmup", "v.qcow2", "4294967296", "--format", "qcow2", "--backing-vol", "/b", "--backing-vol-format", "qcow2"}, true},
		{[]string{"vol-create-as", "vmup", "t.qcow2", "4294967296", "--allocation", "0", "--format", "raw"}, true},
		{[]string{"vol-create-as", "vmup", "seed.iso", "55296", "--format", "raw"}, true},
		{[]string{"vol-create-as", "vmup", "base.qcow2", "536870912", "--format", "raw"}, false}, // every byte written
		{[]string{"define", "/dev/stdin"}, false},
		{[]string{"define", "/proc/self/fd/0"}, false},
		{[]string{"define", "/home/u/vms/a/domain.xml"}, true},
	} {
		if _, ok := r.sessionable(Cmd{Args: append([]string{"virsh", "-c", "qemu:///system"}, c.args...)}); ok != c.ok {
			t.Errorf("%v: sessionable %v, want %v", c.args, ok, c.ok)
		}
	}
}

func TestVirshSessionThatCannotConnectLeavesEveryCommandToAProcess(t *testing.T) {
	t.Setenv("FAKE_SESSION_NO_CONNECT", "1")
	r, inner, prog := newFakeSessions(t)
	for i := range 3 {
		if res, err := r.Run(context.Background(), vcmd(prog, "uri")); err != nil || string(res.Stdout) != "by process\n" || inner.count() != i+1 {
			t.Fatalf("without a session: %q %v", res.Stdout, err)
		}
	}
	if slot := r.byURI["qemu:///fake"]; slot == nil || slot.s != nil {
		t.Error("a session is tried again for each command")
	}
}

// A virsh whose echo has no --err is found out in about a second, not at
// the handshake's 3 s, and every command runs as a process of its own.
func TestVirshSessionWithoutEchoErrLeavesEveryCommandToAProcess(t *testing.T) {
	t.Setenv("FAKE_SESSION_NO_ECHO_ERR", "1")
	r, inner, prog := newFakeSessions(t)
	start := time.Now()
	if res, err := r.Run(context.Background(), vcmd(prog, "uri")); err != nil || string(res.Stdout) != "by process\n" {
		t.Fatalf("without echo --err: %q %v", res.Stdout, err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("found out after %v", took)
	}
	r.Run(context.Background(), vcmd(prog, "uri"))
	if inner.count() != 2 {
		t.Errorf("%d commands as processes, want 2", inner.count())
	}
}

func TestVirshSessionsClosedAreKilled(t *testing.T) {
	r, _, prog := newFakeSessions(t)
	r.Run(context.Background(), vcmd(prog, "uri"))
	s := r.byURI["qemu:///fake"].s
	r.Close()
	if !sessionGone(s.pgid) {
		t.Error("a closed session's virsh runs on")
	}
}

// A command that waits on QEMU runs in the session when it is idle, with no
// deadline but the caller's; meanwhile nothing waits for it: other commands,
// long or quick, run as processes of their own.
func TestVirshSessionLongCommandOnlyWhenIdle(t *testing.T) {
	r, inner, prog := newFakeSessions(t)
	defer func(d time.Duration) { sessionDeadline = d }(sessionDeadline)
	sessionDeadline = 100 * time.Millisecond
	ctx := context.Background()
	res, err := r.Run(ctx, vcmd(prog, "managedsave", "slow"))
	if err != nil || string(res.Stdout) != "Domain 'slow' state saved by libvirt\n\n" || inner.count() != 0 {
		t.Fatalf("a save longer than a quick command's deadline: %q %v, %d processes", res.Stdout, err, inner.count())
	}
	s := r.byURI["qemu:///fake"].s
	done := make(chan error, 1)
	go func() {
		res, err := r.Run(ctx, vcmd(prog, "start", "slow"))
		if err == nil && string(res.Stdout) != "Domain 'slow' started\n\n" {
			err = fmt.Errorf("start slow: %q", res.Stdout)
		}
		done <- err
	}()
	waitFor(t, 5*time.Second, "the long command in the session", s.long.Load)
	for _, args := range [][]string{{"domstate", "vm"}, {"managedsave", "vm"}} {
		if res, err := r.Run(ctx, vcmd(prog, args...)); err != nil || string(res.Stdout) != "by process\n" {
			t.Errorf("%v while the session runs a long command: %q %v", args, res.Stdout, err)
		}
	}
	if err := <-done; err != nil || inner.count() != 2 {
		t.Errorf("the long command: %v; %d processes, want 2", err, inner.count())
	}
	if res, err := r.Run(ctx, vcmd(prog, "domstate", "vm")); err != nil || string(res.Stdout) != "running vm\n\n" || s.dead.Load() {
		t.Errorf("after it, the same session: %q %v", res.Stdout, err)
	}

	// A quick command running: the long one waits for it, in the session.
	go r.Run(ctx, vcmd(prog, "domstate", "slowish"))
	waitFor(t, 5*time.Second, "the quick command in the session", func() bool { return len(s.sem) == 1 })
	if res, err := r.Run(ctx, vcmd(prog, "managedsave", "vm")); err != nil || string(res.Stdout) != "Domain 'vm' state saved by libvirt\n\n" {
		t.Errorf("a save while a quick command ran: %q %v", res.Stdout, err)
	}

	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := r.Run(cctx, vcmd(prog, "managedsave", "slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a cancelled save: %v", err)
	}
	if took := time.Since(start); took > 250*time.Millisecond || !s.dead.Load() {
		t.Errorf("a cancelled save ended after %v; session killed: %v", took, s.dead.Load())
	}
}
