package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var sigByName = map[string]os.Signal{"INT": syscall.SIGINT, "TERM": syscall.SIGTERM, "HUP": syscall.SIGHUP}

// eventLog collects the JSON events of a run and lets a test wait for one.
type eventLog struct {
	mu     sync.Mutex
	cond   *sync.Cond
	events []jsonEvent
	buf    bytes.Buffer
	// onEvent, when set, sees each event as it is written.
	onEvent func(jsonEvent)
}

func newEventLog() *eventLog {
	l := &eventLog{}
	l.cond = sync.NewCond(&l.mu)
	return l
}

func (l *eventLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	sc := bufio.NewScanner(&l.buf)
	for sc.Scan() {
		var ev jsonEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err == nil {
			l.events = append(l.events, ev)
			if l.onEvent != nil {
				l.onEvent(ev)
			}
		}
	}
	l.buf.Reset()
	l.cond.Broadcast()
	return len(p), nil
}

// waitFor blocks until an event with this name (and message part) arrived.
func (l *eventLog) waitFor(t *testing.T, event, part string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	timer := time.AfterFunc(time.Until(deadline), func() { l.cond.Broadcast() })
	defer timer.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		for _, ev := range l.events {
			if ev.Event == event && strings.Contains(ev.Message, part) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q event containing %q; got %v", event, part, l.names())
		}
		l.cond.Wait()
	}
}

func (l *eventLog) names() []string {
	var n []string
	for _, ev := range l.events {
		n = append(n, ev.Event+":"+ev.Message)
	}
	return n
}

func (l *eventLog) has(event string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.events {
		if ev.Event == event {
			return true
		}
	}
	return false
}

type fakeClock struct {
	mu    sync.Mutex
	funcs []func()
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.funcs = append(c.funcs, f)
	return func() bool { return true }
}

// fire runs the newest timer, as if its time had come.
func (c *fakeClock) fire() {
	c.mu.Lock()
	f := c.funcs[len(c.funcs)-1]
	c.mu.Unlock()
	f()
}

type harness struct {
	t       *testing.T
	fake    *fakeRunner
	env     Env
	events  *eventLog
	stderr  *bytes.Buffer
	sigs    chan os.Signal
	clock   *fakeClock
	image   string
	imgHash string
	play    string
	dir     string
	killHit bool
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	h := &harness{t: t, fake: newFakeRunner(), events: newEventLog(), stderr: &bytes.Buffer{},
		sigs: make(chan os.Signal, 4), clock: &fakeClock{}, dir: dir}
	h.image = filepath.Join(dir, "img", "base.qcow2")
	os.MkdirAll(filepath.Dir(h.image), 0o755)
	os.WriteFile(h.image, []byte("fake image"), 0o644)
	sum := sha256.Sum256([]byte("fake image"))
	h.imgHash = hex.EncodeToString(sum[:])[:16]
	h.play = filepath.Join(dir, "img", "play.yml")
	os.WriteFile(h.play, []byte("- hosts: all\n"), 0o644)
	h.env = Env{Runner: h.fake, Clock: h.clock, Home: filepath.Join(dir, "home"),
		// Polls so slow they never fire: the recorded sequences stay exact.
		Poll: time.Hour, ConfirmWindow: 10 * time.Second, Signals: h.sigs}
	return h
}

func (h *harness) out() *Output {
	return newOutput(&lockedWriter{w: h.stderr}, h.events, "v1")
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.w)
}

func (l *lockedWriter) contains(s string) bool { return strings.Contains(l.String(), s) }

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// up runs `vmup up` in the background and returns its exit code channel.
func (h *harness) up(args ...string) chan int {
	h.t.Helper()
	o, _, err := parseCommand("up", args)
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	done := make(chan int, 1)
	go func() { done <- runUp(env, o) }()
	return done
}

