//go:build e2e && bench

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The benchmark (`make bench`, not part of CI): each operation's wall time
// through vmup next to the same operation run by hand with plain virsh, ssh
// and ansible-playbook, on the e2e suite's image under TCG. Runs alternate
// which side goes first, so the VM left running by the other side weighs on
// both alike. A figure never fails the test; a command that fails does.

const (
	benchPool       = "vmup"
	benchVMUP       = "vmupbench-vmup"  // the VM vmup makes, one per run
	benchHand       = "vmupbench-hand"  // the VM made by hand, one per run
	benchAbort      = "vmupbench-abort" // the first boot aborted by two Ctrl+C
	benchPlaybook   = "marker.yml"
	handSSHPoll     = 250 * time.Millisecond
	handBootTimeout = 6 * time.Minute // as upArgs' --boot-timeout
)

// The table's rows, in this order.
var benchRows = []struct{ key, label string }{
	{"first", "first boot with the playbook (`up -d`)"},
	{"snapshot", "by hand: snapshot with memory, counted in its first boot"},
	{"sshd", "guest's own boot to sshd, first boot"},
	{"boot", "re-up of a shut-off VM (`up -d`)"},
	{"bootbeyond", "re-up beyond the guest's own boot to sshd"},
	{"save", "suspend (`down --suspend`)"},
	{"resume", "re-up of a suspended VM (`up -d`)"},
	{"reset", "reset to the provisioned state (`reset`)"},
	{"down", "down (`down`)"},
	{"destroy", "destroy of a shut-off VM (`destroy`)"},
	{"abort", "second Ctrl+C in the playbook to exit (`up`)"},
}

type samples struct{ vmup, hand []time.Duration }

type bench struct {
	t        *testing.T
	home     string // VMUP_HOME of every vmup VM: one user, one hash memo
	imageDir string
	base     string // vmup's base volume of the image, the hand VM's backing store too
	diskSize int64  // bytes of a VM's disk, as vmup sizes it for --disk 4
	rows     map[string]*samples
}

func (b *bench) row(key string) *samples {
	if b.rows[key] == nil {
		b.rows[key] = &samples{}
	}
	return b.rows[key]
}

func (b *bench) vmupTook(key string, d time.Duration) {
	b.row(key).vmup = append(b.row(key).vmup, d)
	b.t.Logf("TIMING vmup %s: %.1fs", key, d.Seconds())
}

func (b *bench) handTook(key string, d time.Duration) {
	b.row(key).hand = append(b.row(key).hand, d)
	b.t.Logf("TIMING by hand %s: %.1fs", key, d.Seconds())
}

