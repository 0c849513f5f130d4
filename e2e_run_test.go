//go:build e2e

package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runArgs is `vmup run NAME` with the suite's image and playbook, as a
// small VM (768 MiB, 1 vCPU); name "" lets the run name its VM.
func (e *e2e) runArgs(name string, extra ...string) []string {
	args := e.upArgs("marker.yml")
	args[0], args[1] = "run", name
	if name == "" {
		args = slices.Delete(args, 1, 2)
	}
	if i := slices.Index(args, "--memory"); i >= 0 {
		args[i+1] = "768"
	}
	return append(append(args, "--cpus", "1", "--results", filepath.Join(e.home, "results")), extra...)
}

// exitEventOf is the exit event of --json output.
func exitEventOf(t *testing.T, stdout string) jsonEvent {
	t.Helper()
	evs := jsonEvents(stdout)
	if len(evs) == 0 || evs[len(evs)-1].Event != "exit" {
		t.Fatalf("no exit event last in:\n%s", stdout)
	}
	return evs[len(evs)-1]
}

// waitGuestFile polls the VM (over `vmup ssh`, which takes no lock) until path exists.
func (e *e2e) waitGuestFile(name, path string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, _, code := e.vmupQuiet(30*time.Second, "ssh", name, "--", "test", "-e", path); code == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond) // a poll of the guest, with a deadline
	}
	e.t.Fatalf("%s did not appear in VM %s within %s", path, name, timeout)
}

