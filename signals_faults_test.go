package main

// Issue 14, items 11, 16 and 17: every command acts on a signal within a
// second, ends its JSON stream with an exit event, and says what really
// happened when libvirt does not answer; off a terminal a step shows when it
// begins.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// signalDeadline is a generous bound for "within a second": vmup's own
// promise is a second; a loaded test machine gets slack.
const signalDeadline = 3 * time.Second

// TestASignalEndsEveryCommandWhileItWaits runs each command until it waits on
// something that does not answer (a virsh held by a gate, or a state.json
// that is a FIFO, as on a hung file system), sends a signal to its process
// group as a terminal does, and checks that it exits at once with the
// signal's code, its JSON stream ending with that exit event, and that the VM
// was not touched.
func TestASignalEndsEveryCommandWhileItWaits(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	for _, c := range []struct {
		args []string
		gate string // the virsh command that hangs; "" for the FIFO
		sig  syscall.Signal
		code int
	}{
		{[]string{"prune", "--json"}, "uri", syscall.SIGINT, 130},
		{[]string{"prune", "--json"}, "uri", syscall.SIGTERM, 143},
		{[]string{"status", "--json"}, "domstats", syscall.SIGINT, 130},
		{[]string{"status", "v1", "--json"}, "domstate", syscall.SIGHUP, 129},
		{[]string{"up", "v1", "--json"}, "uri", syscall.SIGINT, 130},
		{[]string{"up", "v1", "--json"}, "uri", syscall.SIGTERM, 143},
		{[]string{"reset", "v1", "--json"}, "uri", syscall.SIGINT, 130},
		{[]string{"provision", "v1", "--json"}, "uri", syscall.SIGINT, 130},
		{[]string{"down", "v1", "--json"}, "uri", syscall.SIGINT, 130},
		{[]string{"down", "v1", "--json"}, "domstate", syscall.SIGTERM, 143},
		{[]string{"destroy", "v1", "--json"}, "uri", syscall.SIGINT, 130},
		{[]string{"ssh-config", "w1", "--json"}, "", syscall.SIGINT, 130},
		{[]string{"status", "w1", "--json"}, "", syscall.SIGINT, 130},
		{[]string{"inventory", "w1"}, "", syscall.SIGINT, 130},
		{[]string{"logs", "w1"}, "", syscall.SIGINT, 130},
		{[]string{"logs", "w1", "-f"}, "", syscall.SIGINT, 0}, // Ctrl+C is how -f ends
		{[]string{"logs", "w1", "-f"}, "", syscall.SIGTERM, 143},
		{[]string{"ssh", "w1"}, "", syscall.SIGINT, 130},
	} {
		name := strings.Join(c.args, " ") + " " + c.sig.String()
		t.Run(name, func(t *testing.T) {
			var waiting func()
			if c.gate != "" {
				waiting = holdVirsh(t, r, c.gate)
			} else {
				makeFIFOJournal(t, r, "w1")
			}
			cmd := exec.Command(vmupBinary, c.args...)
			cmd.Env = r.env
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
			if c.gate != "" {
				waiting()
			} else {
				waitBlockedOnFIFO(t, cmd.Process.Pid)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			unix.Kill(-cmd.Process.Pid, c.sig)
			select {
			case <-done:
			case <-time.After(signalDeadline):
				unix.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
				t.Fatalf("vmup %s did not exit within %s of %v\nstderr: %s", name, signalDeadline, c.sig, stderr.String())
			}
			if got := cmd.ProcessState.ExitCode(); got != c.code {
				t.Errorf("vmup %s: exit %d (%v), want %d\nstderr: %s", name, got, cmd.ProcessState, c.code, stderr.String())
			}
			if !speaksJSON[c.args[0]] {
				return
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			var last jsonEvent
			json.Unmarshal([]byte(lines[len(lines)-1]), &last)
			if last.Event != "exit" || last.ExitCode == nil || *last.ExitCode != c.code {
				t.Errorf("vmup %s: the JSON stream does not end with an exit event of code %d; stdout %q", name, c.code, stdout.String())
			}
			if strings.Contains(stderr.String(), "context canceled") {
				t.Errorf("vmup %s: says %q", name, stderr.String())
			}
		})
	}
	w := loadWorld(filepath.Join(r.dir, "world.json"))
	if w.Domains["v1"] != "running" {
		t.Errorf("a command ended by a signal before it changed anything left domain v1 %q", w.Domains["v1"])
	}
	if j := binJournal(t, r); j.Phase != Running && j.Phase != Detached {
		t.Errorf("journal phase %s after the interrupted commands", j.Phase)
	}
}

// holdVirsh makes the fake `virsh CMD` wait until the test ends; waiting
// returns once it does.
func holdVirsh(t *testing.T, r *binaryRun, cmd string) (waiting func()) {
	path := filepath.Join(r.dir, "gate-virsh-"+cmd)
	os.Remove(path + ".waiting") // an earlier hold's
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	return func() {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(path + ".waiting"); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("virsh %s never ran", cmd)
			}
		}
	}
}

// makeFIFOJournal makes VM name's state.json a FIFO: reading it blocks until
// a writer comes, as a read on a hung file system does.
func makeFIFOJournal(t *testing.T, r *binaryRun, name string) {
	dir := filepath.Join(r.home, "vms", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "state.json"), 0o600); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
}

