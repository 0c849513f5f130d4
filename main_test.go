package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the fake virsh, ssh, qemu-img and
// ansible-playbook: it is linked under those names and told apart by argv[0].
var fakePrograms = []string{"virsh", "ssh", "qemu-img", "ansible-playbook", "fake-child", "virsh-session"}

var vmupBinary string

func TestMain(m *testing.M) {
	if prog := filepath.Base(os.Args[0]); slices.Contains(fakePrograms, prog) {
		os.Exit(fakeMain(prog, os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "vmup-bin-")
	if err != nil {
		panic(err)
	}
	vmupBinary = filepath.Join(dir, "vmup")
	build := exec.Command("go", "build", "-o", vmupBinary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building vmup: %v\n%s", err, out)
		os.Exit(1)
	}
	// No test reaches a distributor: an image name resolves under a dead
	// loopback port unless the test serves a mirror of its own.
	os.Setenv("VMUP_IMAGE_MIRROR", "http://127.0.0.1:9")
	resetIgnoredSignals()
	code := m.Run()
	stopTestGPG()
	os.RemoveAll(dir)
	os.Exit(code)
}

// resetIgnoredSignals: run under nohup (SIGHUP) or as a shell's background
// job (SIGINT), the tests' children would start with those signals ignored,
// which vmup keeps for SIGHUP (as it should) and a shell cannot trap. Caught
// here, they reach a child at its default, as from a terminal's session.
func resetIgnoredSignals() {
	for _, sig := range []os.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signal.Ignored(sig) {
			signal.Notify(make(chan os.Signal, 1), sig)
		}
	}
}

// fakeMain is one fake program run. Its world lives in $VMUP_FAKE_DIR.
func fakeMain(prog string, args []string) int {
	dir := os.Getenv("VMUP_FAKE_DIR")
	if prog == "virsh-session" {
		return fakeVirshSession(os.Stdin, os.Stdout, os.Stderr)
	}
	if prog == "fake-child" {
		time.Sleep(24 * time.Hour) // a grandchild in the playbook's process group, like ansible's ssh
		return 0
	}
	short := abbreviate(append([]string{prog}, args...))
	if prog == "virsh" && len(short) > 1 {
		waitGate(filepath.Join(dir, "gate-virsh-"+short[1]))
	}
	lockFile, _ := os.OpenFile(filepath.Join(dir, "world.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	unix.Flock(int(lockFile.Fd()), unix.LOCK_EX)
	line, _ := json.Marshal(short)
	appendFile(filepath.Join(dir, "calls.log"), string(line)+"\n")
	world := loadWorld(filepath.Join(dir, "world.json"))
	unlock := func() { unix.Flock(int(lockFile.Fd()), unix.LOCK_UN) }

	switch prog {
	case "virsh":
		if short[1] == "vol-upload" && os.Getenv("VMUP_FAKE_UPLOAD") == "block" {
			// A stuck upload: it reads nothing, and SIGINT and SIGTERM do not end it.
			signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
			world.Uploader[short[len(short)-2]] = os.Getpid()
			saveWorld(filepath.Join(dir, "world.json"), world)
			unlock()
			os.WriteFile(filepath.Join(dir, "upload.pid.tmp"), []byte(strconv.Itoa(os.Getpid())), 0o600)
			os.Rename(filepath.Join(dir, "upload.pid.tmp"), filepath.Join(dir, "upload.pid"))
			time.Sleep(24 * time.Hour)
		}
		out, errOut, code := world.virsh(short[1:], os.Stdin)
		saveWorld(filepath.Join(dir, "world.json"), world)
		unlock()
		fmt.Print(out)
		fmt.Fprint(os.Stderr, errOut)
		return code
	case "qemu-img":
		unlock()
		fmt.Print(`{"format": "qcow2", "virtual-size": 1073741824}`)
		return 0
	case "ssh":
		up := world.anyRunning()
		if slices.Contains(short, "master") {
			unlock()
			time.Sleep(24 * time.Hour) // the ControlMaster runs until vmup stops its group
		}
		if !up {
			unlock()
			fmt.Fprintln(os.Stderr, "ssh: connect to host 127.0.0.1: Connection refused")
			return 255
		}
		out, errOut, code, block := world.guest(remoteCommand(short))
		saveWorld(filepath.Join(dir, "world.json"), world)
		unlock()
		if block {
			time.Sleep(24 * time.Hour) // until vmup stops its group
		}
		fmt.Print(out)
		fmt.Fprint(os.Stderr, errOut)
		return code
	case "ansible-playbook":
		unlock()
		mode := os.Getenv("VMUP_FAKE_PLAYBOOK")
		if mode == "fill" {
			// A playbook whose output fills the disk VMUP_HOME is on.
			f, _ := os.Create(filepath.Join(os.Getenv("VMUP_HOME"), "filler"))
			for _, err := f.Write(make([]byte, 64<<10)); err == nil; _, err = f.Write(make([]byte, 64<<10)) {
			}
			f.Close()
		}
		switch mode {
		case "fail":
			fmt.Println("fatal: [vm]: FAILED!")
			fmt.Println("\nPLAY RECAP *********\nv1 : ok=1 changed=0 unreachable=0 failed=1 skipped=0")
			return 2
		case "unreachable":
			fmt.Println("fatal: [v1]: UNREACHABLE! => {\"changed\": false, \"unreachable\": true}")
			fmt.Println("\nPLAY RECAP *********\nv1 : ok=0 changed=0 unreachable=1 failed=0 skipped=0")
			return 4
		case "exit4":
			// ansible's 4 is also a parse error of the playbook: no recap.
			fmt.Fprintln(os.Stderr, "ERROR! A malformed block was encountered while loading a block")
			return 4
		case "exit1":
			fmt.Fprintln(os.Stderr, "ERROR! the playbook: play.yml could not be found")
			return 1
		}
		if mode != "block" && mode != "fail-bg" {
			fmt.Println("PLAY RECAP ok=1")
			return 0
		}
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		// Like ansible's ssh children, it names the VM's key in its argv.
		inventory := ""
		if i := slices.Index(args, "-i"); i >= 0 && i+1 < len(args) {
			inventory = args[i+1]
		}
		child := exec.Command(filepath.Join(filepath.Dir(os.Args[0]), "fake-child"),
			"-o", "IdentityFile="+filepath.Join(filepath.Dir(inventory), "id_ed25519"))
		child.Start()
		pgid, _ := unix.Getpgid(0)
		// Written whole or not at all: the test polls for this file.
		pidFile := filepath.Join(dir, "playbook.pid")
		os.WriteFile(pidFile+".tmp", []byte(fmt.Sprintf("%d %d %d", os.Getpid(), pgid, child.Process.Pid)), 0o600)
		os.Rename(pidFile+".tmp", pidFile)
		if mode == "fail-bg" {
			// A task's `sleep 300 &`: the playbook fails and leaves it behind.
			fmt.Println("fatal: [vm]: FAILED!")
			return 2
		}
		// Like ansible: the first SIGINT ends the run (after a moment of cleanup).
		sig := <-sigs
		appendFile(filepath.Join(dir, "playbook.signals"), sig.String()+"\n")
		return 99
	}
	return 127
}

// waitGate holds a fake program while the test keeps the gate file: the
// program says it waits (gate.waiting) and goes on once the gate is removed.
// Like a slow libvirt, it holds no lock of the fake world meanwhile.
func waitGate(gate string) {
	if _, err := os.Stat(gate); err != nil {
		return
	}
	os.WriteFile(gate+".waiting", nil, 0o600)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(gate); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gate makes the fake `virsh CMD` wait until the returned open is called.
func (r *binaryRun) gate(cmd string) (waiting func(), open func()) {
	path := filepath.Join(r.dir, "gate-virsh-"+cmd)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		r.t.Fatal(err)
	}
	waiting = func() {
		r.t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := os.Stat(path + ".waiting"); err == nil {
				return
			}
			if time.Now().After(deadline) {
				r.t.Fatalf("virsh %s never ran", cmd)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return waiting, func() { os.Remove(path) }
}

// start runs another vmup command in the background, in its own process group.
func (r *binaryRun) start(args ...string) (*exec.Cmd, *strings.Builder) {
	cmd := exec.Command(vmupBinary, args...)
	cmd.Env = r.env
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { unix.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	return cmd, out
}

func appendFile(path, s string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	f.WriteString(s)
	f.Close()
}

type binaryRun struct {
	t      *testing.T
	dir    string
	home   string
	cmd    *exec.Cmd
	events chan jsonEvent
	seen   []jsonEvent
	env    []string
}

// vmup runs another vmup command against the same VM and fakes.
func (r *binaryRun) vmup(args ...string) (string, int) {
	cmd := exec.Command(vmupBinary, args...)
	cmd.Env = r.env
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// waitPlaybook polls until the fake playbook runs and returns its pid, its
// process group and its child's pid.
func (r *binaryRun) waitPlaybook() (pid, pgid, child int) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		data, err := os.ReadFile(filepath.Join(r.dir, "playbook.pid"))
		if err == nil {
			if _, err := fmt.Sscan(string(data), &pid, &pgid, &child); err == nil {
				return pid, pgid, child
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatal("the playbook did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startVmup runs the built binary in its own process group, as a shell with
// job control runs a foreground job, with the fakes on its program paths.
func startVmup(t *testing.T, playbookMode string, args ...string) *binaryRun {
	return startVmupWith(t, nil, playbookMode, args...)
}

// newBinaryRun prepares `vmup up v1 …` with the fakes, not yet started.
func newBinaryRun(t *testing.T, playbookMode string, args ...string) *binaryRun {
	return newBinaryRunWith(t, nil, nil, playbookMode, args...)
}

// newBinaryRunWith prepares it behind a wrapper command, with more environment for the fakes.
func newBinaryRunWith(t *testing.T, wrapper, env []string, playbookMode string, args ...string) *binaryRun {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	self, _ := os.Executable()
	for _, p := range fakePrograms {
		if err := os.Symlink(self, filepath.Join(bin, p)); err != nil {
			t.Fatal(err)
		}
	}
	image := filepath.Join(dir, "base.qcow2")
	os.WriteFile(image, []byte("fake image"), 0o644)
	play := filepath.Join(dir, "play.yml")
	os.WriteFile(play, []byte("- hosts: all\n"), 0o644)
	r := &binaryRun{t: t, dir: dir, home: filepath.Join(dir, "home"), events: make(chan jsonEvent, 100)}
	all := append([]string{"up", "v1", "--image", image, "--playbook", play, "--domain-type", "qemu",
		"--network", "user", "--json"}, args...)
	argv := append(append(wrapper, vmupBinary), all...)
	r.cmd = exec.Command(argv[0], argv[1:]...)
	r.env = append(os.Environ(),
		"VMUP_HOME="+r.home, "VMUP_FAKE_DIR="+dir, "VMUP_FAKE_PLAYBOOK="+playbookMode, "VMUP_POLL=20ms",
		"VMUP_VIRSH="+filepath.Join(bin, "virsh"), "VMUP_SSH="+filepath.Join(bin, "ssh"),
		"VMUP_QEMU_IMG="+filepath.Join(bin, "qemu-img"), "VMUP_ANSIBLE_PLAYBOOK="+filepath.Join(bin, "ansible-playbook"))
	r.env = append(r.env, env...)
	r.cmd.Env = r.env
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return r
}

// startVmupWith runs vmup behind a wrapper command such as nohup.
func startVmupWith(t *testing.T, wrapper []string, playbookMode string, args ...string) *binaryRun {
	return startVmupEnv(t, wrapper, nil, playbookMode, args...)
}

// startVmupEnv runs vmup with more environment for the fakes.
func startVmupEnv(t *testing.T, wrapper, env []string, playbookMode string, args ...string) *binaryRun {
	r := newBinaryRunWith(t, wrapper, env, playbookMode, args...)
	r.cmd.Stderr = &testLogWriter{t: t}
	r.readEvents()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	return r
}

// readEvents sends the JSON events vmup writes on stdout to r.events.
func (r *binaryRun) readEvents() {
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		r.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev jsonEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				r.events <- ev
			}
		}
		close(r.events)
	}()
}

type testLogWriter struct{ t *testing.T }

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.t.Logf("vmup: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitEvent reads JSON events until one named event arrives.
func (r *binaryRun) waitEvent(event string) {
	r.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				r.t.Fatalf("vmup ended before %q; events %v", event, r.seen)
			}
			r.seen = append(r.seen, ev)
			if ev.Event == event {
				return
			}
		case <-timeout:
			r.t.Fatalf("no %q event within 60s; events %v", event, r.seen)
		}
	}
}

// ctrlC does what a terminal does on Ctrl+C: SIGINT to the foreground group.
func (r *binaryRun) ctrlC() {
	if err := unix.Kill(-r.cmd.Process.Pid, syscall.SIGINT); err != nil {
		r.t.Fatal(err)
	}
}

func (r *binaryRun) exitCode() int {
	r.t.Helper()
	for range r.events {
	}
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case <-done:
		return r.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		r.t.Fatal("vmup did not exit")
		return -1
	}
}

func (r *binaryRun) calls() [][]string {
	data, _ := os.ReadFile(filepath.Join(r.dir, "calls.log"))
	var out [][]string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var c []string
		json.Unmarshal([]byte(line), &c)
		out = append(out, c)
	}
	return out
}

func (r *binaryRun) called(cmd string) bool {
	want := strings.Fields(cmd)
	for _, c := range r.calls() {
		if len(c) >= len(want) && slices.Equal(c[:len(want)], want) {
			return true
		}
	}
	return false
}

func (r *binaryRun) playbookSignals() string {
	data, _ := os.ReadFile(filepath.Join(r.dir, "playbook.signals"))
	return string(data)
}

func TestBinaryDoubleCtrlCDuringPlaybook(t *testing.T) {
	r := startVmup(t, "block")
	pid, pgid, _ := r.waitPlaybook()
	if pgid == r.cmd.Process.Pid {
		t.Fatal("the playbook runs in vmup's process group: a terminal's Ctrl+C would reach it")
	}

	r.ctrlC()
	r.waitEvent("confirm_abort")
	if s := r.playbookSignals(); s != "" {
		t.Fatalf("the playbook got %q from the first Ctrl+C", s)
	}
	if unix.Kill(pid, 0) != nil {
		t.Fatal("the playbook died on the first Ctrl+C")
	}

	r.ctrlC()
	if code := r.exitCode(); code != exitSIGINT {
		t.Fatalf("exit %d, want 130", code)
	}
	if s := r.playbookSignals(); !strings.Contains(s, "interrupt") {
		t.Errorf("the playbook was not sent SIGINT after the 2nd Ctrl+C (got %q)", s)
	}
	r.checkWiped(pgid)
}

// checkWiped asserts what an aborted first boot leaves: no process of the
// playbook's group, a destroyed and undefined domain, no state dir.
func (r *binaryRun) checkWiped(pgid int) {
	t := r.t
	t.Helper()
	if err := unix.Kill(-pgid, 0); err != unix.ESRCH {
		t.Errorf("the playbook's process group %d is still there (kill: %v)", pgid, err)
	}
	for _, c := range []string{"virsh destroy v1", "virsh undefine v1"} {
		if !r.called(c) {
			t.Errorf("fake virsh never saw %q; calls %v", c, r.calls())
		}
	}
	if _, err := os.Stat(filepath.Join(r.home, "vms", "v1")); !os.IsNotExist(err) {
		t.Errorf("the VM's state dir is still there: %v", err)
	}
}

func TestBinaryCtrlCAfterRunningShutsDown(t *testing.T) {
	r := startVmup(t, "ok")
	r.waitEvent("ready")
	r.ctrlC()
	if code := r.exitCode(); code != exitOK {
		t.Fatalf("exit %d, want 0", code)
	}
	if !r.called("virsh shutdown v1 --mode acpi") {
		t.Errorf("no ACPI shutdown; calls %v", r.calls())
	}
	for _, c := range []string{"virsh destroy", "virsh undefine"} {
		if r.called(c) {
			t.Errorf("%q after Running; calls %v", c, r.calls())
		}
	}
	// A later up of that VM takes the Booting path: its Ctrl+C never wipes either.
	data, err := os.ReadFile(filepath.Join(r.home, "vms", "v1", "state.json"))
	var j Journal
	if err != nil || json.Unmarshal(data, &j) != nil || !j.FirstBootDone {
		t.Errorf("journal does not record the completed first boot: %s %v", data, err)
	}
}

func TestBinarySIGTERMDuringPlaybookWipes(t *testing.T) {
	r := startVmup(t, "block")
	r.waitPlaybook()
	unix.Kill(r.cmd.Process.Pid, syscall.SIGTERM)
	if code := r.exitCode(); code != exitSIGTERM {
		t.Fatalf("exit %d, want 143", code)
	}
	if !r.called("virsh undefine v1") {
		t.Errorf("no undefine after SIGTERM in the first boot")
	}
}

func TestBinaryUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"up", "Bad_Name"}, exitUsage, `vmup: error: invalid VM name "Bad_Name"`},
		{[]string{"up", "v1", "--image", "/nonexistent.qcow2"}, exitUsage, "vmup: error: --image /nonexistent.qcow2: no such file"},
		{[]string{"up", "v1", "--cpus", "x"}, exitUsage, "vmup: error: invalid value"},
		{[]string{"frobnicate"}, exitUsage, `vmup: error: unknown command "frobnicate"`},
		{[]string{"status", "nosuchvm"}, statusNoSuchVM, "vmup: error: no VM named nosuchvm"},
		{[]string{"down", "nosuchvm"}, exitFailed, "vmup: error: no VM named nosuchvm"},
		{[]string{"up", "v1", "--network", "nat", "-d", "--forward", "8080:80", "--image", "/etc/hostname"}, exitUsage, "--forward"},
	}
	for _, c := range cases {
		cmd := exec.Command(vmupBinary, c.args...)
		cmd.Env = append(os.Environ(), "VMUP_HOME="+t.TempDir(), "VMUP_VIRSH=/nonexistent/virsh")
		out, _ := cmd.CombinedOutput()
		if got := cmd.ProcessState.ExitCode(); got != c.code || !strings.Contains(string(out), c.msg) {
			t.Errorf("vmup %s: exit %d, output %q; want exit %d and %q", strings.Join(c.args, " "), got, out, c.code, c.msg)
		}
	}
}