// createDetached brings v1 up with -d, as the setup of tests about later commands.
func (h *harness) createDetached() {
	h.t.Helper()
	if code := h.wait(h.up(h.upArgs("-d")...)); code != 0 {
		h.t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
}

// upBlockedInPlaybook starts a foreground first boot and returns once its
// playbook runs (and keeps running until stopped).
func (h *harness) upBlockedInPlaybook() chan int {
	h.t.Helper()
	h.fake.playbook = "block"
	done := h.up(h.upArgs()...)
	<-h.fake.playbookStarted
	return done
}

func (h *harness) wait(done chan int) int {
	h.t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(30 * time.Second):
		h.t.Fatalf("vmup up did not end; events %v\nstderr:\n%s", h.events.names(), h.stderr)
		return -1
	}
}

// calls returns the recorded argv with temp paths made readable.
func (h *harness) calls() [][]string {
	var out [][]string
	for _, c := range h.fake.recorded() {
		var row []string
		for _, a := range c {
			a = strings.ReplaceAll(a, h.env.Home, "$HOME")
			a = strings.ReplaceAll(a, filepath.Dir(h.image), "$IMG")
			row = append(row, a)
		}
		out = append(out, row)
	}
	return out
}

func (h *harness) journal() *Journal {
	j, err := readJournal(pathsFor(h.env.Home, "v1"))
	if err != nil {
		h.t.Fatal(err)
	}
	return j
}

func argv(s string) []string { return strings.Fields(s) }

func seq(lines ...string) [][]string {
	var out [][]string
	for _, l := range lines {
		out = append(out, argv(l))
	}
	return out
}

// freshPrepare is what Preparing runs for a new VM named v1 with --domain-type qemu.
func (h *harness) freshPrepare() [][]string {
	base := "vmup-base-" + h.imgHash + ".qcow2"
	return seq(
		"virsh uri",
		"virsh domstate v1",
		"qemu-img info --output=json $IMG/base.qcow2",
		"virsh vol-info --pool vmup v1.qcow2",
		"virsh vol-info --pool vmup v1-seed.iso",
		"virsh pool-info vmup",
		"virsh pool-define-as vmup dir --target /var/lib/libvirt/images/vmup",
		"virsh pool-build vmup",
		"virsh pool-start vmup",
		"virsh pool-autostart vmup",
		"virsh vol-info --pool vmup "+base+".pruning",
		"virsh vol-info --pool vmup "+base,
		"virsh vol-info --pool vmup "+base+".complete",
		"virsh vol-create-as vmup "+base+" 10 --format raw",
		"virsh vol-upload --pool vmup "+base+" /dev/stdin",
		"virsh vol-create-as vmup "+base+".complete 0 --format raw",
		"virsh vol-create-as vmup v1.qcow2 4294967296 --format qcow2 --backing-vol "+base+" --backing-vol-format qcow2",
		// No prune deleted the base meanwhile.
		"virsh vol-info --pool vmup "+base+".pruning",
		"virsh vol-info --pool vmup "+base+".complete",
		"virsh vol-info --pool vmup "+base,
		"virsh vol-create-as vmup v1-seed.iso 55296 --format raw",
		"virsh vol-upload --pool vmup v1-seed.iso $HOME/vms/v1/upload.tmp",
		"virsh vol-create-as vmup v1-seed-boot.iso 55296 --format raw",
		"virsh vol-upload --pool vmup v1-seed-boot.iso $HOME/vms/v1/upload.tmp",
		"virsh vol-path --pool vmup v1.qcow2",
		"virsh vol-path --pool vmup v1-seed.iso",
		"virsh define $HOME/vms/v1/domain.xml",
		"virsh domuuid v1",
		"virsh vol-path --pool vmup v1-seed-boot.iso", // the disk's path is known by now
	)
}

func firstBoot() [][]string {
	return concat(seq(
		"virsh domstate v1 --reason",
		"virsh start v1",
		"ssh master",
		"ssh -O check",
	), cloudInitDone())
}

// completeFirstBoot attaches the seed of later boots, made in Preparing, and
// then deletes the first one, which holds the host's private key.
func completeFirstBoot() [][]string { return completeFirstBootAsked(true) }

// completeFirstBootAsked: pathKnown, this vmup asked the seed's path before
// (virsh.go keeps paths).
func completeFirstBootAsked(pathKnown bool) [][]string {
	return concat(seq(
		"virsh vol-info --pool vmup v1-seed-boot.iso",
		"virsh define $HOME/vms/v1/domain-later.xml",
		"virsh vol-delete --pool vmup v1-seed.iso",
	), keepProvisioned(pathKnown))
}