func TestBench(t *testing.T) {
	dir := os.Getenv("VMUP_TEST_IMAGE_DIR")
	if dir == "" {
		t.Fatal("VMUP_TEST_IMAGE_DIR is not set: run the benchmark with `make bench`")
	}
	// Even, so that each side goes first in half the runs: the first of a
	// pair shares the host with the other's VM running, the second mostly
	// not (a save measured 0.4–0.5 s slower first), and an odd count tilts
	// every median against the side that goes first once more.
	runs := countFromEnv(t, "VMUP_BENCH_RUNS", 4)
	// The operations of a few seconds repeat within a run: their medians
	// otherwise move by a tenth of a second from one run of the bench to the next.
	repeats := countFromEnv(t, "VMUP_BENCH_REPEATS", 3)
	if runs%2 == 1 {
		t.Logf("VMUP_BENCH_RUNS=%d is odd: vmup goes first once more than by hand, which its medians pay for", runs)
	}
	// A killed run (go test's timeout, Ctrl+C) runs no cleanup: its VMs go now.
	for _, name := range []string{benchVMUP, benchHand, benchAbort} {
		if removeByHand(name) {
			t.Logf("removed %s, left by an earlier run", name)
		}
	}
	b := &bench{t: t, home: t.TempDir(), imageDir: dir, rows: map[string]*samples{}}
	handRoot := t.TempDir()
	t.Cleanup(func() {
		for _, name := range []string{benchAbort, benchVMUP} {
			b.vmupVM(name).vmup(5*time.Minute, "destroy", name)
		}
		removeByHand(benchHand)
		for _, name := range []string{benchAbort, benchVMUP} {
			b.vmupVM(name).checkNothingLeft()
		}
	})

	for i := range runs {
		first := "vmup"
		if i%2 == 1 {
			first = "by hand"
		}
		t.Logf("run %d of %d: %s first", i+1, runs, first)
		// Alone on the host: no other VM of this run is up yet.
		b.abortDuringProvisioning()
		if b.base == "" {
			b.baseVolume() // uploaded by vmup in the first boot just aborted
		}
		e := b.vmupVM(benchVMUP)
		runDir := filepath.Join(handRoot, strconv.Itoa(i))
		if err := os.Mkdir(runDir, 0o700); err != nil {
			t.Fatal(err)
		}
		h := &handVM{t: t, name: benchHand, dir: runDir, imageDir: dir, base: b.base, diskSize: b.diskSize}
		// settle waits, untimed, until each running guest finished its boot
		// (cloud-init's last stages run for seconds after sshd answers), so
		// one side's operation never runs beside the other's guest still at
		// work: without it, whoever went first in a pair was the slower, by
		// 0.4-0.9 s in a save, a resume and a down.
		settle := func() {
			if st, _ := virsh("domstate", benchVMUP); st == "running" {
				e.vmup(5*time.Minute, "ssh", benchVMUP, "--", "systemctl", "is-system-running", "--wait")
			}
			if st, _ := virsh("domstate", benchHand); st == "running" && h.port != 0 {
				h.ssh(5*time.Minute, "systemctl", "is-system-running", "--wait")
			}
		}
		// bothInTurn runs the pair in the order of turn's parity.
		bothInTurn := func(turn int, viaVmup, byHand func()) {
			if turn%2 == 0 {
				viaVmup()
				settle()
				byHand()
			} else {
				byHand()
				settle()
				viaVmup()
			}
			settle()
		}
		both := func(viaVmup, byHand func()) { bothInTurn(i, viaVmup, byHand) }

		both(func() {
			b.vmupTook("first", timed(func() { e.must(10*time.Minute, e.upArgs(benchPlaybook, "-d")...) }))
			b.vmupTook("sshd", e.guestBootToSSHD())
		}, func() {
			first := timed(func() { h.firstBoot(filepath.Join("testdata", benchPlaybook)) })
			h.closeAnsibleMasters()
			// vmup records the provisioned state in its first boot; by hand it is one more step.
			snapshot := timed(h.snapshot)
			b.handTook("first", first+snapshot)
			b.handTook("snapshot", snapshot)
			b.handTook("sshd", h.guestBootToSSHD())
		})

		both(func() {
			e.must(3*time.Minute, "down", e.name)
			took := timed(func() { e.must(10*time.Minute, "up", e.name, "-d") })
			b.vmupTook("boot", took)
			// What the guest's own boot, which varies by seconds, leaves.
			b.vmupTook("bootbeyond", took-nonZero(t, e.guestBootToSSHD()))
		}, func() {
			h.shutdown()
			took := timed(h.start)
			b.handTook("boot", took)
			b.handTook("bootbeyond", took-nonZero(t, h.guestBootToSSHD()))
		})

		for k := range repeats {
			bothInTurn(i+k, func() {
				b.vmupTook("save", timed(func() { e.must(5*time.Minute, "down", "--suspend", e.name) }))
				b.vmupTook("resume", timed(func() { e.must(10*time.Minute, "up", e.name, "-d") }))
			}, func() {
				b.handTook("save", timed(func() { mustVirsh(t, "managedsave", h.name) }))
				b.handTook("resume", timed(h.start))
			})
		}

		for k := range repeats {
			bothInTurn(i+k, func() {
				b.vmupTook("reset", timed(func() { e.must(10*time.Minute, "reset", e.name) }))
			}, func() {
				b.handTook("reset", timed(h.revert))
			})
		}

		both(func() {
			b.vmupTook("down", timed(func() { e.must(3*time.Minute, "down", e.name) }))
		}, func() {
			b.handTook("down", timed(h.shutdown))
		})

		both(func() {
			b.vmupTook("destroy", timed(func() { e.must(3*time.Minute, "destroy", e.name) }))
			e.checkNothingLeft()
		}, func() {
			b.handTook("destroy", timed(h.destroy))
			h.checkNothingLeft()
		})
	}

	table := b.table(runs, repeats)
	t.Log("\n" + table)
	fmt.Println(table)
	if out := os.Getenv("VMUP_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			t.Errorf("VMUP_BENCH_OUT: %v", err)
		}
	}
}

