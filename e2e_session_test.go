//go:build e2e

package main

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sessionUser is an unprivileged user the suite makes for itself: vmup runs
// as it, against the session libvirtd that libvirt's client starts for it.
type sessionUser struct {
	t          *testing.T
	name, home string
	uid        int
	bin        string // vmup, copied where the user may run it
	virshLog   string // every virsh argv vmup ran, one per line
}

func newSessionUser(t *testing.T) *sessionUser {
	s := &sessionUser{t: t, name: "vmupe2e"}
	exec.Command("userdel", "-r", s.name).Run() // left by an aborted run
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", s.name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	u, err := user.Lookup(s.name)
	if err != nil {
		t.Fatal(err)
	}
	s.home = u.HomeDir
	s.uid, _ = strconv.Atoi(u.Uid)
	t.Cleanup(s.remove)
	s.bin = filepath.Join(s.home, "vmup")
	s.virshLog = filepath.Join(s.home, "virsh.log")
	data, _ := os.ReadFile(vmupBinary)
	wrapper := "#!/bin/sh\nprintf '%s\\n' \"$*\" >> " + s.virshLog + "\nexec virsh \"$@\"\n"
	for file, content := range map[string][]byte{s.bin: data, filepath.Join(s.home, "virsh-logged"): []byte(wrapper)} {
		s.write(file, content, 0o755)
	}
	for _, f := range []string{"marker.yml", "slow.yml"} {
		data, _ := os.ReadFile(filepath.Join("testdata", f))
		s.write(filepath.Join(s.home, f), data, 0o644)
	}
	return s
}

func (s *sessionUser) write(file string, data []byte, mode os.FileMode) {
	if err := os.WriteFile(file, data, mode); err != nil {
		s.t.Fatal(err)
	}
	os.Chown(file, s.uid, s.uid)
}

// command runs vmup as the user, with the environment a login would give it
// (HOME, USER, XDG_*), no LIBVIRT_DEFAULT_URI: the URI is libvirt's default.
func (s *sessionUser) command(ctx context.Context, args ...string) *exec.Cmd {
	env := []string{"HOME=" + s.home, "USER=" + s.name, "LOGNAME=" + s.name, "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"XDG_CONFIG_HOME=" + s.home + "/.config", "XDG_DATA_HOME=" + s.home + "/.local/share",
		"XDG_STATE_HOME=" + s.home + "/.local/state", "XDG_CACHE_HOME=" + s.home + "/.cache",
		"VMUP_VIRSH=" + filepath.Join(s.home, "virsh-logged")}
	argv := append([]string{"-u", s.name, "--", "env", "-i"}, env...)
	argv = append(argv, append([]string{s.bin}, args...)...)
	return exec.CommandContext(ctx, "runuser", argv...)
}

func (s *sessionUser) vmup(timeout time.Duration, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := s.command(ctx, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Run()
	s.t.Logf("(as %s) vmup %s -> exit %d\n%s", s.name, strings.Join(args, " "), cmd.ProcessState.ExitCode(), errOut.String())
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// processes are the user's processes (the session libvirtd, its qemu, …).
func (s *sessionUser) processes() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name()), &st) == nil && int(st.Uid) == s.uid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove ends what libvirt's client started for the user (the session
// libvirtd lingers with --timeout=120), by pid, then removes the user.
func (s *sessionUser) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s.command(ctx, "destroy", "e2e-s").Run()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		for _, pid := range s.processes() {
			unix.Kill(pid, sig)
		}
		for deadline := time.Now().Add(10 * time.Second); len(s.processes()) > 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, err := exec.Command("userdel", "-r", s.name).CombinedOutput(); err != nil {
		s.t.Errorf("userdel: %v %s", err, out)
	}
	if _, err := user.Lookup(s.name); err == nil {
		s.t.Errorf("user %s is left", s.name)
	}
}

func (s *sessionUser) upArgs(playbook string, extra ...string) []string {
	dir := os.Getenv("VMUP_TEST_IMAGE_DIR")
	return append([]string{"up", "e2e-s", "--image", filepath.Join(dir, "disk.qcow2"),
		"--kernel", filepath.Join(dir, "vmlinuz"), "--initrd", filepath.Join(dir, "initrd.img"),
		"--cmdline", "root=LABEL=vmuproot rw console=ttyS0", "--domain-type", "qemu", "--restrict-network",
		"--memory", "1024", "--disk", "4", "--boot-timeout", "6m",
		"--playbook", filepath.Join(s.home, playbook)}, extra...)
}

