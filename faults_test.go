package main

import (
	"bufio"
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

// pipedRun is `vmup up … 2>&1 | reader` as a shell with job control runs it:
// vmup and the reader share one process group, the terminal's foreground job.
type pipedRun struct {
	*binaryRun
	reader *exec.Cmd
	log    string // what the reader copied
}

// startVmupPiped runs vmup with stdout and stderr into a pipe read by a `cat`
// (SIGINT at default, like tee) in vmup's own process group. With
// jsonToTest, stdout (the JSON events) comes to the test instead, so it can
// see what vmup did after the reader died.
func startVmupPiped(t *testing.T, jsonToTest bool, playbookMode string, args ...string) *pipedRun {
	t.Helper()
	r := newBinaryRun(t, playbookMode, args...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stdout, r.cmd.Stderr = pw, pw
	if jsonToTest {
		r.cmd.Stdout = nil
		r.readEvents()
	} else {
		close(r.events)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	p := &pipedRun{binaryRun: r, log: filepath.Join(r.dir, "tee.log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.reader = exec.Command("cat")
	p.reader.Stdin, p.reader.Stdout = pr, logFile
	p.reader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: r.cmd.Process.Pid}
	if err := p.reader.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	pw.Close()
	logFile.Close()
	return p
}

// readerGone waits until the pipe's reader has died of the Ctrl+C.
func (p *pipedRun) readerGone() {
	p.t.Helper()
	done := make(chan struct{})
	go func() { p.reader.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.t.Fatal("the pipe's reader did not die of SIGINT")
	}
}

// waitExit returns vmup's own exit status (not the pipeline's); -1 for a signal death.
func (p *pipedRun) waitExit() (int, string) {
	p.t.Helper()
	done := make(chan struct{})
	go func() {
		for range p.events {
		}
		p.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		p.t.Fatal("vmup did not exit")
	}
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return -1, ws.Signal().String()
	}
	return ws.ExitStatus(), ""
}

// waitJournalPhase polls the journal until it names phase.
func (r *binaryRun) waitJournalPhase(phase string) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		data, _ := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json"))
		var j struct{ Phase string }
		if json.Unmarshal(data, &j) == nil && j.Phase == phase {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the journal never said %q (last: %s)", phase, data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Item 1: `vmup up … 2>&1 | tee`, Ctrl+C: tee dies too. The first Ctrl+C of a
// first boot only warns, and a second one still ends in a complete wipe.
func TestClosedPipeDuringFirstBootChangesNothing(t *testing.T) {
	p := startVmupPiped(t, true, "block")
	pid, pgid, _ := p.waitPlaybook()
	p.ctrlC()
	p.waitEvent("confirm_abort")
	p.readerGone()
	// Writes to the dead pipe happen from here on; vmup must go on regardless.
	if unix.Kill(p.cmd.Process.Pid, 0) != nil || unix.Kill(pid, 0) != nil {
		code, sig := p.waitExit()
		t.Fatalf("after one Ctrl+C vmup or the playbook is gone (vmup exit %d %s)", code, sig)
	}
	if s := p.playbookSignals(); s != "" {
		t.Fatalf("the playbook got %q from the first Ctrl+C", s)
	}
	p.ctrlC()
	if code, sig := p.waitExit(); code != exitSIGINT {
		t.Fatalf("vmup exit %d %s, want 130", code, sig)
	}
	p.checkWiped(pgid)
}

// Item 1: Ctrl+C of a piped foreground up while Running shuts the VM down.
func TestClosedPipeWhileRunningStillShutsDown(t *testing.T) {
	p := startVmupPiped(t, false, "ok")
	p.waitJournalPhase("running")
	p.ctrlC()
	p.readerGone()
	if code, sig := p.waitExit(); code != exitOK {
		t.Fatalf("vmup exit %d %s, want 0", code, sig)
	}
	if !p.called("virsh shutdown v1 --mode acpi") {
		t.Errorf("no ACPI shutdown; calls %v", p.calls())
	}
	p.waitJournalPhase("stopped")
}

// Item 1: `vmup up … --json | head -n 3` closes stdout while preparing; the
// run ends exactly as it would have with a reader.
func TestClosedStdoutFromStartChangesNothing(t *testing.T) {
	r := newBinaryRun(t, "ok", "-d")
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	sc := bufio.NewScanner(stdout)
	for i := 0; i < 3 && sc.Scan(); i++ {
	}
	stdout.Close() // head exits after three lines
	close(r.events)
	p := &pipedRun{binaryRun: r}
	if code, sig := p.waitExit(); code != exitOK {
		t.Fatalf("vmup exit %d %s, want 0", code, sig)
	}
	data, _ := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json"))
	if !strings.Contains(string(data), `"first_boot_done": true`) {
		t.Errorf("the first boot did not complete: %s", data)
	}
}

// Item 4: Ctrl+C while a re-up redefines a shut-off completed VM removes
// nothing of it: the domain stays defined and the next up starts it.
func TestInterruptedRedefinitionKeepsCompletedDomain(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	if out, code := r.vmup("down", "v1"); code != 0 {
		t.Fatalf("down: exit %d\n%s", code, out)
	}
	// A journal without the domain's UUID (as an earlier vmup wrote it): the
	// redefinition then asks libvirt for it, and the Ctrl+C lands there, after
	// libvirt accepted the new definition.
	journal := filepath.Join(r.home, "vms", "v1", "state.json")
	data, _ := os.ReadFile(journal)
	var j map[string]any
	json.Unmarshal(data, &j)
	delete(j, "uuid")
	data, _ = json.Marshal(j)
	os.WriteFile(journal, data, 0o600)
	waiting, open := r.gate("domuuid")
	up := exec.Command(vmupBinary, "up", "v1", "--cpus", "4", "-d")
	up.Env = r.env
	up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr := &lockedWriter{w: &strings.Builder{}}
	up.Stderr = stderr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-up.Process.Pid, syscall.SIGKILL) })
	waiting()
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	// The redefinition runs to its end once begun; the interrupt then takes effect.
	for deadline := time.Now().Add(20 * time.Second); !stderr.contains("Interrupted while preparing"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the interrupt was not taken:\n%s", stderr.String())
		}
	}
	open()
	up.Wait()
	if code := up.ProcessState.ExitCode(); code != exitSIGINT {
		t.Errorf("interrupted re-up: exit %d, want 130", code)
	}
	for _, c := range []string{"virsh undefine", "virsh destroy", "virsh vol-delete --pool vmup v1.qcow2"} {
		if r.called(c) {
			t.Errorf("an interrupted re-up ran %q; calls %v", c, r.calls())
		}
	}
	if out, code := r.vmup("up", "v1", "-d"); code != 0 {
		t.Errorf("the next up: exit %d\n%s", code, out)
	}
}

