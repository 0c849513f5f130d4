//go:build e2e

package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Issue 15: an environment of two VMs made by an unprivileged user on
// qemu:///session (user-mode networking, no root): each reaches the other
// where the inventory says; destroy leaves nothing of it.
func TestE2EEnvironmentSession(t *testing.T) {
	s := newSessionUser(t)
	dir := filepath.Join(s.home, "pair")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(dir, s.uid, s.uid)
	play, _ := os.ReadFile(filepath.Join("testdata", "env.yml"))
	s.write(filepath.Join(dir, "env.yml"), play, 0o644)
	img := os.Getenv("VMUP_TEST_IMAGE_DIR")
	cfg, _ := json.Marshal(map[string]any{
		"image": filepath.Join(img, "disk.qcow2"), "kernel": filepath.Join(img, "vmlinuz"),
		"initrd": filepath.Join(img, "initrd.img"), "cmdline": "root=LABEL=vmuproot rw console=ttyS0",
		"domain-type": "qemu", "memory": 768, "cpus": 1, "disk": 4, "boot-timeout": "10m",
		"playbook": filepath.Join(dir, "env.yml"),
		"vms":      map[string]any{"a1": map[string]any{}, "a2": map[string]any{}},
	})
	s.write(filepath.Join(dir, "vmup.json"), cfg, 0o644)
	run := func(timeout time.Duration, args ...string) (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := s.command(ctx, args...)
		cmd.Dir = dir
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		cmd.Run()
		t.Logf("(as %s, in %s) vmup %s -> exit %d\n%s", s.name, dir, strings.Join(args, " "), cmd.ProcessState.ExitCode(), errOut.String())
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	}
	t.Cleanup(func() { run(10*time.Minute, "destroy") })
	start := time.Now()
	_, stderr, code := run(20*time.Minute, "up", "-d")
	t.Logf("TIMING session environment of 2 up -d: %.1fs", time.Since(start).Seconds())
	if code != 0 {
		t.Fatalf("up -d of the environment as %s: exit %d", s.name, code)
	}
	if hosts := ansibleRecapHosts(stderr); !slices.Equal(hosts, []string{"a1", "a2"}) {
		t.Errorf("one playbook over the two: PLAY RECAP hosts %v", hosts)
	}
	checkReachEachOther(t, run, []string{"a1", "a2"})
	if _, _, code := run(10*time.Minute, "destroy"); code != 0 {
		t.Errorf("destroy of the environment: exit %d", code)
	}
	// In the directory, status lists the file's VMs, made or not: none has a domain now.
	out, _, _ := run(time.Minute, "status", "--json")
	for _, ev := range jsonEvents(out) {
		if ev.Event == "vm" && ev.Domain != "undefined" {
			t.Errorf("after destroy VM %s has domain %q", ev.VM, ev.Domain)
		}
	}
}