// Issue 8: vmup as an unprivileged user, on libvirt's default URI for it
// (qemu:///session), needs no root: up → ssh → down → up (no second playbook
// run) → destroy, and a first boot aborted by two Ctrl+C.
func TestE2ESessionUnprivileged(t *testing.T) {
	if os.Getenv("VMUP_TEST_IMAGE_DIR") == "" {
		t.Fatal("VMUP_TEST_IMAGE_DIR is not set: run the suite with `make e2e`")
	}
	s := newSessionUser(t)
	start := time.Now()
	if _, _, code := s.vmup(10*time.Minute, s.upArgs("marker.yml", "-d")...); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	ready := time.Since(start)
	out, _, _ := s.vmup(time.Minute, "ssh", "e2e-s", "--", "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "ssh.service")
	us, _ := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(out), "ActiveEnterTimestampMonotonic="), 10, 64)
	t.Logf("TIMING session up -d to ready: %.1fs; guest boot to sshd: %.1fs", ready.Seconds(), (time.Duration(us) * time.Microsecond).Seconds())
	if out, _, _ := s.vmup(time.Minute, "ssh", "e2e-s", "--", "cat", "/var/tmp/vmup-marker"); !strings.Contains(out, "provisioned by vmup") {
		t.Errorf("marker: %q", out)
	}
	if _, _, code := s.vmup(3*time.Minute, "down", "e2e-s"); code != 0 {
		t.Fatalf("down: exit %d", code)
	}
	if _, stderr, code := s.vmup(10*time.Minute, "up", "e2e-s", "-d"); code != 0 || strings.Contains(stderr, "Provisioning") {
		t.Fatalf("second up: exit %d\n%s", code, stderr)
	}
	if out, _, _ := s.vmup(time.Minute, "ssh", "e2e-s", "--", "cat", "/var/tmp/vmup-runs"); strings.Count(out, "run") != 1 {
		t.Errorf("the playbook ran %d times, want 1", strings.Count(out, "run"))
	}
	if _, _, code := s.vmup(3*time.Minute, "destroy", "e2e-s"); code != 0 {
		t.Fatalf("destroy: exit %d", code)
	}

	// A foreground first boot, two Ctrl+C to its process group during the playbook.
	up := s.command(context.Background(), append(s.upArgs("slow.yml"), "--json")...)
	up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	up.Stderr = &stderr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-up.Process.Pid, syscall.SIGKILL) })
	for deadline := time.Now().Add(10 * time.Minute); !strings.Contains(stderr.String(), "TASK [long task]"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the playbook did not reach its task:\n%s", stderr.String())
		}
	}
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stderr.String(), "Press Ctrl+C again"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning after the first Ctrl+C:\n%s", stderr.String())
		}
	}
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	up.Wait()
	if code := up.ProcessState.ExitCode(); code != exitSIGINT {
		t.Errorf("aborted first boot: exit %d, want 130\n%s", code, stderr.String())
	}
	if out, _ := exec.Command("runuser", "-u", s.name, "--", "env", "HOME="+s.home, "XDG_CONFIG_HOME="+s.home+"/.config",
		"virsh", "-c", "qemu:///session", "list", "--all", "--name").CombinedOutput(); strings.Contains(string(out), "e2e-s") {
		t.Errorf("the aborted VM's domain is left: %s", out)
	}
	if _, err := os.Stat(filepath.Join(s.home, ".local/state/vmup/vms/e2e-s")); !os.IsNotExist(err) {
		t.Errorf("the aborted VM's state dir is left: %v", err)
	}

	// No root: every virsh call went to the session, and nothing vmup wrote is root's.
	log, _ := os.ReadFile(s.virshLog)
	calls := strings.Split(strings.TrimSpace(string(log)), "\n")
	for _, c := range calls {
		if !strings.HasPrefix(c, "-c qemu:///session ") {
			t.Errorf("a virsh call not on qemu:///session: %s", c)
		}
	}
	t.Logf("%d virsh calls, all on qemu:///session", len(calls))
	filepath.WalkDir(s.home, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(path, &st) == nil && st.Uid == 0 {
			t.Errorf("%s is owned by root", path)
		}
		if info, err := d.Info(); err == nil && strings.Contains(path, "/vms/") {
			if mode := info.Mode().Perm(); d.IsDir() && mode != 0o700 {
				t.Errorf("state dir %s has mode %v", path, mode)
			}
		}
		return nil
	})
}
