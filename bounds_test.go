package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Sizes are bounded before anything is created: --disk 8589934592 made a
// 1 GiB disk (its bytes overflowed) and --memory 99999999999999 was accepted.
func TestSizeBounds(t *testing.T) {
	image := filepath.Join(t.TempDir(), "base.qcow2")
	os.WriteFile(image, []byte("x"), 0o644)
	cases := []struct {
		args []string
		ok   bool
	}{
		{[]string{"--disk", "8589934592"}, false},
		{[]string{"--disk", "16385"}, false},
		{[]string{"--disk", "16384"}, true},
		{[]string{"--disk", "0"}, false},
		{[]string{"--disk", "-1"}, false},
		{[]string{"--memory", "99999999999999"}, false},
		{[]string{"--memory", "4194305"}, false},
		{[]string{"--memory", "4194304"}, true},
		{[]string{"--memory", "64"}, true},
		{[]string{"--memory", "63"}, false},
		{[]string{"--cpus", "0"}, false},
		{[]string{"--cpus", "512"}, true},
		{[]string{"--cpus", "513"}, false},
		{[]string{"--cpus", "99999999999999999999"}, false},
	}
	for _, c := range cases {
		o, _, err := parseCommand("up", append([]string{"v1", "--image", image}, c.args...))
		if err == nil {
			err = validateUp(o)
		}
		var ue *usageError
		if c.ok && err != nil || !c.ok && !errors.As(err, &ue) {
			t.Errorf("%s: err %v, want ok=%v (or a usage error)", strings.Join(c.args, " "), err, c.ok)
		}
	}
	// vmup.json's values go through the same bounds.
	t.Chdir(t.TempDir())
	os.WriteFile(configFile, []byte(`{"memory": 99999999999999, "image": "`+image+`"}`), 0o600)
	o, _, err := parseCommand("up", []string{"v1"})
	if err == nil {
		err = validateUp(o)
	}
	if err == nil {
		t.Error("vmup.json memory 99999999999999 accepted")
	}
}

// An oversized --disk exits 2 before VMUP_HOME or anything else is made.
func TestBinaryOversizedDiskCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "base.qcow2")
	os.WriteFile(image, []byte("x"), 0o644)
	home := filepath.Join(dir, "home")
	cmd := exec.Command(vmupBinary, "up", "v1", "--image", image, "--disk", "8589934592")
	cmd.Env = append(os.Environ(), "VMUP_HOME="+home, "VMUP_VIRSH=/nonexistent/virsh")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != exitUsage || !strings.Contains(string(out), "vmup: error: --disk 8589934592") {
		t.Errorf("exit %d, want 2 with an error naming --disk\n%s", code, out)
	}
	if _, err := os.Stat(home); !os.IsNotExist(err) {
		t.Errorf("VMUP_HOME was made: %v", err)
	}
}

// More than the host has is allowed, with a warning.
func TestSizeBeyondHostWarns(t *testing.T) {
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("-d", "--memory", "4194304", "--cpus", "512")...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	want := []string{"vmup: warning: --memory 4194304 is more than this host has ("}
	if runtime.NumCPU() < 512 {
		want = append(want, "vmup: warning: --cpus 512 is more than this host has (")
	}
	for _, w := range want {
		if !strings.Contains(h.stderr.String(), w) {
			t.Errorf("stderr lacks %q:\n%s", w, h.stderr)
		}
	}
}
