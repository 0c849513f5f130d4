package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envVmup runs the built vmup in an environment's directory with the fakes.
func (r *binaryRun) envVmup(dir, playbookMode string, args ...string) *exec.Cmd {
	cmd := exec.Command(vmupBinary, args...)
	cmd.Dir = dir
	cmd.Env = append(append([]string{}, r.env...), "VMUP_FAKE_PLAYBOOK="+playbookMode)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// An environment's up killed (SIGKILL) during its one playbook: the next up
// reaps what the playbook left, removes each first boot cut short, makes
// it again, and provisions both VMs once; nothing wipes a provisioned VM.
func TestBinaryEnvUpKilledMidPlaybookRecovers(t *testing.T) {
	r := newBinaryRun(t, "ok")
	dir := filepath.Join(r.dir, "shop")
	os.Mkdir(dir, 0o700)
	image, play := filepath.Join(r.dir, "base.qcow2"), filepath.Join(r.dir, "play.yml")
	os.WriteFile(filepath.Join(dir, configFile), []byte(`{"image": "`+image+`", "playbook": "`+play+`",
		"domain-type": "qemu", "network": "user", "vms": {"web": {"groups": ["web"]}, "db": {}}}`), 0o600)
	up := r.envVmup(dir, "block", "up", "--json")
	var out bytes.Buffer
	up.Stdout, up.Stderr = &out, &out
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-up.Process.Pid, syscall.SIGKILL) })
	pid, _, child := r.waitPlaybook()
	t.Cleanup(func() { unix.Kill(child, syscall.SIGKILL) })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		data, _ := os.ReadFile(filepath.Join(r.home, "vms", "shop-web", "state.json"))
		if strings.Contains(string(data), `"playbook_pgid"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the playbook's group was never journalled\n%s", out.String())
		}
	}
	up.Process.Signal(syscall.SIGKILL)
	up.Wait()
	waitGone(t, pid, "ansible-playbook of a killed environment up")
	if gone(child) {
		t.Fatal("the playbook's child died with it: nothing to reap")
	}
	os.Remove(filepath.Join(r.dir, "playbook.pid"))

	again := r.envVmup(dir, "ok", "up", "-d")
	res, err := again.CombinedOutput()
	if err != nil {
		t.Fatalf("up -d after the kill: %v\n%s", err, res)
	}
	waitGone(t, child, "the playbook's child, after the next up")
	for _, vm := range []string{"web", "db"} {
		if !strings.Contains(string(res), vm+" | An earlier first boot of shop-"+vm+" was interrupted") {
			t.Errorf("the next up did not recover %s:\n%s", vm, res)
		}
		j, err := readJournal(pathsFor(r.home, "shop-"+vm))
		if err != nil || j == nil || !j.FirstBootDone || j.PlaybookPGID != 0 {
			t.Errorf("shop-%s: %+v, %v; want provisioned, no playbook group", vm, j, err)
		}
	}
	n := 0
	for _, c := range r.calls() {
		if len(c) > 0 && c[0] == "ansible-playbook" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d playbooks ran, want 2 (the killed one, and one for both VMs)", n)
	}
}

// `vmup down` in the directory, against the environment's foreground up:
// that up shuts every VM down and ends (0), and so does down.
func TestBinaryEnvDownStopsForegroundUp(t *testing.T) {
	r := newBinaryRun(t, "ok")
	dir := filepath.Join(r.dir, "shop")
	os.Mkdir(dir, 0o700)
	os.WriteFile(filepath.Join(dir, configFile), []byte(`{"image": "`+filepath.Join(r.dir, "base.qcow2")+`", "playbook": "`+
		filepath.Join(r.dir, "play.yml")+`", "domain-type": "qemu", "network": "user", "vms": {"web": {}, "db": {}}}`), 0o600)
	up := r.envVmup(dir, "ok", "up", "--json")
	stdout, _ := up.StdoutPipe()
	up.Stderr = &testLogWriter{t: t}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-up.Process.Pid, syscall.SIGKILL) })
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.Contains(sc.Text(), `"event":"waiting"`) {
	}
	down := r.envVmup(dir, "ok", "down")
	if res, err := down.CombinedOutput(); err != nil {
		t.Fatalf("down: %v\n%s", err, res)
	}
	for sc.Scan() {
	}
	if err := up.Wait(); err != nil {
		t.Fatalf("up: %v", err)
	}
	w := loadWorld(filepath.Join(r.dir, "world.json"))
	if w.Domains["shop-web"] != "shut off" || w.Domains["shop-db"] != "shut off" {
		t.Errorf("domains %v; want both shut off", w.Domains)
	}
}

// Two Ctrl+C (SIGINT to the foreground group) during the playbook of a new
// VM: the playbook's process group is stopped, the new VM wiped, the VM
// whose first boot completed shut down and kept, exit 130.
func TestBinaryEnvDoubleCtrlCDuringPlaybook(t *testing.T) {
	r := newBinaryRun(t, "ok")
	dir := filepath.Join(r.dir, "shop")
	os.Mkdir(dir, 0o700)
	os.WriteFile(filepath.Join(dir, configFile), []byte(`{"image": "`+filepath.Join(r.dir, "base.qcow2")+`", "playbook": "`+
		filepath.Join(r.dir, "play.yml")+`", "domain-type": "qemu", "network": "user", "vms": {"web": {}, "db": {}}}`), 0o600)
	if res, err := r.envVmup(dir, "ok", "up", "web", "-d").CombinedOutput(); err != nil {
		t.Fatalf("up web -d: %v\n%s", err, res)
	}
	up := r.envVmup(dir, "block", "up", "--json")
	stdout, _ := up.StdoutPipe()
	up.Stderr = &testLogWriter{t: t}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-up.Process.Pid, syscall.SIGKILL) })
	_, pgid, _ := r.waitPlaybook()
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.Contains(sc.Text(), `"event":"confirm_abort"`) {
	}
	if !strings.Contains(sc.Text(), "aborts the first boot of db") || !strings.Contains(sc.Text(), "web, whose first boot completed, is shut down") {
		t.Errorf("the first Ctrl+C says %s", sc.Text())
	}
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	for sc.Scan() {
	}
	up.Wait()
	if code := up.ProcessState.ExitCode(); code != exitSIGINT {
		t.Fatalf("exit %d, want 130", code)
	}
	if err := unix.Kill(-pgid, 0); err != unix.ESRCH {
		t.Errorf("the playbook's process group %d is still there (kill: %v)", pgid, err)
	}
	if s := r.playbookSignals(); !strings.Contains(s, "interrupt") {
		t.Errorf("the playbook was not sent SIGINT (got %q)", s)
	}
	w := loadWorld(filepath.Join(r.dir, "world.json"))
	if _, ok := w.Domains["shop-db"]; ok || w.Domains["shop-web"] != "shut off" {
		t.Errorf("domains %v; want shop-db gone, shop-web shut off", w.Domains)
	}
	if _, err := os.Stat(filepath.Join(r.home, "vms", "shop-db")); !os.IsNotExist(err) {
		t.Errorf("db's state dir is still there: %v", err)
	}
}
