package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A state dir that is a symlink, or not the user's, is refused by every
// command before anything is written, chmodded or deleted through it.
func TestSymlinkedStateDirRefused(t *testing.T) {
	h := newHarness(t)
	// Someone else's directory, holding what looks like a VM's state.
	target := filepath.Join(h.dir, "elsewhere")
	os.Mkdir(target, 0o755)
	os.WriteFile(filepath.Join(target, "precious"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(h.env.Home, "vms"), 0o700)
	link := pathsFor(h.env.Home, "v1").Dir
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	run := map[string]func(o *Options) int{
		"up":         func(o *Options) int { return runUp(env, o) },
		"destroy":    func(o *Options) int { return runDestroy(env, o) },
		"down":       func(o *Options) int { return runDown(env, o) },
		"status":     func(o *Options) int { return runStatus(env, o) },
		"provision":  func(o *Options) int { return runProvision(env, o) },
		"ssh-config": func(o *Options) int { return runSSHConfig(env, o) },
	}
	for cmd, f := range run {
		args := []string{"v1"}
		if cmd == "up" {
			args = h.upArgs("-d")
		}
		o, _, err := parseCommand(cmd, args)
		if err != nil {
			t.Fatal(err)
		}
		h.stderr.Reset()
		if code := f(o); code != exitFailed {
			t.Errorf("%s: exit %d, want 1\n%s", cmd, code, h.stderr)
		}
		if !strings.Contains(h.stderr.String(), "vmup: error: state directory "+link+" is a symbolic link") {
			t.Errorf("%s: no clear error:\n%s", cmd, h.stderr)
		}
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was removed or replaced: %v %v", st, err)
	}
	entries, _ := os.ReadDir(target)
	if st, _ := os.Stat(target); st.Mode().Perm() != 0o755 || len(entries) != 1 {
		t.Errorf("the link's target was changed: mode %v, %d entries", st.Mode(), len(entries))
	}
	if len(h.calls()) != 0 {
		t.Errorf("programs ran: %v", h.calls())
	}
	if _, err := os.Stat(filepath.Join(h.env.Home, "locks")); !os.IsNotExist(err) {
		t.Errorf("locks dir made: %v", err)
	}
}

// A locks/ or vms/NAME directory of another user is not vmup's to use.
func TestStateDirOfAnotherUserRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	for _, dir := range []string{"vms/v1", "locks", "cache"} {
		t.Run(dir, func(t *testing.T) {
			h := newHarness(t)
			d := filepath.Join(h.env.Home, dir)
			os.MkdirAll(d, 0o755)
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			if code := h.wait(h.up(h.upArgs("-d")...)); code != exitFailed {
				t.Errorf("exit %d, want 1\n%s", code, h.stderr)
			}
			if !strings.Contains(h.stderr.String(), "vmup: error: state directory "+d+" belongs to uid 65534") {
				t.Errorf("no clear error:\n%s", h.stderr)
			}
			if st, _ := os.Stat(d); st.Mode().Perm() != 0o755 {
				t.Errorf("%s was chmodded to %v", dir, st.Mode())
			}
			if len(h.calls()) != 0 {
				t.Errorf("programs ran: %v", h.calls())
			}
		})
	}
}

// A bad name is found before VMUP_HOME is made or touched.
func TestInvalidNameTouchesNothingOnDisk(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	os.Mkdir(shared, 0o755)
	os.Chmod(shared, os.ModeSticky|0o777)
	for _, home := range []string{filepath.Join(dir, "new"), shared} {
		for _, args := range [][]string{{"up", ".."}, {"up", "v1", "--image", "/nonexistent.qcow2"}, {"destroy", ".."}, {"down", "../x"}} {
			cmd := exec.Command(vmupBinary, args...)
			cmd.Env = append(os.Environ(), "VMUP_HOME="+home, "VMUP_VIRSH=/nonexistent/virsh")
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != exitUsage {
				t.Errorf("vmup %s: exit %d, want 2\n%s", strings.Join(args, " "), code, out)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); !os.IsNotExist(err) {
		t.Errorf("VMUP_HOME was made: %v", err)
	}
	if st, _ := os.Stat(shared); st.Mode()&(os.ModePerm|os.ModeSticky) != 0o777|os.ModeSticky {
		t.Errorf("the existing VMUP_HOME was chmodded to %v", st.Mode())
	}
	if entries, _ := os.ReadDir(shared); len(entries) != 0 {
		t.Errorf("things were made in VMUP_HOME: %v", entries)
	}
}

// ensureDir makes what is missing 0700 and leaves existing directories alone.
func TestEnsureDirChmodsOnlyWhatItCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	os.Mkdir(dir, 0o755)
	os.Chmod(dir, os.ModeSticky|0o777)
	for _, d := range []string{dir, filepath.Join(dir, "a", "b")} {
		if err := ensureDir(d); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := os.Stat(dir); st.Mode()&(os.ModePerm|os.ModeSticky) != 0o777|os.ModeSticky {
		t.Errorf("existing dir chmodded to %v", st.Mode())
	}
	for _, d := range []string{"a", "a/b"} {
		if st, _ := os.Stat(filepath.Join(dir, d)); st.Mode().Perm() != 0o700 {
			t.Errorf("%s made %v, want 0700", d, st.Mode())
		}
	}
}
