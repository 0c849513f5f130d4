package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// localGuest is a Runner whose ssh commands run here: the remote command
// (the words after "--", joined as ssh joins them) runs with a login shell
// in a temp dir that is the guest's home.
type localGuest struct {
	home  string
	login string   // the login shell
	env   []string // HOME, and PATH with the runner's sh first when a test picks it
	rc    string   // printed before each command, as a login's rc file may
	calls atomic.Int64

	mu    sync.Mutex
	fault func(remote string) guestFault
}

type guestFault int

const (
	faultNone guestFault = iota
	faultFail            // ssh fails as on a dropped connection: exit 255
	faultHang            // ssh hangs (a paused guest) until its ctx ends
)

// newLocalGuest makes a guest whose `sh` is sh (a program's name, "" for
// this host's /bin/sh) and whose login shell is login ("" for /bin/sh).
func newLocalGuest(t *testing.T, sh, login string) (*localGuest, *SSH) {
	t.Helper()
	g := &localGuest{home: t.TempDir(), login: "/bin/sh"}
	// Registered after TempDir: it runs first, so nothing is left running
	// in (or writing to) the dir when it is removed.
	t.Cleanup(func() { killUnder(g.home); killUnder(g.home) })
	path := os.Getenv("PATH")
	if sh != "" {
		prog, err := exec.LookPath(sh)
		if err != nil {
			t.Skipf("no %s here: %v", sh, err)
		}
		bin := t.TempDir()
		if err := os.Symlink(prog, filepath.Join(bin, "sh")); err != nil {
			t.Fatal(err)
		}
		path = bin + ":" + path
	}
	if login != "" {
		prog, err := exec.LookPath(login)
		if err != nil {
			t.Skipf("no %s here: %v", login, err)
		}
		g.login = prog
	}
	g.env = append(os.Environ(), "HOME="+g.home, "PATH="+path)
	return g, g.ssh(t)
}

// ssh is one vmup's SSH to the guest.
func (g *localGuest) ssh(t *testing.T) *SSH {
	return newSSH(g, "vm", "vmup", pathsFor(t.TempDir(), "vm"), Endpoint{"127.0.0.1", 2222})
}

func (g *localGuest) setFault(f func(remote string) guestFault) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fault = f
}

func (g *localGuest) Run(ctx context.Context, c Cmd) (Result, error) {
	g.calls.Add(1)
	i := slices.Index(c.Args, "--")
	if i < 0 {
		return Result{ExitCode: -1}, fmt.Errorf("fake guest: no remote command in %q", c.Args)
	}
	remote := strings.Join(c.Args[i+1:], " ")
	g.mu.Lock()
	fault := faultNone
	if g.fault != nil {
		fault = g.fault(remote)
	}
	g.mu.Unlock()
	switch fault {
	case faultFail:
		return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255,
			Stderr: "ssh: connect to host 127.0.0.1 port 2222: Connection refused\n"}
	case faultHang:
		<-ctx.Done()
		return Result{ExitCode: -1}, ctx.Err()
	}
	if g.rc != "" {
		remote = "printf %s " + singleQuote(g.rc) + "; " + remote
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(g.login, "-c", remote)
	cmd.Dir, cmd.Env, cmd.Stdin = g.home, g.env, c.Stdin
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return Result{ExitCode: -1}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		<-done
		return Result{ExitCode: -1}, ctx.Err()
	}
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: cmd.ProcessState.ExitCode()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return res, &ExitError{Args: c.Args, ExitCode: res.ExitCode, Stderr: stderr.String()}
	}
	return res, err
}

// procStat is a process's state letter and process group, from /proc.
func procStat(pid int) (state byte, pgrp int, ok bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndex(data, []byte(") "))
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(data[i+2:]))
	if len(f) < 3 {
		return 0, 0, false
	}
	pg, err := strconv.Atoi(f[2])
	return f[0][0], pg, err == nil
}

func procPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// liveInGroup lists the processes of group pg that are not zombies.
func liveInGroup(pg int) []int {
	var live []int
	for _, pid := range procPIDs() {
		if st, g, ok := procStat(pid); ok && g == pg && st != 'Z' && st != 'X' {
			live = append(live, pid)
		}
	}
	return live
}