// waitBlockedOnFIFO polls until some thread of pid sleeps in a FIFO's open.
func waitBlockedOnFIFO(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "wchan"))
		for _, w := range tasks {
			if data, _ := os.ReadFile(w); strings.Contains(string(data), "wait_for_partner") || strings.Contains(string(data), "fifo") {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d never blocked on the FIFO", pid)
}

// hangingRunner is a libvirt that does not answer: virsh CMD runs until cancelled.
type hangingRunner struct {
	Runner
	cmd string
}

func (h hangingRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	if short := abbreviate(c.Args); short[0] == "virsh" && short[1] == h.cmd {
		<-ctx.Done()
		return Result{ExitCode: -1}, ctx.Err()
	}
	return h.Runner.Run(ctx, c)
}

// TestHungLibvirtSaysItDidNotAnswer: a virsh that never answers (a stuck
// libvirtd) is reported as such, with how to check libvirtd, and not as a
// missing virsh.
func TestHungLibvirtSaysItDidNotAnswer(t *testing.T) {
	defer func(d time.Duration) { libvirtTimeout = d }(libvirtTimeout)
	libvirtTimeout = 100 * time.Millisecond
	h := newHarness(t)
	env := h.env
	env.Runner = hangingRunner{Runner: h.fake, cmd: "uri"}
	env.Out = h.out()
	o, _, err := parseCommand("prune", nil)
	if err != nil {
		t.Fatal(err)
	}
	code := runPrune(env, o)
	got := h.stderr.String()
	t.Logf("prune: exit %d\n%s", code, got)
	if code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if !strings.Contains(got, "libvirt did not answer within 100ms") || strings.Contains(got, "deadline exceeded") {
		t.Errorf("the error does not say that libvirt did not answer:\n%s", got)
	}
	if strings.Contains(got, "install libvirt's client") || !strings.Contains(got, "version`") {
		t.Errorf("the hint is not how to check libvirtd:\n%s", got)
	}
}

// TestAStepShowsWhenItBeginsOffATerminal: in a CI log or behind `| tee`, a
// step that hangs is seen to have begun, and its end says how long it took.
func TestAStepShowsWhenItBeginsOffATerminal(t *testing.T) {
	var buf bytes.Buffer
	o := newOutput(&buf, nil, "v1")
	now := time.Unix(0, 0)
	o.now = func() time.Time { return now }
	o.Plan(6)
	for range 3 {
		o.Step("x")
		o.Done("")
	}
	buf.Reset()
	o.Step("Waiting for SSH")
	if got := buf.String(); got != "[4/6] Waiting for SSH …\n" {
		t.Errorf("when the step begins, stderr has %q", got)
	}
	now = now.Add(312 * time.Second)
	o.Done("")
	if got := buf.String(); !strings.HasSuffix(got, "[4/6] ✓ Waiting for SSH (5 min 12 s)\n") {
		t.Errorf("when the step ends, stderr has %q", got)
	}
}

// TestMissingVirshStillSaysInstallTheClient: the install hint stays, for a
// virsh that is not there, and for that alone.
func TestMissingVirshStillSaysInstallTheClient(t *testing.T) {
	t.Setenv("VMUP_VIRSH", filepath.Join(t.TempDir(), "virsh"))
	h := newHarness(t)
	env := h.env
	env.Runner = execRunner{}
	env.Out = h.out()
	o, _, err := parseCommand("prune", nil)
	if err != nil {
		t.Fatal(err)
	}
	code := runPrune(env, o)
	if got := h.stderr.String(); code != exitFailed || !strings.Contains(got, "install libvirt's client") {
		t.Errorf("exit %d, want 1 with the install hint:\n%s", code, got)
	}
}

// TestAStepOnATerminalKeepsItsSpinner: on a terminal the spinner shows the
// step at work, and no line of its own says it began.
func TestAStepOnATerminalKeepsItsSpinner(t *testing.T) {
	master, tty := openPTY(t)
	o := newOutput(tty, nil, "v1")
	if !o.tty {
		t.Fatal("the pty is not seen as a terminal")
	}
	o.Plan(1)
	o.Step("Waiting for SSH")
	o.Done("")
	tty.Close()
	var got bytes.Buffer
	got.ReadFrom(master)
	if s := got.String(); strings.Contains(s, "Waiting for SSH …") || !strings.Contains(s, "✓ Waiting for SSH") {
		t.Errorf("on a terminal: %q", s)
	}
}

// TestAbortGuardEndsAStuckCommandWithOnlyItsExitEvent: a command stuck where
// no context reaches still ends on a signal, with nothing more said after it
// but the exit event; a command that committed first is left to finish.
func TestAbortGuardEndsAStuckCommandWithOnlyItsExitEvent(t *testing.T) {
	var human, events bytes.Buffer
	out := newOutput(&lockedWriter{w: &human}, &lockedWriter{w: &events}, "v1")
	sigs := make(chan os.Signal, 1)
	g := newAbortGuard(sigs, out, abortExit)
	stuck := make(chan struct{})
	defer close(stuck)
	sigs <- syscall.SIGTERM
	start := time.Now()
	code := g.run(func() int {
		<-g.ctx.Done()
		out.Warn("said while unwinding")
		<-stuck
		return exitOK
	})
	finishWith(out, code)
	if code != exitSIGTERM || time.Since(start) > signalDeadline {
		t.Errorf("exit %d after %s, want %d within %s", code, time.Since(start), exitSIGTERM, signalDeadline)
	}
	if strings.Contains(human.String(), "unwinding") || strings.Count(events.String(), "\n") != 1 || !strings.Contains(events.String(), `"event":"exit"`) {
		t.Errorf("after the signal: stderr %q, events %q", human.String(), events.String())
	}

	g = newAbortGuard(sigs, out, abortExit)
	code = g.run(func() int {
		if !g.commit() {
			t.Error("commit failed without a signal")
		}
		sigs <- syscall.SIGINT // the command's own to handle now
		return exitOK
	})
	if code != exitOK || len(sigs) != 1 {
		t.Errorf("a committed command: exit %d, %d signals left for it, want 0 and 1", code, len(sigs))
	}
}
