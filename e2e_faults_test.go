//go:build e2e

package main

import (
	"bufio"
	"context"
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

// libvirtdPID is the pid of the running libvirtd, which the suite started.
func libvirtdPID(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("pgrep", "-x", "-n", "libvirtd").Output()
	if err != nil {
		t.Fatalf("no libvirtd runs: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// stopLibvirtd freezes libvirtd (SIGSTOP): a stuck libvirtd, which accepts
// connections and answers nothing. It is always let go again.
func stopLibvirtd(t *testing.T) (resume func()) {
	pid := libvirtdPID(t)
	if err := unix.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume = func() {
		if !resumed {
			resumed = true
			unix.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	return resume
}

// childNamed polls until a child of pid runs the command name.
func childNamed(t *testing.T, pid int, name string, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			s := string(stat)
			open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
			if open < 0 || end < open {
				continue
			}
			fields := strings.Fields(s[end+1:])
			if len(fields) > 1 && s[open+1:end] == name && fields[1] == strconv.Itoa(pid) {
				return
			}
		}
	}
	t.Fatalf("no %s child of vmup (pid %d) within %s", name, pid, timeout)
}

// Item 16 of issue 14: with libvirtd stuck, a Ctrl+C during up's check of
// libvirt ends vmup at once (nothing was made), and without one the error
// says that libvirt did not answer, not that virsh is missing.
func TestE2EStuckLibvirtdCtrlCAndError(t *testing.T) {
	e := newE2E(t, "e2e-stuck")
	resume := stopLibvirtd(t)

	f := e.startUp(e.upArgs("marker.yml", "-d")...)
	childNamed(t, f.cmd.Process.Pid, "virsh", 30*time.Second)
	start := time.Now()
	f.signalGroup(syscall.SIGINT)
	code := f.exitCode(30 * time.Second)
	took := time.Since(start)
	t.Logf("TIMING Ctrl+C to exit while libvirtd is stuck: %.2fs", took.Seconds())
	if code != exitSIGINT {
		t.Errorf("Ctrl+C while libvirtd is stuck: exit %d, want %d", code, exitSIGINT)
	}
	// Every signal acts within a second; 5 s tells that from waiting out the check.
	if took > 5*time.Second {
		t.Errorf("vmup took %.1f s to act on Ctrl+C while it asked a stuck libvirtd", took.Seconds())
	}
	if _, err := os.Stat(filepath.Join(e.home, "vms", e.name)); err == nil {
		t.Errorf("an up stopped while it checked libvirt left a state dir")
	}

	_, stderr, code := e.vmup(2*time.Minute, e.upArgs("marker.yml", "-d")...)
	resume()
	if code != exitFailed {
		t.Errorf("up with libvirtd stuck: exit %d, want %d", code, exitFailed)
	}
	if !strings.Contains(stderr, "did not answer") || strings.Contains(stderr, "install libvirt's client") {
		t.Errorf("up with libvirtd stuck says:\n%s\nwant that libvirt did not answer, and no hint to install virsh", stderr)
	}
}

// timedLine is a line of vmup's human output and when it arrived.
type timedLine struct {
	at   time.Time
	text string
}

// vmupLines runs vmup with its human output on a pipe (not a terminal, as in
// a CI log) and notes when each line arrived.
func (e *e2e) vmupLines(timeout time.Duration, args ...string) ([]timedLine, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := e.command(ctx, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	var lines []timedLine
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		lines = append(lines, timedLine{time.Now(), sc.Text()})
	}
	cmd.Wait()
	var all strings.Builder
	for _, l := range lines {
		all.WriteString(l.at.Format("15:04:05.0 ") + l.text + "\n")
	}
	e.t.Logf("vmup %s -> exit %d\n%s", strings.Join(args, " "), cmd.ProcessState.ExitCode(), all.String())
	return lines, cmd.ProcessState.ExitCode()
}

// stepBeganBeforeItEnded checks, on output that is not a terminal, that the
// step's line came when it began, not only with its end.
func stepBeganBeforeItEnded(t *testing.T, lines []timedLine, title string, atLeast time.Duration) {
	t.Helper()
	var began, ended time.Time
	for _, l := range lines {
		if !strings.Contains(l.text, title) {
			continue
		}
		if strings.Contains(l.text, "✓") {
			ended = l.at
		} else if began.IsZero() {
			began = l.at
		}
	}
	switch {
	case ended.IsZero():
		t.Errorf("no line says %q ended", title)
	case began.IsZero():
		t.Errorf("no line said %q began before it ended: off a terminal a step showed nothing while it ran", title)
	case ended.Sub(began) < atLeast:
		t.Errorf("%q: its first line came %.1f s before its end; the step takes longer than %s, so the line was held back",
			title, ended.Sub(began).Seconds(), atLeast)
	default:
		t.Logf("TIMING %q shown %.1f s before it ended", title, ended.Sub(began).Seconds())
	}
}
