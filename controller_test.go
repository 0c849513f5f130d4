package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reapGroup kills only the members of the group whose argv names the VM's
// state dir as a whole path component: v1's reaping spares .../vms/v12/….
func TestReapMatchesWholePathComponent(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	p := pathsFor(home, "v1")
	self, _ := os.Executable()
	child := filepath.Join(t.TempDir(), "fake-child")
	if err := os.Symlink(self, child); err != nil {
		t.Fatal(err)
	}
	other := pathsFor(home, "v12").Dir
	cases := []struct {
		args   []string
		reaped bool
	}{
		{[]string{other + "/x"}, false}, // the group's leader
		{[]string{p.Dir + "/x"}, true},
		{[]string{p.Dir}, true},
		{[]string{"-o", "ControlPath=" + p.Dir + "/ssh.sock"}, true},
		{[]string{"-o IdentityFile='" + p.Dir + "/id_ed25519' -o ControlMaster=no"}, true}, // ansible's joined ssh_args
		{[]string{"-o", "IdentityFile=" + other + "/id_ed25519"}, false},
		{[]string{home + "/vms/v1-old/x"}, false},
		{[]string{home + "/vms/v1.bak"}, false},
		{[]string{"/elsewhere" + p.Dir + "/x"}, false},
	}
	var procs []*exec.Cmd
	gone := make([]chan struct{}, len(cases))
	for i, c := range cases {
		cmd := exec.Command(child, c.args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if i > 0 {
			cmd.SysProcAttr.Pgid = procs[0].Process.Pid
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, cmd)
		gone[i] = make(chan struct{})
		go func() { cmd.Wait(); close(gone[i]) }()
	}
	pgid := procs[0].Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	// Each child's argv is in place once it runs the fake's code, not before.
	for _, cmd := range procs {
		waitCmdline(t, cmd.Process.Pid, child)
	}

	reapGroup(pgid, p)

	for i, c := range cases {
		if !c.reaped {
			continue
		}
		select {
		case <-gone[i]:
		case <-time.After(10 * time.Second):
			t.Errorf("argv %q names v1's state dir but was not reaped", c.args)
		}
	}
	// Every kill was sent before reapGroup returned, and the reaped ones are
	// dead: a spared one that was signalled would be dead by now too.
	for i, c := range cases {
		if c.reaped {
			continue
		}
		select {
		case <-gone[i]:
			t.Errorf("argv %q does not name v1's state dir but was killed", c.args)
		default:
		}
	}
}

// waitCmdline polls until pid's argv[0] is prog (after the fork, before the
// exec, it is still the parent's).
func waitCmdline(t *testing.T, pid int, prog string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if argv0, _, _ := strings.Cut(string(data), "\x00"); argv0 == prog {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never ran %s", pid, prog)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