func TestBinaryVersion(t *testing.T) {
	out, err := exec.Command(vmupBinary, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "vmup ") {
		t.Errorf("vmup version: %q %v", out, err)
	}
}

// Under nohup, SIGHUP stays ignored: the first boot goes on.
func TestBinaryNohupKeepsSIGHUPIgnored(t *testing.T) {
	r := startVmupWith(t, []string{"nohup"}, "block")
	r.waitPlaybook()
	unix.Kill(r.cmd.Process.Pid, syscall.SIGHUP)
	// SIGTERM afterwards is handled; had SIGHUP counted, vmup would be gone with 129.
	unix.Kill(r.cmd.Process.Pid, syscall.SIGTERM)
	if code := r.exitCode(); code != exitSIGTERM {
		t.Fatalf("exit %d, want 143 (SIGHUP must be ignored under nohup)", code)
	}
}

func TestBinaryDownAsksForegroundUpToStop(t *testing.T) {
	r := startVmup(t, "ok")
	r.waitEvent("ready")
	out, code := r.vmup("down", "v1")
	if code != 0 {
		t.Fatalf("down: exit %d\n%s", code, out)
	}
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up: exit %d, want 0", code)
	}
	if !r.called("virsh shutdown v1 --mode acpi") || r.called("virsh undefine") {
		t.Errorf("want a shutdown and no undefine; calls %v", r.calls())
	}
}