// keepProvisioned is the memory state of a first boot that completed: the
// snapshot, redefined to name the seed of later boots.
func keepProvisioned(pathKnown bool) [][]string {
	calls := concat([][]string{{"virsh", "snapshot-create-as", "v1", "vmup-provisioned", "--description",
		"vmup: the state VM v1's first boot completed in", "--atomic"}}, seq(
		"virsh snapshot-dumpxml v1 vmup-provisioned --security-info"))
	if !pathKnown {
		calls = append(calls, strings.Fields("virsh vol-path --pool vmup v1-seed-boot.iso"))
	}
	return append(calls, strings.Fields("virsh snapshot-create v1 $HOME/vms/v1/snapshot.xml --redefine"))
}

// abortWipeCalls is what a confirmed abort of v1's first boot runs: the
// domain goes off at once, then it is removed as by wipeCalls.
func abortWipeCalls(vols ...string) [][]string {
	return concat(seq("virsh metadata v1 "+metadataURI, "virsh destroy v1"), wipeCalls(false, vols...))
}

// wipeCalls is what removing VM v1 runs (wipeVM): its questions at once,
// then the changes.
func wipeCalls(running bool, vols ...string) [][]string {
	return concat(anyOrder(wipeAsks(vols...)), wipeChanges(running, vols...))
}

// destroyCalls is `vmup destroy v1` of a VM with a journal: libvirt is
// checked while the wipe's questions are asked.
func destroyCalls(running bool, vols ...string) [][]string {
	return concat(anyOrder(seq("virsh uri"), wipeAsks(vols...)), wipeChanges(running, vols...))
}

// wipeAsks is what removing v1 asks before it changes anything (askDomain);
// the pool is listed only when volumes go.
func wipeAsks(vols ...string) [][]string {
	calls := seq(
		"virsh metadata v1 "+metadataURI,
		"virsh domstate v1",
		"virsh snapshot-list v1 --external --name",
		"virsh snapshot-list v1 --internal --name",
		"virsh dumpxml v1",
	)
	if len(vols) > 0 {
		calls = append(calls, argv("virsh vol-list --pool vmup"))
	}
	return calls
}

// wipeChanges is what removing v1 changes: a running domain goes off, the
// domain is undefined, then every volume its journal lists goes at once.
func wipeChanges(running bool, vols ...string) [][]string {
	var calls [][]string
	if running {
		calls = seq("virsh destroy v1")
	}
	calls = append(calls, argv("virsh undefine v1 --snapshots-metadata --managed-save --nvram"))
	var deletes [][]string
	for _, vol := range vols {
		deletes = append(deletes, argv("virsh vol-delete --pool vmup "+vol))
	}
	return concat(calls, anyOrder(deletes))
}

// anyOrderMark heads a group of calls made concurrently; its second word
// is how many follow.
const anyOrderMark = "<any order>"

// anyOrder is calls made concurrently: checkCalls takes them in any order.
func anyOrder(parts ...[][]string) [][]string {
	calls := concat(parts...)
	return append([][]string{{anyOrderMark, strconv.Itoa(len(calls))}}, calls...)
}

// alignAnyOrder returns want without its anyOrder marks, and got with each
// marked group put in want's order where got holds the same calls there:
// cmp.Diff of the two then shows only real differences.
func alignAnyOrder(want, got [][]string) (flat, aligned [][]string) {
	aligned = slices.Clone(got)
	for i := 0; i < len(want); i++ {
		if len(want[i]) != 2 || want[i][0] != anyOrderMark {
			flat = append(flat, want[i])
			continue
		}
		n, _ := strconv.Atoi(want[i][1])
		group := want[i+1 : i+1+n]
		if at := len(flat); at+n <= len(aligned) && sameCalls(group, aligned[at:at+n]) {
			copy(aligned[at:], group)
		}
		flat = append(flat, group...)
		i += n
	}
	return flat, aligned
}