// gone says whether pid has ended (a zombie awaiting its reaper counts).
func gone(pid int) bool {
	if unix.Kill(pid, 0) == unix.ESRCH {
		return true
	}
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) lives on", what, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A crash of vmup takes its children with it (they run in their own process
// groups, so nothing else would); what they left is reaped by the next command.
func TestKilledVmupTakesItsChildren(t *testing.T) {
	r := startVmup(t, "block")
	pid, _, grandchild := r.waitPlaybook()
	// vmup journals the playbook's group as it starts; the fake playbook
	// starts its child at once, faster than any ansible.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		data, _ := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json"))
		if strings.Contains(string(data), `"playbook_pgid"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the playbook's process group was never journalled")
		}
	}
	unix.Kill(r.cmd.Process.Pid, syscall.SIGKILL)
	r.exitCode()
	waitGone(t, pid, "the playbook of a killed vmup")
	if out, code := r.vmup("destroy", "v1"); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, out)
	}
	waitGone(t, grandchild, "the playbook's child, after destroy")
}

// `down` while an `up` of the running VM is still preparing: that up is asked
// to stop and lets go before it started anything; down then shuts the VM
// down itself. Both end as asked: the VM is off.
func TestDownDuringReupPreparingStillShutsDown(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	waiting, open := r.gate("domstate")
	up, upOut := r.start("up", "v1")
	waiting()
	down, downOut := r.start("down", "v1")
	up.Wait()
	open()
	down.Wait()
	if code := down.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("down: exit %d\n%s\nup:\n%s", code, downOut, upOut)
	}
	if !r.called("virsh shutdown v1 --mode acpi") {
		t.Errorf("down returned 0 but nobody shut the VM down; calls %v\ndown:\n%s", r.calls(), downOut)
	}
	if st := loadWorld(filepath.Join(r.dir, "world.json")).Domains["v1"]; st != "shut off" {
		t.Errorf("the domain is %q after down, want shut off", st)
	}
}

// `--reset --connect OTHER` removes the old VM where it lives, on its own
// connection, not on the one the new VM gets.
func TestResetRemovesTheOldVMOnItsOwnConnection(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.mu.Lock()
	h.fake.raw = nil
	h.fake.mu.Unlock()
	if code := h.wait(h.up(h.upArgs("--reset", "--connect", "qemu:///session", "-d")...)); code != 0 {
		t.Fatalf("reset: exit %d\n%s", code, h.stderr)
	}
	undefined := false
	for _, c := range h.fake.rawCalls() {
		if len(c) > 3 && filepath.Base(c[0]) == "virsh" && c[3] == "undefine" {
			undefined = true
			if c[2] != "qemu:///system" {
				t.Errorf("the old VM was undefined on %s, not on its own qemu:///system: %v", c[2], c)
			}
		}
	}
	if !undefined {
		t.Error("the old VM was not undefined")
	}
}

// `down` never asks an up to stop while the VM has not completed its first
// boot: a retry of a failed first boot holds back its journal while it
// prepares, and a SIGTERM landing once it started would wipe the kept VM.
func TestDownRefusesARetriedFirstBoot(t *testing.T) {
	r := startVmup(t, "fail", "-d")
	if code := r.exitCode(); code != exitProvision {
		t.Fatalf("up -d: exit %d, want 3", code)
	}
	waiting, open := r.gate("domstate")
	up, upOut := r.start("up", "v1", "-d")
	waiting()
	out, code := r.vmup("down", "v1")
	open()
	up.Wait()
	if code != exitBusy || !strings.Contains(out, "vmup: hint:") {
		t.Errorf("down during a retried first boot: exit %d, want 5 with a hint\n%s", code, out)
	}
	if up.ProcessState.ExitCode() == exitSIGTERM || r.called("virsh undefine v1") {
		t.Errorf("down stopped the retried first boot (exit %d)\n%s", up.ProcessState.ExitCode(), upOut)
	}
}