// killUnder kills every process working in dir or below it: what a test's
// guest started (the runner works in its run dir, a workload in the home).
func killUnder(dir string) {
	for _, pid := range procPIDs() {
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// pollUntil polls the run until cond holds, and returns that state and the
// whole log read along the way.
func pollUntil(t *testing.T, s *SSH, runID string, timeout time.Duration, what string, cond func(runnerState) bool) (runnerState, string) {
	t.Helper()
	var log []byte
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, chunk, err := pollRunner(ctx, s, runID, int64(len(log)))
		cancel()
		if err != nil {
			t.Fatalf("pollRunner: %v", err)
		}
		log = append(log, chunk...)
		if cond(st) && !st.LogMore {
			return st, string(log)
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: no %s within %v; last state %+v, log %q", runID, what, timeout, st, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func exited(st runnerState) bool  { return st.Exited }
func started(st runnerState) bool { return st.Started }

func mustStart(t *testing.T, s *SSH, runID string, stopTimeout time.Duration, argv ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := startRunner(ctx, s, runID, argv, stopTimeout); err != nil {
		t.Fatalf("startRunner: %v", err)
	}
}

// runnerShells runs f for the guest's sh being this host's /bin/sh (with
// /bin/sh the login shell), and dash and busybox sh explicitly (with bash
// the login shell, as in cloud images), each skipped where missing.
func runnerShells(t *testing.T, f func(t *testing.T, g *localGuest, s *SSH)) {
	for _, c := range []struct{ name, sh, login string }{
		{"binsh", "", ""}, {"dash", "dash", "bash"}, {"busybox", "busybox", "bash"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			g, s := newLocalGuest(t, c.sh, c.login)
			f(t, g, s)
		})
	}
}

// A workload's exit code and both outputs reach vmup; the ssh command that
// started the runner returned while the workload still ran, in a process
// group of its own, in the home dir, with stdin /dev/null.
func TestRunnerWorkloadExitCodeAndLog(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	before := time.Now().Unix()
	mustStart(t, s, id, 10*time.Second, "sh", "-c", `while [ ! -e go ]; do sleep 0.05; done
pwd; if read x; then echo stdin; else echo no-stdin; fi
cut -d" " -f5 /proc/$$/stat >pgid; echo out; echo err >&2; exit 7`)

	st, _ := pollUntil(t, s, id, 10*time.Second, "start", started)
	if st.Exited || st.StopConfirmed {
		t.Fatalf("the run ended before its go: %+v", st)
	}
	dir := filepath.Join(g.home, runDir(id))
	data, err := os.ReadFile(filepath.Join(dir, "runner.pid"))
	if err != nil {
		t.Fatal(err)
	}
	runner, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	_, runnerGroup, ok := procStat(runner)
	if !ok || dead(runner) {
		t.Fatalf("the runner %d does not outlive the ssh command that started it", runner)
	}
	if runnerGroup == st.PGID {
		t.Errorf("the workload runs in the runner's process group %d", runnerGroup)
	}
	fields := append(strings.Fields(readFile(t, filepath.Join(dir, "started"))), "", "", "")
	if epoch, _ := strconv.ParseInt(fields[1], 10, 64); len(fields) != 6 || fields[0] != id ||
		epoch < before || epoch > time.Now().Unix() || fields[2] != strconv.Itoa(st.PGID) {
		t.Errorf("started = %q, want %q EPOCH %d", fields, id, st.PGID)
	}

	if err := os.WriteFile(filepath.Join(g.home, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st, log := pollUntil(t, s, id, 10*time.Second, "exit", exited)
	want := runnerState{Started: true, PGID: st.PGID, Exited: true, ExitCode: 7}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if want := g.home + "\nno-stdin\nout\nerr\n"; log != want {
		t.Errorf("log = %q, want %q", log, want)
	}
	if pg := strings.TrimSpace(readFile(t, filepath.Join(g.home, "pgid"))); pg != strconv.Itoa(st.PGID) {
		t.Errorf("the workload ran in group %s, started says %d", pg, st.PGID)
	}
	if got := readFile(t, filepath.Join(dir, "exit")); got != id+" 7\n" {
		t.Errorf("exit = %q", got)
	}
	for name, mode := range map[string]fs.FileMode{".": 0o700, "output.log": 0o600, "exit": 0o600, "runner.sh": 0o600} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v (%v), want %v", name, fi.Mode().Perm(), err, mode)
		}
	}
}

// Every word reaches the workload as it was: nothing in it is parsed by a
// shell on the way.
func TestRunnerArgvVerbatim(t *testing.T) {
	runnerShells(t, func(t *testing.T, g *localGuest, s *SSH) {
		words := []string{"-n", "--", "a b", "  lead and trail  ", `it's`, `'`, `"double"`, `back\slash\`,
			"$(touch pwned)", "`touch pwned`", "; touch pwned", "&& touch pwned", "a\nb", "*", "$HOME", "",
			"tab\there", "%s%d", "ünï", "-"}
		id := newRunID(time.Now())
		mustStart(t, s, id, 5*time.Second, append([]string{"sh", "-c", `printf '[%s]\n' "$@"`, "arg0"}, words...)...)
		st, log := pollUntil(t, s, id, 10*time.Second, "exit", exited)
		if st.ExitCode != 0 {
			t.Errorf("exit code %d, log %q", st.ExitCode, log)
		}
		var want strings.Builder
		for _, w := range words {
			want.WriteString("[" + w + "]\n")
		}
		if log != want.String() {
			t.Errorf("the workload got\n%s\nwant\n%s", log, want.String())
		}
		filepath.WalkDir(g.home, func(path string, d fs.DirEntry, err error) error {
			if d != nil && d.Name() == "pwned" {
				t.Errorf("a word ran as a command: %s", path)
			}
			return nil
		})
	})
}

// A stop sends SIGINT to the workload's group: a workload that traps it
// ends as it chooses, and the runner confirms with the run id and its code.
func TestRunnerStopRunsINTTrap(t *testing.T) {
	runnerShells(t, func(t *testing.T, g *localGuest, s *SSH) {
		id := newRunID(time.Now())
		mustStart(t, s, id, 10*time.Second, "sh", "-c",
			`trap "echo trapped > trapped; exit 3" INT; echo ready > ready; sleep 100`)
		waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
		st, _ := pollUntil(t, s, id, 10*time.Second, "start", started)

		begin := time.Now()
		code, err := stopRunner(context.Background(), s, id, begin.Add(10*time.Second), 100*time.Millisecond)
		if err != nil || code != 3 {
			t.Fatalf("stopRunner = %d, %v; want 3", code, err)
		}
		// SIGTERM would come at 5 s: SIGINT alone did it.
		if took := time.Since(begin); took > 4*time.Second {
			t.Errorf("the stop took %v", took)
		}
		if !fileExists(filepath.Join(g.home, "trapped")) {
			t.Error("the workload's INT trap did not run")
		}
		dir := filepath.Join(g.home, runDir(id))
		if got := readFile(t, filepath.Join(dir, "confirmed")); got != id+" 3\n" {
			t.Errorf("confirmed = %q", got)
		}
		if live := liveInGroup(st.PGID); len(live) > 0 {
			t.Errorf("processes %v of the workload's group %d live on", live, st.PGID)
		}
		st, _ = pollUntil(t, s, id, time.Second, "state", exited)
		want := runnerState{Started: true, PGID: st.PGID, Exited: true, ExitCode: 3, StopConfirmed: true, ConfirmCode: 3}
		if diff := cmp.Diff(want, st); diff != "" {
			t.Errorf("state (-want +got):\n%s", diff)
		}
	})
}

// A workload that ignores SIGINT and SIGTERM, and a child it started, are
// killed at nine tenths of the stop timeout.
func TestRunnerStopEscalatesToKill(t *testing.T) {
	runnerShells(t, testRunnerStopEscalatesToKill)
}

func testRunnerStopEscalatesToKill(t *testing.T, g *localGuest, s *SSH) {
	id := newRunID(time.Now())
	mustStart(t, s, id, 2*time.Second, "sh", "-c", `trap "" INT TERM; sleep 1000 & echo $! > child; echo ready > ready; sleep 1000`)
	waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
	st, _ := pollUntil(t, s, id, 10*time.Second, "start", started)
	child, _ := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(g.home, "child"))))

	begin := time.Now()
	code, err := stopRunner(context.Background(), s, id, begin.Add(10*time.Second), 100*time.Millisecond)
	took := time.Since(begin)
	if err != nil || code != 128+9 {
		t.Fatalf("stopRunner = %d, %v; want %d", code, err, 128+9)
	}
	if took < 1700*time.Millisecond || took > 5*time.Second {
		t.Errorf("confirmed %v after the stop request; SIGKILL is due at 1.8 s", took)
	}
	if !dead(child) {
		t.Errorf("the workload's child %d lives on", child)
	}
	if live := liveInGroup(st.PGID); len(live) > 0 {
		t.Errorf("processes %v of the workload's group %d live on", live, st.PGID)
	}
}

// A workload that ignores SIGINT ends by SIGTERM at half the stop timeout.
func TestRunnerStopEscalatesToTerm(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	mustStart(t, s, id, 2*time.Second, "sh", "-c", `trap "" INT; echo ready > ready; sleep 1000`)
	waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
	pollUntil(t, s, id, 10*time.Second, "start", started)

	begin := time.Now()
	code, err := stopRunner(context.Background(), s, id, begin.Add(10*time.Second), 50*time.Millisecond)
	took := time.Since(begin)
	if err != nil || code != 128+15 {
		t.Fatalf("stopRunner = %d, %v; want %d", code, err, 128+15)
	}
	// 143 says SIGTERM ended it, not SIGKILL; SIGINT would have been at once.
	if took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("confirmed %v after the stop request; SIGTERM is due at 1 s", took)
	}
}

// What a workload that ended by itself left running in its group is
// stopped before exit is written: once exit is seen, nothing writes the log.
func TestRunnerStopsLeftoversBeforeExit(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	// A background job of sh ignores SIGINT: SIGTERM ends it, at 1 s.
	mustStart(t, s, id, 2*time.Second, "sh", "-c", `(trap "echo late" TERM; sleep 1000 & wait) & echo $! > child; echo bye`)
	st, log := pollUntil(t, s, id, 10*time.Second, "exit", exited)
	child, _ := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(g.home, "child"))))
	if !dead(child) {
		t.Errorf("exit is written while the workload's child %d lives", child)
	}
	if st.ExitCode != 0 || st.StopConfirmed {
		t.Errorf("state %+v, want exit 0 and no stop", st)
	}
	if log != "bye\nlate\n" {
		t.Errorf("log = %q, want the child's last words in it", log)
	}
}

// A stop that is there before the runner starts: the workload never runs.
func TestRunnerStopBeforeStart(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	if err := requestStop(context.Background(), s, id); err != nil {
		t.Fatal(err)
	}
	mustStart(t, s, id, 5*time.Second, "touch", "ran")
	st, _ := pollUntil(t, s, id, 10*time.Second, "exit", exited)
	want := runnerState{Exited: true, ExitCode: runCodeNotStarted, StopConfirmed: true, ConfirmCode: runCodeNotStarted}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if fileExists(filepath.Join(g.home, "ran")) {
		t.Error("the workload ran after its stop")
	}
}

// stopRunner on a run whose runner never came (vmup killed before it
// started it) returns at once; a runner that comes later never runs its workload.
func TestStopRunnerWithoutRunner(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	begin := time.Now()
	code, err := stopRunner(context.Background(), s, id, begin.Add(10*time.Second), 100*time.Millisecond)
	if err != nil || code != runCodeNotStarted {
		t.Fatalf("stopRunner = %d, %v; want %d", code, err, runCodeNotStarted)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("stopRunner took %v", took)
	}
	mustStart(t, s, id, 5*time.Second, "touch", "ran")
	st, _ := pollUntil(t, s, id, 10*time.Second, "exit", exited)
	if st.Started || !st.StopConfirmed || fileExists(filepath.Join(g.home, "ran")) {
		t.Errorf("the late runner started its workload: %+v", st)
	}
}

// Another run's state files in the dir count for nothing, its stop included.
func TestRunnerIgnoresAnotherRunsState(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	dir := filepath.Join(g.home, runDir(id))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, line := range map[string]string{"started": "other-run 1 4242", "exit": "other-run 5",
		"confirmed": "other-run 0", "stop": "other-run", "output.log": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := pollUntil(t, s, id, time.Second, "state", func(runnerState) bool { return true })
	if diff := cmp.Diff(runnerState{NoRunner: true}, st); diff != "" {
		t.Errorf("state of a dir with another run's files (-want +got):\n%s", diff)
	}
	mustStart(t, s, id, 5*time.Second, "sh", "-c", "echo hi; exit 4")
	st, log := pollUntil(t, s, id, 10*time.Second, "exit", exited)
	if !st.Started || st.PGID == 4242 || st.ExitCode != 4 || st.StopConfirmed || log != "\nhi\n" {
		t.Errorf("state %+v, log %q; want the run's own exit 4, unstopped", st, log)
	}

	if st, _, err := pollRunner(context.Background(), s, "never-run", 0); err != nil || !st.Missing || !st.NoRunner {
		t.Errorf("a run that never was: %+v, %v; want Missing", st, err)
	}
}

// A connection that drops for a while: stopRunner keeps asking and gets the confirmation.
func TestStopRunnerRetriesDroppedConnection(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	mustStart(t, s, id, 5*time.Second, "sh", "-c", "echo ready > ready; sleep 1000")
	waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
	pollUntil(t, s, id, 10*time.Second, "start", started)

	var failed atomic.Int64
	g.setFault(func(remote string) guestFault {
		if failed.Load() < 3 {
			failed.Add(1)
			return faultFail
		}
		return faultNone
	})
	calls := g.calls.Load()
	code, err := stopRunner(context.Background(), s, id, time.Now().Add(10*time.Second), 50*time.Millisecond)
	if err != nil || code != 128+2 {
		t.Fatalf("stopRunner = %d, %v; want %d", code, err, 128+2)
	}
	if failed.Load() != 3 || g.calls.Load()-calls < 5 {
		t.Errorf("%d calls failed of %d", failed.Load(), g.calls.Load()-calls)
	}
}

// A hung guest: every ssh hangs. stopRunner gives up by its deadline.
func TestStopRunnerHungGuest(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	mustStart(t, s, id, 5*time.Second, "sh", "-c", "echo ready > ready; sleep 1000")
	waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })

	g.setFault(func(string) guestFault { return faultHang })
	deadline := time.Now().Add(1500 * time.Millisecond)
	_, err := stopRunner(context.Background(), s, id, deadline, 100*time.Millisecond)
	if late := time.Since(deadline); late > time.Second {
		t.Errorf("stopRunner returned %v after its deadline", late)
	}
	var e *stopUnconfirmedError
	if !errors.Is(err, errStopUnconfirmed) || !errors.As(err, &e) || e.Requested {
		t.Fatalf("err = %v, want errStopUnconfirmed without the request in the guest", err)
	}

	// The request gets through, then the guest hangs: unconfirmed, but the
	// runner acts on the request, as it does when a paused guest resumes.
	g.setFault(func(remote string) guestFault {
		if strings.Contains(remote, "vmup-run") {
			return faultHang
		}
		return faultNone
	})
	deadline = time.Now().Add(time.Second)
	_, err = stopRunner(context.Background(), s, id, deadline, 100*time.Millisecond)
	if late := time.Since(deadline); late > time.Second {
		t.Errorf("stopRunner returned %v after its deadline", late)
	}
	if !errors.As(err, &e) || !e.Requested || !strings.Contains(err.Error(), "the request is in the guest") {
		t.Fatalf("err = %v, want errStopUnconfirmed with the request in the guest", err)
	}
	g.setFault(nil)
	st, _ := pollUntil(t, s, id, 10*time.Second, "confirmation", func(st runnerState) bool { return st.StopConfirmed })
	if st.ConfirmCode != 128+2 {
		t.Errorf("confirmed code %d, want %d", st.ConfirmCode, 128+2)
	}
}

// Two vmups: both see the same state, both can stop the run, and a stop
// requested again after it is done changes nothing.
func TestRunnerTwoVmups(t *testing.T) {
	t.Parallel()
	g, s1 := newLocalGuest(t, "", "")
	s2 := g.ssh(t)
	id := newRunID(time.Now())
	mustStart(t, s1, id, 5*time.Second, "sh", "-c", "echo one; echo ready > ready; sleep 1000")
	waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
	a, logA := pollUntil(t, s1, id, 10*time.Second, "start", started)
	b, logB := pollUntil(t, s2, id, 10*time.Second, "start", started)
	if diff := cmp.Diff(a, b); diff != "" || logA != logB || logA != "one\n" {
		t.Errorf("two pollers differ (-first +second):\n%s\nlogs %q, %q", diff, logA, logB)
	}

	var wg sync.WaitGroup
	codes, errs := make([]int, 2), make([]error, 2)
	for i, s := range []*SSH{s1, s2} {
		wg.Go(func() {
			codes[i], errs[i] = stopRunner(context.Background(), s, id, time.Now().Add(10*time.Second), 50*time.Millisecond)
		})
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || codes[0] != 130 || codes[1] != 130 {
		t.Fatalf("stopRunner = %v, %v; want 130 for both", codes, errs)
	}
	a, _ = pollUntil(t, s1, id, time.Second, "state", exited)
	if err := requestStop(context.Background(), s2, id); err != nil {
		t.Fatal(err)
	}
	b, _ = pollUntil(t, s2, id, time.Second, "state", exited)
	if diff := cmp.Diff(a, b); diff != "" || !b.StopConfirmed {
		t.Errorf("a second stop changed the state (-before +after):\n%s", diff)
	}
}

// The runner is deaf to the signals a session's end, a terminal or an
// interrupt sends its group: it still records the workload's end.
func TestRunnerSurvivesSessionSignals(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	mustStart(t, s, id, 5*time.Second, "sh", "-c", `while [ ! -e go ]; do sleep 0.05; done; echo done`)
	st, _ := pollUntil(t, s, id, 10*time.Second, "start", started)
	runner, _ := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(g.home, runDir(id), "runner.pid"))))
	_, group, ok := procStat(runner)
	if !ok || group == st.PGID {
		t.Fatalf("runner %d: group %d, workload's %d", runner, group, st.PGID)
	}
	for _, sig := range []unix.Signal{unix.SIGHUP, unix.SIGINT, unix.SIGTERM} {
		unix.Kill(-group, sig)
	}
	if err := os.WriteFile(filepath.Join(g.home, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st, log := pollUntil(t, s, id, 10*time.Second, "exit", exited)
	if st.ExitCode != 0 || log != "done\n" {
		t.Errorf("state %+v, log %q", st, log)
	}
}

// The log is read from the offset, at most pollLogMax at a time, framed so
// that nothing in it (nor a login's rc output before it) passes for state.
func TestPollRunnerFraming(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	g.rc = "vmup-run x\nexit x 1\nlog\n"
	id := "framing-1"
	dir := filepath.Join(g.home, runDir(id))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	trap := "vmup-run " + id + "\nlog\nexit " + id + " 0\nconfirmed " + id + " 1\nmissing\n\x00\xff"
	content := trap + strings.Repeat("0123456789abcde\n", (pollLogMax/2)/16) + trap + strings.Repeat("x", pollLogMax)
	for name, data := range map[string]string{"output.log": content, "started": id + " 1 77\n",
		"exit": "exit\n" + id + " 9\n", "runner.sh": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	st, first, err := pollRunner(ctx, s, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(runnerState{Started: true, PGID: 77, LogMore: true}, st); diff != "" || len(first) != pollLogMax {
		t.Errorf("first poll: %d bytes, state (-want +got):\n%s", len(first), diff)
	}
	st, rest, err := pollRunner(ctx, s, id, int64(len(first)))
	if err != nil || st.LogMore || string(first)+string(rest) != content {
		t.Errorf("second poll: %v, LogMore %v, the log read differs from the file", err, st.LogMore)
	}
	if _, tail, err := pollRunner(ctx, s, id, int64(len(content))); err != nil || len(tail) != 0 {
		t.Errorf("poll at the end: %q, %v", tail, err)
	}
	if _, none, err := pollRunner(ctx, s, id, -1); err != nil || none != nil {
		t.Errorf("poll without the log: %q, %v", none, err)
	}

	for _, out := range []string{"", "vmup-run " + id, "vmup-run " + id + "\nstarted " + id + " 1 2\n", "xvmup-run " + id + "\nlog\n"} {
		if _, _, err := parseRunnerPoll([]byte(out), id); err == nil {
			t.Errorf("parseRunnerPoll(%q) took a cut answer", out)
		}
	}
}

// Run ids are checked before anything reaches the guest; a command's words
// are checked before the runner is made.
func TestRunProtocolRejectsBadInput(t *testing.T) {
	t.Parallel()
	g, s := newLocalGuest(t, "", "")
	ctx := context.Background()
	for _, id := range []string{"", "A", "-x", "a b", "../x", "a/b", "a;b", "a'b", strings.Repeat("a", 65)} {
		if startRunner(ctx, s, id, []string{"true"}, time.Second) == nil {
			t.Errorf("startRunner took run id %q", id)
		}
		if _, _, err := pollRunner(ctx, s, id, 0); err == nil {
			t.Errorf("pollRunner took run id %q", id)
		}
		if requestStop(ctx, s, id) == nil {
			t.Errorf("requestStop took run id %q", id)
		}
		if _, err := stopRunner(ctx, s, id, time.Now().Add(time.Second), time.Millisecond); err == nil {
			t.Errorf("stopRunner took run id %q", id)
		}
	}
	for _, argv := range [][]string{nil, {}, {"echo", "a\x00b"}} {
		if startRunner(ctx, s, "ok-1", argv, time.Second) == nil {
			t.Errorf("startRunner took argv %q", argv)
		}
	}
	if n := g.calls.Load(); n != 0 {
		t.Errorf("%d ssh calls for bad input", n)
	}

	if id := newRunID(time.Date(2026, 12, 4, 15, 30, 12, 0, time.UTC)); !regexp.MustCompile(`^20261204-153012-[0-9a-f]{6}$`).MatchString(id) || validRunID(id) != nil {
		t.Errorf("newRunID = %q", id)
	}
	for d, want := range map[time.Duration]int{0: 1, time.Millisecond: 1, 1500 * time.Millisecond: 2, 2 * time.Second: 2, time.Minute: 60} {
		if got := stopTimeoutSeconds(d); got != want {
			t.Errorf("stopTimeoutSeconds(%v) = %d, want %d", d, got, want)
		}
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("guestSh took a quote")
			}
		}()
		guestSh("echo 'x'")
	}()
	if got, want := singleQuote(`it's`), `'it'\''s'`; got != want {
		t.Errorf("singleQuote = %s, want %s", got, want)
	}
}

// The runner's script passes sh's syntax check under every sh at hand.
func TestRunnerScriptSyntax(t *testing.T) {
	t.Parallel()
	script, err := runnerScript("syntax-1", []string{"a b", "it's", "\n"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range [][]string{{"dash"}, {"busybox", "sh"}, {"bash", "--posix"}} {
		prog, err := exec.LookPath(sh[0])
		if err != nil {
			continue
		}
		cmd := exec.Command(prog, append(sh[1:], "-n")...)
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
}

type writeRecorder struct{ writes []string }

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func TestPrefixLines(t *testing.T) {
	var rec writeRecorder
	w := prefixLines(&rec, "vm | ")
	for _, s := range []string{"a\nb", "c\n\nd", "", "e\n"} {
		if n, err := io.WriteString(w, s); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	io.WriteString(w, "tail")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{"vm | a\n", "vm | bc\n", "vm | \n", "vm | de\n", "vm | tail\n"}
	if diff := cmp.Diff(want, rec.writes); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	if _, err := io.WriteString(w, "x\n"); err == nil {
		t.Error("a closed writer took a write")
	}

	rec.writes = nil
	w = prefixLines(&rec, "> ")
	io.WriteString(w, strings.Repeat("x", maxLine+10))
	w.Close()
	if len(rec.writes) != 2 || len(rec.writes[0]) != 2+maxLine+1 || rec.writes[1] != "> xxxxxxxxxx\n" {
		t.Errorf("a long line: %d writes", len(rec.writes))
	}

	rec.writes = nil
	w = prefixLines(&rec, "> ")
	w.Close()
	if len(rec.writes) != 0 {
		t.Errorf("an empty stream wrote %q", rec.writes)
	}
}

// awaitStop returns as soon as the runner stopped its workload, and fails
// when nothing confirms within its wait (no runner there).
func TestAwaitStopReturnsOnceStopped(t *testing.T) {
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	mustStart(t, s, id, 10*time.Second, "sh", "-c", `trap "exit 3" INT; echo ready > ready; sleep 100`)
	waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
	pollUntil(t, s, id, 10*time.Second, "start", started)
	// Its wait ends with the runner, which a guest's init reaps; here no
	// init may reap it, and the wait runs to its end: 1 s.
	begin := time.Now()
	if err := awaitStop(context.Background(), s, id, time.Second); err != nil {
		t.Fatalf("awaitStop: %v", err)
	}
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("awaitStop took %v for a workload that stops at SIGINT", took)
	}
	if st, _, err := pollRunner(context.Background(), s, id, -1); err != nil || !st.StopConfirmed || st.ConfirmCode != 3 {
		t.Errorf("after awaitStop: %+v, %v", st, err)
	}
	other := newRunID(time.Now().Add(time.Hour))
	if err := awaitStop(context.Background(), s, other, 200*time.Millisecond); err == nil {
		t.Error("awaitStop of a run without a runner returned nil")
	}
}

// waitRunner returns once the runner ended, not after its whole wait; else
// after the wait, with the log so far.
func TestWaitRunnerReturnsOnNews(t *testing.T) {
	g, s := newLocalGuest(t, "", "")
	id := newRunID(time.Now())
	mustStart(t, s, id, 10*time.Second, "sh", "-c", `while [ ! -e go ]; do sleep 0.05; done; echo hi; while [ ! -e end ]; do sleep 0.05; done; exit 4`)
	pollUntil(t, s, id, 10*time.Second, "start", started)
	begin := time.Now()
	st, data, err := waitRunner(context.Background(), s, id, 0, 500*time.Millisecond)
	if took := time.Since(begin); err != nil || st.Exited || len(data) != 0 || took < 400*time.Millisecond {
		t.Fatalf("no news: %+v %q %v after %v; want nothing after the whole wait", st, data, err, took)
	}
	os.WriteFile(filepath.Join(g.home, "go"), nil, 0o644)
	begin = time.Now()
	waitFor(t, 10*time.Second, "log", func() bool {
		data, _ := os.ReadFile(filepath.Join(g.home, runDir(id), "output.log"))
		return len(data) > 0
	})
	_, data, err = waitRunner(context.Background(), s, id, 0, 300*time.Millisecond)
	if took := time.Since(begin); err != nil || string(data) != "hi\n" || took > 3*time.Second {
		t.Fatalf("new log: %q %v after %v", data, err, took)
	}
	os.WriteFile(filepath.Join(g.home, "end"), nil, 0o644)
	begin = time.Now()
	st, _, err = waitRunner(context.Background(), s, id, 3, 10*time.Second)
	if took := time.Since(begin); err != nil || !st.Exited || st.ExitCode != 4 || took > 3*time.Second {
		t.Fatalf("exit: %+v %v after %v", st, err, took)
	}
}

// A guest that lies in its state files with a code no process can exit
// with (256 would reach the shell as vmup's exit 0, -1 as 255) is not
// taken: the run's status is always one a workload can have.
func TestParseRunnerPollRefusesImpossibleCodes(t *testing.T) {
	id := "codes-1"
	for _, code := range []string{"256", "-1", "1000", "-0"} {
		out := "vmup-run " + id + "\nrunner\nexit " + id + " " + code + "\nconfirmed " + id + " " + code + "\nlog\n"
		st, _, err := parseRunnerPoll([]byte(out), id)
		if err != nil || st.Exited || st.StopConfirmed {
			t.Errorf("code %s: %+v, %v; want neither exited nor confirmed", code, st, err)
		}
	}
	out := "vmup-run " + id + "\nrunner\nexit " + id + " 255\nlog\n"
	if st, _, err := parseRunnerPoll([]byte(out), id); err != nil || !st.Exited || st.ExitCode != 255 {
		t.Errorf("code 255: %+v, %v", st, err)
	}
}

// Once a stop's end is seen, its confirmation is there too: a guest whose
// disk is slow to take each state file (here a mv that waits 0.3 s) must
// not show exit without confirmed.
func TestRunnerConfirmsBeforeExit(t *testing.T) {
	runnerShells(t, func(t *testing.T, g *localGuest, s *SSH) {
		mv, err := exec.LookPath("mv")
		if err != nil {
			t.Skip(err)
		}
		bin := t.TempDir()
		shim := "#!/bin/sh\ncase \"$3\" in exit|confirmed) sleep 0.3 ;; esac\nexec " + mv + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(bin, "mv"), []byte(shim), 0o755); err != nil {
			t.Fatal(err)
		}
		for i, kv := range g.env {
			if path, ok := strings.CutPrefix(kv, "PATH="); ok {
				g.env[i] = "PATH=" + bin + ":" + path
			}
		}
		id := newRunID(time.Now())
		mustStart(t, s, id, 10*time.Second, "sh", "-c", `echo ready > ready; sleep 100`)
		waitFor(t, 10*time.Second, "ready workload", func() bool { return fileExists(filepath.Join(g.home, "ready")) })
		pollUntil(t, s, id, 10*time.Second, "start", started)

		code, err := stopRunner(context.Background(), s, id, time.Now().Add(10*time.Second), 20*time.Millisecond)
		if err != nil || code != 128+2 {
			t.Fatalf("stopRunner = %d, %v; want %d", code, err, 128+2)
		}
		if !fileExists(filepath.Join(g.home, runDir(id), "confirmed")) {
			t.Error("stopRunner returned before the runner confirmed the stop")
		}
		if st, _ := pollUntil(t, s, id, 5*time.Second, "state", exited); !st.StopConfirmed {
			t.Errorf("a poll saw the exit without the confirmation: %+v", st)
		}
	})
}