// sameCalls says whether a and b hold the same calls, in any order.
func sameCalls(a, b [][]string) bool {
	key := func(calls [][]string) []string {
		var keys []string
		for _, c := range calls {
			keys = append(keys, strings.Join(c, "\x00"))
		}
		slices.Sort(keys)
		return keys
	}
	return slices.Equal(key(a), key(b))
}

// The volumes of v1 during its first boot, and once it completed (the first
// seed, which holds the host's private key, is gone then).
var (
	firstBootVolumes = []string{"v1.qcow2", "v1-seed.iso", "v1-seed-boot.iso"}
	completedVolumes = []string{"v1.qcow2", "v1-seed-boot.iso"}
)

func concat(parts ...[][]string) [][]string {
	var out [][]string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func (h *harness) upArgs(extra ...string) []string {
	return append([]string{"v1", "--image", h.image, "--playbook", h.play, "--domain-type", "qemu",
		"--network", "user", "--disk", "4"}, extra...)
}

// natUpArgs is upArgs on libvirt's NAT network.
func (h *harness) natUpArgs(extra ...string) []string {
	args := h.upArgs(extra...)
	for i, a := range args {
		if a == "user" {
			args[i] = "nat"
		}
	}
	return args
}

func (h *harness) checkCalls(want [][]string) {
	h.t.Helper()
	want, got := alignAnyOrder(want, h.calls())
	if diff := cmp.Diff(want, got); diff != "" {
		h.t.Errorf("recorded argv mismatch (-want +got):\n%s\nstderr:\n%s", diff, h.stderr)
	}
}

func TestUpFreshDetached(t *testing.T) {
	h := newHarness(t)
	code := h.wait(h.up(h.upArgs("-d")...))
	if code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	h.checkCalls(concat(h.freshPrepare(), firstBoot(), seq("ansible-playbook play.yml"), completeFirstBoot()))
	j := h.journal()
	if !j.FirstBootDone || j.Phase != Detached || j.SSHPort == 0 {
		t.Errorf("journal = %+v; want first boot done, phase detached, an SSH port", j)
	}
	st, err := os.Stat(pathsFor(h.env.Home, "v1").Dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode = %v, %v; want 0700", st.Mode(), err)
	}
	key, err := os.Stat(pathsFor(h.env.Home, "v1").Key())
	if err != nil || key.Mode().Perm() != 0o600 {
		t.Errorf("key mode = %v, %v; want 0600", key.Mode(), err)
	}
}

// After Running, one Ctrl+C shuts down: no destroy, no undefine, exit 0.
func TestUpForegroundCtrlCAfterRunningShutsDown(t *testing.T) {
	h := newHarness(t)
	done := h.up(h.upArgs()...)
	h.events.waitFor(t, "ready", "")
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	h.checkCalls(concat(h.freshPrepare(), firstBoot(), seq("ansible-playbook play.yml"), completeFirstBoot(),
		seq("virsh shutdown v1 --mode acpi", "virsh domstate v1")))
	if j := h.journal(); j.Phase != Stopped || !j.FirstBootDone {
		t.Errorf("journal phase %s first_boot_done %v; want stopped, true", j.Phase, j.FirstBootDone)
	}
}

// Re-up of a completed VM boots it without the playbook; Ctrl+C there never wipes.
func TestReupOfCompletedVM(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	h.fake.calls = nil

	done := h.up("v1")
	h.events.waitFor(t, "phase", "booting -> running")
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("re-up: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(seq(
		"virsh uri",
		"virsh domstate v1 --reason",
		"virsh domstate v1 --reason",
		"virsh start v1",
		"ssh master",
		"ssh -O check",
		"virsh shutdown v1 --mode acpi",
		"virsh domstate v1",
	))
}