func TestBinaryDownRefusesFirstBootDestroyAbortsIt(t *testing.T) {
	r := startVmup(t, "block")
	r.waitPlaybook()
	out, code := r.vmup("down", "v1")
	if code != exitBusy || !strings.Contains(out, "vmup: hint:") {
		t.Fatalf("down during the first boot: exit %d, want 5 with a hint\n%s", code, out)
	}
	if out, code := r.vmup("up", "v1"); code != exitBusy || !strings.Contains(out, fmt.Sprintf("is busy: vmup up (pid %d) is working on it", r.cmd.Process.Pid)) {
		t.Errorf("a second up: exit %d, want 5\n%s", code, out)
	}
	out, code = r.vmup("destroy", "v1")
	if code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, out)
	}
	if code := r.exitCode(); code != exitSIGTERM {
		t.Errorf("up: exit %d, want 143", code)
	}
	if _, err := os.Stat(filepath.Join(r.home, "vms", "v1")); !os.IsNotExist(err) {
		t.Errorf("state dir left after destroy: %v", err)
	}
}

// Ctrl+C during `vmup provision` stops the playbook's group and keeps the VM.
func TestBinaryProvisionInterruptKeepsVM(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	cmd := exec.Command(vmupBinary, "provision", "v1")
	cmd.Env = append(r.env, "VMUP_FAKE_PLAYBOOK=block")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = &testLogWriter{t: t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	_, pgid, _ := r.waitPlaybook()
	unix.Kill(-cmd.Process.Pid, syscall.SIGINT)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != exitSIGINT {
		t.Errorf("provision: exit %d, want 130", code)
	}
	if err := unix.Kill(-pgid, 0); err != unix.ESRCH {
		t.Errorf("the playbook's group %d survived (kill: %v)", pgid, err)
	}
	if r.called("virsh destroy") || r.called("virsh undefine") {
		t.Errorf("provision touched the VM: %v", r.calls())
	}
	if _, err := os.Stat(filepath.Join(r.home, "vms", "v1", "state.json")); err != nil {
		t.Errorf("the VM's state is gone: %v", err)
	}
}

// A playbook that fails at once leaves a background process in its group;
// vmup stops it before it exits (nothing vmup started outlives it).
func TestPlaybookGrandchildReapedAfterNormalExit(t *testing.T) {
	r := startVmup(t, "fail-bg")
	_, _, child := r.waitPlaybook()
	t.Cleanup(func() { unix.Kill(child, syscall.SIGKILL) })
	if code := r.exitCode(); code != exitProvision {
		t.Fatalf("exit %d, want 3", code)
	}
	// Dead by the time vmup exited: gone, or a zombie init has yet to reap.
	if !dead(child) {
		t.Fatalf("the playbook's grandchild %d outlived vmup", child)
	}
}

// `down` while `destroy` works on the VM never signals the destroy (killed
// between `virsh destroy` and `undefine`, it would leave a half-destroyed VM):
// down waits a few seconds, then says who is busy with the VM.
func TestDownNeverSignalsADestroyInProgress(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	waiting, open := r.gate("destroy")
	destroy, destroyOut := r.start("destroy", "v1")
	waiting()

	out, code := r.vmup("down", "v1")
	want := fmt.Sprintf("vmup: error: VM v1 is busy: vmup destroy (pid %d) is working on it", destroy.Process.Pid)
	if code != exitBusy || !strings.Contains(out, want) ||
		!strings.Contains(out, "vmup: hint: wait for it to finish, then run the command again") {
		t.Errorf("down during a destroy: exit %d, want 5 with %q and a hint\n%s", code, want, out)
	}
	open()
	destroy.Wait()
	if code := destroy.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("destroy: exit %d (%v), want 0\n%s", code, destroy.ProcessState, destroyOut)
	}
	if !r.called("virsh undefine v1") {
		t.Errorf("the destroy never undefined the domain; calls %v", r.calls())
	}
}