// vmupQuiet is vmup without logging its output (a poll).
func (e *e2e) vmupQuiet(timeout time.Duration, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := e.command(ctx, args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Run()
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// Case 1: a run on a VM of its own passes: exit 0, the synced file read and
// the collected files on the host, and nothing of the VM left.
func TestE2ERunPassing(t *testing.T) {
	e := newE2E(t, "run-none")
	sync, _ := filepath.Abs("testdata/runsync")
	stdout, stderr, code := e.vmup(20*time.Minute, e.runArgs("", "--json", "--sync", sync, "--collect", "/tmp/vmup-out", "--",
		"sh", "-c", `mkdir -p /tmp/vmup-out && cat runsync/input.txt /var/tmp/vmup-marker > "/tmp/vmup-out/result of $1.txt" && echo "workload says hi"`, "sh", "run 1")...)
	if code != 0 {
		t.Fatalf("run: exit %d", code)
	}
	ex := exitEventOf(t, stdout)
	if len(ex.VMs) != 1 || ex.VMs[0].Outcome != "removed" || ex.VMs[0].WorkloadExit == nil || *ex.VMs[0].WorkloadExit != 0 ||
		ex.Run == "" || ex.Message != "finished" || ex.Stage != "workload" {
		t.Fatalf("exit event %+v (vms %+v)", ex, ex.VMs)
	}
	e.name = ex.VMs[0].VM // the run named it: the checks below and the cleanup look for it
	if !strings.HasPrefix(e.name, "run-") {
		t.Errorf("the run's own VM is named %q", e.name)
	}
	if !strings.Contains(stderr, "workload says hi") {
		t.Errorf("the workload's output was not streamed:\n%s", stderr)
	}
	got, err := os.ReadFile(filepath.Join(e.home, "results", ex.Run, e.name, "vmup-out", "result of run 1.txt"))
	if err != nil || string(got) != "hello from the host\nprovisioned by vmup\n" {
		t.Errorf("collected file: %q, %v", got, err)
	}
	if log, _ := os.ReadFile(filepath.Join(e.home, "results", ex.Run, e.name, "workload.log")); !strings.Contains(string(log), "workload says hi") {
		t.Errorf("workload.log: %q", log)
	}
	e.checkNothingLeft()
}

// Case 2, 4 and 6 on one VM the run made: a failing workload keeps it and
// exits with its status; a paused guest's stop is not confirmed (exit 4,
// kept, named); a workload whose vmup was killed is shown by status and
// stopped through its runner by down, then by destroy.
func TestE2ERunFailingStopFailedAndOrphan(t *testing.T) {
	e := newE2E(t, "runkeep")
	stdout, _, code := e.vmup(20*time.Minute, e.runArgs("runkeep", "--json", "--", "sh", "-c", "exit 7")...)
	if code != 7 {
		t.Fatalf("run of a workload exiting 7: exit %d", code)
	}
	if ex := exitEventOf(t, stdout); len(ex.VMs) != 1 || ex.VMs[0].Outcome != "kept" || *ex.VMs[0].WorkloadExit != 7 {
		t.Errorf("exit event vms %+v", ex.VMs)
	}
	if st := e.domState(); st != "running" {
		t.Fatalf("the kept VM is %s, want running", st)
	}
	if out, _, code := e.vmup(time.Minute, "ssh", "runkeep", "--", "cat", "/var/tmp/vmup-marker"); code != 0 || !strings.Contains(out, "provisioned") {
		t.Fatalf("vmup ssh of the kept VM: exit %d %q", code, out)
	}

	// Case 4: the guest paused during the workload, two Ctrl+C: stop_failed.
	f := e.startRun(e.runArgs("runkeep", "--stop-timeout", "3s", "--", "sh", "-c", "touch /tmp/paused-ready; sleep 1000"))
	f.waitEvent("run_phase", "workload", 5*time.Minute)
	e.waitGuestFile("runkeep", "/tmp/paused-ready", 2*time.Minute)
	if out, err := virsh("suspend", "runkeep"); err != nil {
		t.Fatalf("virsh suspend: %v %s", err, out)
	}
	f.signalGroup(syscall.SIGINT)
	f.waitEvent("confirm_stop", "", 10*time.Second)
	f.signalGroup(syscall.SIGINT)
	began := time.Now()
	if code := f.exitCode(2 * time.Minute); code != 4 {
		t.Errorf("paused guest, two Ctrl+C: exit %d, want 4\n%s", code, f.stderr)
	}
	t.Logf("TIMING stop_failed after %.1fs (stop timeout 3 s + 10 s)", time.Since(began).Seconds())
	if !strings.Contains(f.stderr.String(), "not confirmed") || !strings.Contains(f.stderr.String(), "runkeep") {
		t.Errorf("the error does not name the VM that did not confirm:\n%s", f.stderr)
	}
	virsh("resume", "runkeep")
	if st := e.domState(); st != "running" {
		t.Errorf("after stop_failed the VM is %s, want kept running", st)
	}
	// Its workload still runs, recorded: down stops it through the runner first.
	out, _, _ := e.vmup(time.Minute, "status", "runkeep")
	if !strings.Contains(out, "workload of run") {
		t.Errorf("status does not show the unstopped workload:\n%s", out)
	}
	_, stderr, code := e.vmup(5*time.Minute, "down", "runkeep")
	if code != 0 || !strings.Contains(stderr, "stopping it first") || !strings.Contains(stderr, "stopped") {
		t.Errorf("down of a VM with a workload: exit %d\n%s", code, stderr)
	}

	// Case 6: vmup killed during the workload; status shows the run; destroy
	// stops the workload through the protocol first.
	f = e.startRun(e.runArgs("runkeep", "--", "sh", "-c", "touch /tmp/orphan-ready; sleep 1000"))
	f.waitEvent("run_phase", "workload", 5*time.Minute)
	e.waitGuestFile("runkeep", "/tmp/orphan-ready", 2*time.Minute)
	unix.Kill(f.cmd.Process.Pid, syscall.SIGKILL)
	f.exitCode(30 * time.Second)
	out, _, _ = e.vmup(time.Minute, "status", "runkeep", "--json")
	var run string
	for _, ev := range jsonEvents(out) {
		if ev.Event == "vm" {
			run = ev.Run
		}
	}
	if run == "" {
		t.Fatalf("status --json shows no run of the killed vmup:\n%s", out)
	}
	_, stderr, code = e.vmup(5*time.Minute, "destroy", "runkeep")
	if code != 0 || !strings.Contains(stderr, "run "+run) || !strings.Contains(stderr, "stopped") {
		t.Errorf("destroy of a VM with an orphaned workload: exit %d\n%s", code, stderr)
	}
	e.checkNothingLeft()

	// Case 2 again with --destroy always: exit 7 and nothing left.
	a := newE2E(t, "runalways")
	if _, _, code := a.vmup(20*time.Minute, a.runArgs("runalways", "--destroy", "always", "--", "sh", "-c", "exit 7")...); code != 7 {
		t.Errorf("--destroy always, workload exits 7: exit %d", code)
	}
	a.checkNothingLeft()
}

// startRun starts `vmup run` as a terminal's foreground job, with --json.
func (e *e2e) startRun(args []string) *foreground { return e.startUp(args...) }

// Case 3: two Ctrl+C during a workload that traps SIGINT: its trap ran (its
// file is collected), the teardown ran, exit 130, nothing left.
func TestE2ERunCtrlCTwiceStopsTheWorkload(t *testing.T) {
	e := newE2E(t, "runstop")
	mark := filepath.Join(e.home, "teardown-mark")
	os.Setenv("VMUP_TEARDOWN_MARK", mark)
	defer os.Unsetenv("VMUP_TEARDOWN_MARK")
	f := e.startRun(e.runArgs("runstop", "--teardown", "testdata/teardown.yml", "--collect", "/tmp/trapdir", "--",
		"sh", "-c", `mkdir -p /tmp/trapdir; trap 'echo trapped > /tmp/trapdir/trap.txt; exit 5' INT; touch /tmp/trapdir/ready; while :; do sleep 1; done`))
	f.waitEvent("run_phase", "workload", 10*time.Minute)
	e.waitGuestFile("runstop", "/tmp/trapdir/ready", 2*time.Minute)
	f.signalGroup(syscall.SIGINT)
	f.waitEvent("confirm_stop", "", 10*time.Second)
	f.signalGroup(syscall.SIGINT)
	asked := time.Now()
	f.waitEvent("run_phase", "collecting", time.Minute)
	t.Logf("TIMING second Ctrl+C to all confirmed: %.2fs", time.Since(asked).Seconds())
	if code := f.exitCode(5 * time.Minute); code != 130 {
		t.Errorf("two Ctrl+C in the workload: exit %d, want 130\n%s", code, f.stderr)
	}
	var run string
	for ev := range f.events {
		f.seen = append(f.seen, ev)
	}
	for _, ev := range f.seen {
		if ev.Event == "exit" {
			run = ev.Run
			if ev.Message != "aborted" || len(ev.VMs) != 1 || ev.VMs[0].Outcome != "removed" {
				t.Errorf("exit event %+v %+v", ev, ev.VMs)
			}
		}
	}
	if got, err := os.ReadFile(filepath.Join(e.home, "results", run, "runstop", "trapdir", "trap.txt")); err != nil || string(got) != "trapped\n" {
		t.Errorf("the workload's trap file was not collected: %q %v", got, err)
	}
	if got, err := os.ReadFile(mark); err != nil || string(got) != "teardown ran\n" {
		t.Errorf("the teardown did not run: %q %v", got, err)
	}
	e.checkNothingLeft()
}

// Case 5: an environment of two VMs, the workload failing on one: its
// status, both kept.
func TestE2ERunEnvironmentOneFails(t *testing.T) {
	e := newEnvE2E(t, "runenv")
	e.writeFile(map[string][]string{"a": {"web"}, "b": {"db"}})
	stdout, stderr, code := e.vmup(25*time.Minute, "run", "--json", "--", "sh", "-c", `case "$(hostname)" in *b) echo "b fails"; exit 3;; esac; echo "a passes"`)
	if code != 3 {
		t.Fatalf("run of the environment, failing on b: exit %d", code)
	}
	if !strings.Contains(stderr, "b | b fails") || !strings.Contains(stderr, "a | a passes") {
		t.Errorf("the workload's lines are not prefixed by their VM:\n%s", stderr)
	}
	var ex jsonEvent
	for _, ev := range jsonEvents(stdout) {
		if ev.Event == "exit" {
			ex = ev
		}
	}
	got := map[string]string{}
	for _, v := range ex.VMs {
		data, _ := json.Marshal(v.WorkloadExit)
		got[v.VM] = v.Outcome + " " + string(data)
	}
	want := map[string]string{"runenv-a": "kept 0", "runenv-b": "kept 3"}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("exit event: VM %s %q, want %q (all: %v)", k, got[k], w, got)
		}
	}
	for _, vm := range []string{"a", "b"} {
		if st, _ := virsh("domstate", e.full(vm)); st != "running" {
			t.Errorf("VM %s is %s, want kept running", vm, st)
		}
	}
}