// A later `up` that finds a first boot whose vmup was killed reaps that run's
// playbook group, removes the VM and starts clean.
func TestReupAfterKilledFirstBoot(t *testing.T) {
	h := newHarness(t)
	done := h.upBlockedInPlaybook()
	// Simulate `kill -9` of that vmup: its journal stays, its process is gone.
	paths := pathsFor(h.env.Home, "v1")
	// A leftover of that run: a process in the playbook's group that names the
	// VM's state dir, as ansible and its ssh children do.
	self, _ := os.Executable()
	child := filepath.Join(paths.Dir, "fake-child")
	if err := os.Symlink(self, child); err != nil {
		t.Fatal(err)
	}
	leftover := exec.Command(child)
	leftover.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	bystander := exec.Command("sleep", "60") // same group, nothing of the VM: must survive
	bystander.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	bystander.SysProcAttr.Pgid = leftover.Process.Pid
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	defer bystander.Process.Kill()
	dead := exec.Command("true")
	dead.Run()
	j := h.journal()
	j.PID, j.PlaybookPGID = dead.Process.Pid, leftover.Process.Pid
	// Stop the blocked run without letting it clean up: close its signals.
	h.sigs <- syscall.SIGTERM
	h.wait(done)
	// The wipe above removed everything; put back the journal a killed run leaves.
	h.fake.world.Domains["v1"], h.fake.world.Owned["v1"] = "running", true
	h.fake.world.Volumes["vmup/v1.qcow2"], h.fake.world.Volumes["vmup/v1-seed.iso"] = true, true
	ensureDir(paths.Dir)
	writeJournal(paths, j)
	h.fake.calls = nil
	h.fake.playbook = "ok"

	code := h.wait(h.up(h.upArgs("-d")...))
	if code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	leftoverGone := make(chan error, 1)
	go func() { leftoverGone <- leftover.Wait() }()
	select {
	case <-leftoverGone:
	case <-time.After(10 * time.Second):
		leftover.Process.Kill()
		t.Errorf("the killed run's playbook group was not reaped")
	}
	if err := bystander.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a process of that group that is no part of the VM was killed: %v", err)
	}
	wipe := wipeCalls(true, firstBootVolumes...) // the killed run left it running
	prep := h.freshPrepare()
	base := "vmup-base-" + h.imgHash + ".qcow2"
	// The image is checked before the killed run's VM is wiped; the pool and
	// the base volume exist from the first run.
	prepAfter := concat(seq("qemu-img info --output=json $IMG/base.qcow2"), wipe,
		seq("virsh pool-info vmup", "virsh vol-info --pool vmup "+base+".pruning", "virsh vol-info --pool vmup "+base,
			"virsh vol-info --pool vmup "+base+".complete"), prep[16:])
	h.checkCalls(concat(seq("virsh uri"), prepAfter, firstBoot(), seq("ansible-playbook play.yml"), completeFirstBoot()))
	if !strings.Contains(h.stderr.String(), "interrupted") {
		t.Errorf("no word about the interrupted first boot:\n%s", h.stderr)
	}
}

// A failing playbook keeps the VM running (exit 3); the next up re-runs it.
func TestFailedPlaybookKeepsVMAndReupRetries(t *testing.T) {
	h := newHarness(t)
	h.fake.playbook = "fail"
	code := h.wait(h.up(h.upArgs()...))
	if code != exitProvision {
		t.Fatalf("exit %d, want %d\n%s", code, exitProvision, h.stderr)
	}
	h.checkCalls(concat(h.freshPrepare(), firstBoot(), seq("ansible-playbook play.yml")))
	if h.fake.world.Domains["v1"] != "running" {
		t.Errorf("domain is %q, want running", h.fake.world.Domains["v1"])
	}
	j := h.journal()
	if j.Phase != Failed || j.FailedIn != Provisioning || j.FirstBootDone {
		t.Errorf("journal %+v; want failed in provisioning, first boot not done", j)
	}
	for _, want := range []string{"vmup ssh v1", "console.log", "vmup destroy v1"} {
		if !strings.Contains(h.stderr.String(), want) {
			t.Errorf("failure report lacks %q:\n%s", want, h.stderr)
		}
	}

	h.fake.playbook = "ok"
	h.fake.calls = nil
	code = h.wait(h.up("v1", "-d"))
	if code != 0 {
		t.Fatalf("retry: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(concat(seq("virsh uri", "virsh domstate v1", "virsh domstate v1 --reason", "ssh master", "ssh -O check"),
		cloudInitDone(), seq("ansible-playbook play.yml"), completeFirstBootAsked(false)))
}