// A lock file naming a pid that is now an unrelated process (here a sleep)
// never gets that process signalled, even while the lock is held.
func TestStalePidInLockNeverSignalled(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	bystander := exec.Command("sleep", "60")
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bystander.Process.Kill() })
	exited := make(chan struct{})
	go func() { bystander.Wait(); close(exited) }()
	// The lock is held (by this test), its record left by an earlier vmup
	// whose pid the sleep has now.
	lockPath := filepath.Join(r.home, "locks", "v1.lock")
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", bystander.Process.Pid)

	out, code := r.vmup("destroy", "v1")
	if code != exitBusy || !strings.Contains(out, "vmup: error: VM v1 is busy") || !strings.Contains(out, "vmup: hint:") {
		t.Errorf("destroy: exit %d, want 5 with a hint\n%s", code, out)
	}
	select {
	case <-exited:
		t.Errorf("destroy signalled pid %d, an unrelated process named by a stale lock record: %v", bystander.Process.Pid, bystander.ProcessState)
	default:
	}
	if r.called("virsh destroy") || r.called("virsh undefine") {
		t.Errorf("destroy went on without the lock; calls %v", r.calls())
	}
}

// Ctrl+C during a base upload whose virsh ignores SIGINT and SIGTERM: vmup
// escalates quickly, removes the partial volume and exits 130 within ~2 s.
func TestUploadStopsOnInterrupt(t *testing.T) {
	r := startVmupEnv(t, nil, []string{"VMUP_FAKE_UPLOAD=block"}, "ok")
	pidFile := filepath.Join(r.dir, "upload.pid")
	deadline := time.Now().Add(30 * time.Second)
	var uploader int
	for {
		if data, err := os.ReadFile(pidFile); err == nil {
			uploader, _ = strconv.Atoi(string(data))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { unix.Kill(uploader, syscall.SIGKILL) })
	start := time.Now()
	r.ctrlC()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatalf("vmup still runs 3s after Ctrl+C during the upload")
	}
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Errorf("vmup took %s to stop after Ctrl+C", took)
	}
	if code := r.cmd.ProcessState.ExitCode(); code != exitSIGINT {
		t.Errorf("exit %d, want 130", code)
	}
	if unix.Kill(uploader, 0) == nil {
		t.Error("the stuck virsh vol-upload outlived vmup")
	}
	world := loadWorld(filepath.Join(r.dir, "world.json"))
	for v := range world.Volumes {
		t.Errorf("volume %s left behind", v)
	}
}