func (b *bench) vmupVM(name string) *e2e {
	return &e2e{t: b.t, home: b.home, imageDir: b.imageDir, name: name}
}

// countFromEnv is the count the environment variable name gives, or def.
func countFromEnv(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a number, 1 or more", name, s)
	}
	return n
}

// nonZero is d, a figure read from the guest, which must have been read.
func nonZero(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	if d <= 0 {
		t.Fatal("could not read the guest's boot to sshd")
	}
	return d
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// abortDuringProvisioning times a foreground first boot's end after the
// second Ctrl+C during the playbook: the wipe, with nothing left.
func (b *bench) abortDuringProvisioning() {
	t := b.t
	e := b.vmupVM(benchAbort)
	f := e.startUp(e.upArgs("slow.yml")...)
	f.waitEvent("step_started", "Provisioning", 10*time.Minute)
	// As a user would: once the playbook's task runs in the guest.
	inventory := pathsFor(b.home, benchAbort).Inventory()
	deadline := time.Now().Add(2 * time.Minute)
	for len(processesMentioning(inventory)) == 0 || !strings.Contains(f.stderr.String(), "TASK [long task]") {
		if time.Now().After(deadline) {
			t.Fatalf("the playbook did not start its task:\n%s", f.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.signalGroup(syscall.SIGINT)
	f.waitEvent("confirm_abort", "", 30*time.Second)
	start := time.Now()
	f.signalGroup(syscall.SIGINT)
	code := f.exitCode(3 * time.Minute)
	b.vmupTook("abort", time.Since(start))
	if code != exitSIGINT {
		t.Fatalf("aborted first boot: exit %d, want 130", code)
	}
	e.checkNothingLeft()
}

// baseVolume finds the base volume vmup made of the image, which must be in
// the pool, and sizes the disk as vmup does: --disk, or the image's size if larger.
func (b *bench) baseVolume() {
	ctx := context.Background()
	image := filepath.Join(b.imageDir, "disk.qcow2")
	sum, err := hashPath(ctx, image)
	if err != nil {
		b.t.Fatal(err)
	}
	format, size, err := inspectImage(ctx, execRunner{}, image)
	if err != nil {
		b.t.Fatal(err)
	}
	b.base = baseVolumeName(BaseImage{SHA256: sum, Format: format})
	mustVirsh(b.t, "vol-info", "--pool", benchPool, b.base)
	b.diskSize = max(int64(4)<<30, size)
}

// table is the Markdown table of the medians.
func (b *bench) table(runs, repeats int) string {
	var s strings.Builder
	fmt.Fprintf(&s, "Medians of %d runs each (suspend, resume and reset %d times a run), vmup and by hand alternating which goes first (QEMU TCG, the e2e suite's direct-kernel image).\n\n",
		runs, repeats)
	s.WriteString("| operation | vmup (s) | by hand (s) | ratio |\n|---|---|---|---|\n")
	for _, r := range benchRows {
		v, h := median(b.row(r.key).vmup), median(b.row(r.key).hand)
		ratio := "—"
		if v > 0 && h > 0 && r.key != "sshd" {
			ratio = fmt.Sprintf("%.2f", v.Seconds()/h.Seconds())
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s |\n", r.label, seconds(v), seconds(h), ratio)
	}
	return s.String()
}

// median of ds; 0 for none.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func seconds(d time.Duration) string {
	if d == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f", d.Seconds())
}

func mustVirsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := virsh(args...)
	if err != nil {
		t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// removeByHand removes a domain and its volumes with plain virsh, in
// whatever state they are; it says whether there was anything.
func removeByHand(name string) bool {
	_, err := virsh("domstate", name)
	found := err == nil
	if found {
		virsh("destroy", name)
		virsh("undefine", name, "--managed-save", "--snapshots-metadata")
	}
	vols, _ := virsh("vol-list", benchPool)
	for _, line := range strings.Split(vols, "\n") {
		if f := strings.Fields(line); len(f) > 0 && (f[0] == name+".qcow2" || strings.HasPrefix(f[0], name+"-")) {
			virsh("vol-delete", "--pool", benchPool, f[0])
			found = true
		}
	}
	return found
}

// handVM is the VM a person makes with plain tools, in the fewest steps
// that give what `vmup up` gives: an overlay on the same base volume, a
// NoCloud seed with the same user-data, the same domain, a login, and the
// playbook run once cloud-init is done. No sleeps but the polls' own.
type handVM struct {
	t        *testing.T
	name     string
	dir      string // key, seed, inventory, domain XML, console log
	imageDir string
	base     string
	diskSize int64
	port     int // QEMU's loopback forward to the guest's sshd
}

func (h *handVM) key() string { return filepath.Join(h.dir, "id_ed25519") }

func (h *handVM) firstBoot(playbook string) {
	t := h.t
	client, err := newSSHKey("bench")
	if err != nil {
		t.Fatal(err)
	}
	host, err := newSSHKey("bench-host")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.key(), client.Private, 0o600); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(h.dir, "seed.iso")
	iso := buildISO("cidata", map[string][]byte{
		"meta-data": metaData(h.name, fmt.Sprintf("hand-%s-%d", h.name, time.Now().UnixNano())),
		"user-data": userData(h.name, "vmup", client.Public, host),
	})
	if err := os.WriteFile(seed, iso, 0o600); err != nil {
		t.Fatal(err)
	}
	disk, seedVol := h.name+".qcow2", h.name+"-seed.iso"
	mustVirsh(t, "vol-create-as", benchPool, disk, strconv.FormatInt(h.diskSize, 10), "--format", "qcow2",
		"--backing-vol", h.base, "--backing-vol-format", "qcow2")
	mustVirsh(t, "vol-create-as", benchPool, seedVol, strconv.Itoa(len(iso)), "--format", "raw")
	mustVirsh(t, "vol-upload", "--pool", benchPool, seedVol, seed)

	h.port = freeLoopbackPort(t)
	data, err := domainXMLFor(DomainSpec{
		Name: h.name, Type: "qemu", CPUs: 2, MemoryMiB: 1024,
		Disk: mustVirsh(t, "vol-path", "--pool", benchPool, disk), Seed: mustVirsh(t, "vol-path", "--pool", benchPool, seedVol),
		Kernel: filepath.Join(h.imageDir, "vmlinuz"), Initrd: filepath.Join(h.imageDir, "initrd.img"),
		Cmdline: "root=LABEL=vmuproot rw console=ttyS0", Network: "user", SSHPort: h.port, Restrict: true,
		ConsoleLog: filepath.Join(h.dir, "console.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Not vmup's: without the metadata by which vmup knows its own domains.
	data = regexp.MustCompile(`(?s)\s*<metadata>.*?</metadata>`).ReplaceAll(data, nil)
	domain := filepath.Join(h.dir, "domain.xml")
	if err := os.WriteFile(domain, data, 0o600); err != nil {
		t.Fatal(err)
	}
	mustVirsh(t, "define", domain)
	h.start()

	h.waitCloudInit()
	h.ansiblePlaybook(playbook)
}

// start starts the domain (or restores its managed save) and waits for a login.
func (h *handVM) start() {
	mustVirsh(h.t, "start", h.name)
	h.waitSSH()
}

func (h *handVM) waitSSH() {
	deadline := time.Now().Add(handBootTimeout)
	for {
		if _, code := h.ssh(15*time.Second, "true"); code == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no SSH login on %s within %s", h.name, handBootTimeout)
		}
		time.Sleep(handSSHPoll)
	}
}

// waitCloudInit asks again when ssh itself failed (exit 255): sshd may
// restart while cloud-init sets it up. Exit 2 (newer cloud-init) is done with
// recoverable errors, which vmup only warns about.
func (h *handVM) waitCloudInit() {
	deadline := time.Now().Add(handBootTimeout)
	for {
		out, code := h.ssh(handBootTimeout, "cloud-init", "status", "--wait")
		if code == 0 || code == 2 {
			return
		}
		if code != 255 || time.Now().After(deadline) {
			h.t.Fatalf("cloud-init status --wait: exit %d\n%s", code, out)
		}
		time.Sleep(handSSHPoll)
	}
}

// ssh runs a command in the guest; a run past timeout counts as exit -1.
func (h *handVM) ssh(timeout time.Duration, command ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := append([]string{"-F", "none", "-i", h.key(), "-o", "IdentitiesOnly=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-p", strconv.Itoa(h.port), "vmup@127.0.0.1", "--"}, command...)
	out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err != nil && ctx.Err() != nil:
		return string(out), -1
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		h.t.Fatal(err)
	}
	return string(out), 0
}

// ansiblePlaybook runs the playbook with ansible's own ssh defaults, and
// vmup's speed settings (pipelining), so the figure compares vmup, not them.
func (h *handVM) ansiblePlaybook(playbook string) {
	t := h.t
	inventory := filepath.Join(h.dir, "inventory.yml")
	inv, _ := json.Marshal(map[string]any{"vmup": map[string]any{"hosts": map[string]any{h.name: map[string]any{
		"ansible_host": "127.0.0.1", "ansible_port": h.port, "ansible_user": "vmup",
		"ansible_ssh_private_key_file": h.key(), "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null",
		"ansible_python_interpreter": "auto_silent",
	}}}})
	if err := os.WriteFile(inventory, inv, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ansible-playbook", "-i", inventory, playbook)
	cmd.Env = append(os.Environ(), "ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_PIPELINING=True",
		"ANSIBLE_RETRY_FILES_ENABLED=False", "ANSIBLE_SSH_CONTROL_PATH_DIR="+filepath.Join(h.dir, "cp"))
	// Its own group, so a timeout ends its ssh children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("ansible-playbook: %v\n%s", err, out.String())
	}
}

// closeAnsibleMasters ends the ControlPersist masters ansible left (60 s otherwise).
func (h *handVM) closeAnsibleMasters() {
	socks, _ := filepath.Glob(filepath.Join(h.dir, "cp", "*"))
	for _, sock := range socks {
		exec.Command("ssh", "-F", "none", "-o", "ControlPath="+sock, "-O", "exit", "vmup@127.0.0.1").Run()
	}
}

func (h *handVM) snapshot() {
	mustVirsh(h.t, "snapshot-create-as", h.name, "provisioned")
}

func (h *handVM) revert() {
	mustVirsh(h.t, "snapshot-revert", h.name, "provisioned", "--running")
	h.waitSSH()
}

// shutdown asks for an ACPI shutdown and polls until the domain is off.
func (h *handVM) shutdown() {
	mustVirsh(h.t, "shutdown", h.name)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if st, _ := virsh("domstate", h.name); st == "shut off" {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s did not shut down within 3m", h.name)
		}
		time.Sleep(handSSHPoll)
	}
}

// destroy removes the shut-off domain (its snapshot's metadata with it) and its volumes.
func (h *handVM) destroy() {
	mustVirsh(h.t, "undefine", h.name, "--managed-save", "--snapshots-metadata")
	mustVirsh(h.t, "vol-delete", "--pool", benchPool, h.name+".qcow2")
	mustVirsh(h.t, "vol-delete", "--pool", benchPool, h.name+"-seed.iso")
}

func (h *handVM) guestBootToSSHD() time.Duration {
	out, _ := h.ssh(time.Minute, "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "ssh.service")
	us, _ := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(out), "ActiveEnterTimestampMonotonic="), 10, 64)
	return time.Duration(us) * time.Microsecond
}

func (h *handVM) checkNothingLeft() {
	t := h.t
	if _, err := virsh("domstate", h.name); err == nil {
		t.Errorf("domain %s is still defined", h.name)
	}
	vols, _ := virsh("vol-list", benchPool)
	for _, line := range strings.Split(vols, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], h.name) {
			t.Errorf("volume %s is left", f[0])
		}
	}
	if procs := processesMentioning(h.dir); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
}

func freeLoopbackPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