// First boot: one Ctrl+C warns and keeps going; a second within the window wipes.
func TestDoubleCtrlCDuringProvisioningWipes(t *testing.T) {
	h := newHarness(t)
	done := h.upBlockedInPlaybook()
	h.sigs <- syscall.SIGINT
	h.events.waitFor(t, "confirm_abort", "Press Ctrl+C again")
	if h.has("aborting") {
		t.Fatal("one Ctrl+C started an abort")
	}
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != exitSIGINT {
		t.Fatalf("exit %d, want 130\n%s", code, h.stderr)
	}
	h.checkCalls(concat(h.freshPrepare(), firstBoot(), seq("ansible-playbook play.yml"), abortWipeCalls(firstBootVolumes...)))
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Dir); !os.IsNotExist(err) {
		t.Errorf("state dir still there: %v", err)
	}
}

func (h *harness) has(event string) bool { return h.events.has(event) }

// The window closes after its time: the next Ctrl+C warns again instead of wiping.
func TestConfirmWindowExpires(t *testing.T) {
	h := newHarness(t)
	done := h.upBlockedInPlaybook()
	h.sigs <- syscall.SIGINT
	h.events.waitFor(t, "confirm_abort", "")
	h.clock.fire()
	h.events.waitFor(t, "abort_not_confirmed", "continuing")
	h.sigs <- syscall.SIGINT
	// The second warning proves the phase stayed in Provisioning.
	deadline := time.Now().Add(10 * time.Second)
	for h.countEvents("confirm_abort") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no second warning: %v", h.events.names())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if h.has("aborting") {
		t.Fatal("a Ctrl+C after the window closed wiped the VM")
	}
	h.sigs <- syscall.SIGTERM // like a confirmed abort
	if code := h.wait(done); code != exitSIGTERM {
		t.Fatalf("exit %d, want 143", code)
	}
}

func (h *harness) countEvents(name string) int {
	h.events.mu.Lock()
	defer h.events.mu.Unlock()
	n := 0
	for _, ev := range h.events.events {
		if ev.Event == name {
			n++
		}
	}
	return n
}

// Ctrl+C while preparing removes only what this run made.
func TestInterruptWhilePreparingRemovesPartialWork(t *testing.T) {
	h := newHarness(t)
	h.sigs <- syscall.SIGINT // queued before the controller starts: handled in Preparing
	code := h.wait(h.up(h.upArgs()...))
	if code != exitSIGINT {
		t.Fatalf("exit %d, want 130\n%s", code, h.stderr)
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Dir); !os.IsNotExist(err) {
		t.Errorf("state dir left behind: %v", err)
	}
	for v := range h.fake.world.Volumes {
		if !strings.HasPrefix(v, "vmup/vmup-base-") {
			t.Errorf("volume %s left behind", v)
		}
	}
	if len(h.fake.world.Domains) != 0 {
		t.Errorf("domains left behind: %v", h.fake.world.Domains)
	}
}

func TestExternalStopEndsForeground(t *testing.T) {
	h := newHarness(t)
	h.env.Poll = 5 * time.Millisecond
	h.fake.world.ExternalStop = 3
	code := h.wait(h.up(h.upArgs()...))
	if code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	if !strings.Contains(h.stderr.String(), "VM stopped externally") {
		t.Errorf("stderr lacks 'VM stopped externally':\n%s", h.stderr)
	}
}

func TestShutdownTimeoutForcesOff(t *testing.T) {
	h := newHarness(t)
	h.env.Poll = 5 * time.Millisecond
	h.fake.world.ShutdownIgnored = true
	done := h.up(h.upArgs("--shutdown-timeout", "50ms")...)
	h.events.waitFor(t, "ready", "")
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	calls := h.calls()
	var sawDestroy, sawUndefine bool
	for _, c := range calls {
		sawDestroy = sawDestroy || cmp.Equal(c, argv("virsh destroy v1"))
		sawUndefine = sawUndefine || c[0] == "virsh" && c[1] == "undefine"
	}
	if !sawDestroy || sawUndefine {
		t.Errorf("want a forced off (destroy) and no undefine; calls %v", calls)
	}
}

func TestBusyVM(t *testing.T) {
	h := newHarness(t)
	lock, _, err := tryLock(pathsFor(h.env.Home, "v1").Lock, "up")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	if code := h.wait(h.up(h.upArgs()...)); code != exitBusy {
		t.Fatalf("exit %d, want 5", code)
	}
	if !strings.Contains(h.stderr.String(), fmt.Sprintf("vmup: error: VM v1 is busy: vmup up (pid %d) is working on it", os.Getpid())) {
		t.Errorf("stderr: %s", h.stderr)
	}
}

func TestDownAndDestroy(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.calls = nil
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("down", []string{"v1"})
	if code := runDown(env, o); code != 0 {
		t.Fatalf("down: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(seq("virsh uri", "virsh domstate v1 --reason", "virsh shutdown v1 --mode acpi", "virsh domstate v1"))

	h.fake.calls = nil
	o, _, _ = parseCommand("destroy", []string{"v1"})
	if code := runDestroy(env, o); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(destroyCalls(false, completedVolumes...)) // shut off by the down
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Dir); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
	// Idempotent: a second destroy of the unknown VM is fine.
	if code := runDestroy(env, o); code != 0 {
		t.Errorf("second destroy: exit %d", code)
	}
}

func TestDestroyRefusesForeignDomain(t *testing.T) {
	h := newHarness(t)
	h.fake.world.Domains["v1"] = "running"
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("destroy", []string{"v1"})
	if code := runDestroy(env, o); code != exitFailed {
		t.Fatalf("exit %d, want 1", code)
	}
	if h.fake.world.Domains["v1"] != "running" {
		t.Error("a domain vmup did not create was touched")
	}
}

func TestReupWithChangedSettingsWhileRunning(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	code := h.wait(h.up("v1", "--memory", "4096"))
	if code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	if !strings.Contains(h.stderr.String(), "vmup down v1") {
		t.Errorf("no hint to run vmup down:\n%s", h.stderr)
	}
	if h.fake.world.Domains["v1"] != "running" {
		t.Error("the running VM was touched")
	}
}

// Changed settings of a shut-off VM are applied by redefining it (and growing its disk).
func TestReupRedefinesShutOffVMWithNewSettings(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	h.fake.calls = nil
	if code := h.wait(h.up("v1", "-d", "--memory", "4096", "--disk", "8")); code != 0 {
		t.Fatalf("re-up: exit %d\n%s", code, h.stderr)
	}
	h.checkCalls(seq(
		"virsh uri",
		"virsh domstate v1 --reason",
		"virsh vol-resize --pool vmup v1.qcow2 8589934592",
		"virsh vol-path --pool vmup v1.qcow2",
		"virsh vol-path --pool vmup v1-seed-boot.iso",
		"virsh define $HOME/vms/v1/domain.xml",
		"virsh domstate v1 --reason",
		"virsh start v1",
		"ssh master",
		"ssh -O check",
	))
	xml, _ := os.ReadFile(filepath.Join(h.env.Home, "vms", "v1", "domain.xml"))
	if !strings.Contains(string(xml), `<memory unit="MiB">4096</memory>`) || !strings.Contains(string(xml), "<uuid>") {
		t.Errorf("redefined XML lacks the new memory or the domain's UUID:\n%s", xml)
	}
	if j := h.journal(); j.MemoryMiB != 4096 || j.DiskGiB != 8 {
		t.Errorf("journal memory %d disk %d", j.MemoryMiB, j.DiskGiB)
	}
}

// A second Ctrl+C while the guest shuts down forces it off: still exit 0, never undefined.
func TestSecondCtrlCWhileStoppingForcesOff(t *testing.T) {
	h := newHarness(t)
	h.env.Poll = 5 * time.Millisecond
	h.fake.world.ShutdownIgnored = true
	done := h.up(h.upArgs()...)
	h.events.waitFor(t, "ready", "")
	h.sigs <- syscall.SIGINT
	h.events.waitFor(t, "stopping", "")
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	h.events.waitFor(t, "force_off", "")
	if h.fake.world.Domains["v1"] != "shut off" {
		t.Errorf("domain is %q, want shut off", h.fake.world.Domains["v1"])
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && (c[1] == "undefine" || c[1] == "vol-delete" && c[len(c)-1] != "v1-seed.iso") {
			t.Errorf("stopping touched the VM's definition: %v", c)
		}
	}
}

// On the NAT network the guest's address comes from its DHCP lease.
func TestUpNATFindsGuestAddress(t *testing.T) {
	h := newHarness(t)
	args := h.natUpArgs("-d")
	if code := h.wait(h.up(args...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	calls := h.calls()
	want := argv("virsh domifaddr v1 --source lease")
	found := false
	for _, c := range calls {
		found = found || cmp.Equal(c, want)
	}
	if !found {
		t.Errorf("no lease lookup; calls %v", calls)
	}
	if j := h.journal(); j.SSHHost != "127.0.0.1" || j.SSHPort != 22 {
		t.Errorf("journal endpoint %s:%d, want the lease address on port 22", j.SSHHost, j.SSHPort)
	}
	xml, _ := os.ReadFile(filepath.Join(h.env.Home, "vms", "v1", "domain.xml"))
	if !strings.Contains(string(xml), `<source network="default"></source>`) || strings.Contains(string(xml), "qemu:commandline") {
		t.Errorf("NAT domain XML:\n%s", xml)
	}
}

// Once the journal says the first boot completed, nothing else in it can send
// a later up down the first-boot path: not a phase left from a crash.
func TestCompletedFirstBootNeverWipedByLaterUp(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	j := h.journal()
	dead := exec.Command("true")
	dead.Run()
	j.Phase, j.PID = Provisioning, dead.Process.Pid
	writeJournal(paths, j)
	h.fake.calls = nil

	done := h.up("v1")
	h.events.waitFor(t, "phase", "preparing -> running") // the domain still runs
	h.sigs <- syscall.SIGINT
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	for _, c := range h.calls() {
		if c[0] == "virsh" && (c[1] == "undefine" || c[1] == "vol-delete") {
			t.Errorf("a later up removed parts of a completed VM: %v", c)
		}
	}
	if h.has("confirm_abort") || h.has("recovering") {
		t.Errorf("a later up took the first-boot path: %v", h.events.names())
	}
}

// A shut-off VM whose SSH port was taken meanwhile gets a free one.
func TestReupMovesOffATakenSSHPort(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	h.fake.world.Domains["v1"] = "shut off"
	old := h.journal().SSHPort
	squatter, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", old))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("re-up: exit %d\n%s", code, h.stderr)
	}
	port := h.journal().SSHPort
	xml, _ := os.ReadFile(filepath.Join(h.env.Home, "vms", "v1", "domain.xml"))
	if port == old || !strings.Contains(string(xml), fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:22", port)) {
		t.Errorf("SSH port %d (was %d); domain XML:\n%s", port, old, xml)
	}
}

// anyOrder lets a group's calls come in any order, and nothing else: not
// another call, one more or one less, nor a call of the group outside it.
func TestAnyOrderGroups(t *testing.T) {
	want := concat(seq("virsh uri"), anyOrder(seq("virsh a", "virsh b")), seq("virsh c"))
	for _, c := range []struct {
		got [][]string
		ok  bool
	}{
		{seq("virsh uri", "virsh a", "virsh b", "virsh c"), true},
		{seq("virsh uri", "virsh b", "virsh a", "virsh c"), true},
		{seq("virsh uri", "virsh b", "virsh c", "virsh a"), false},
		{seq("virsh uri", "virsh a", "virsh a", "virsh c"), false},
		{seq("virsh uri", "virsh a", "virsh c"), false},
		{seq("virsh a", "virsh uri", "virsh b", "virsh c"), false},
	} {
		flat, aligned := alignAnyOrder(want, c.got)
		if ok := cmp.Equal(flat, aligned); ok != c.ok {
			t.Errorf("%v: matched %v, want %v", c.got, ok, c.ok)
		}
	}
}
