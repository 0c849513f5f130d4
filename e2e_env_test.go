//go:build e2e

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envE2E is an environment's directory and the home its VMs live in.
type envE2E struct {
	t        *testing.T
	dir      string
	home     string
	name     string
	imageDir string
}

func newEnvE2E(t *testing.T, name string) *envE2E {
	dir := os.Getenv("VMUP_TEST_IMAGE_DIR")
	if dir == "" {
		t.Fatal("VMUP_TEST_IMAGE_DIR is not set: run the suite with `make e2e`")
	}
	templateVolumesBefore()
	e := &envE2E{t: t, dir: t.TempDir(), home: t.TempDir(), name: name, imageDir: dir}
	t.Cleanup(func() {
		e.vmup(10*time.Minute, "destroy")
		e.checkNothingLeft()
	})
	start := time.Now()
	t.Cleanup(func() { t.Logf("TIMING %s: %.1fs", t.Name(), time.Since(start).Seconds()) })
	return e
}

// writeFile writes the environment's vmup.json with vms (name → groups).
func (e *envE2E) writeFile(vms map[string][]string) {
	play, _ := filepath.Abs(filepath.Join("testdata", "env.yml"))
	cfg := map[string]any{
		"name": e.name, "image": filepath.Join(e.imageDir, "disk.qcow2"),
		"kernel": filepath.Join(e.imageDir, "vmlinuz"), "initrd": filepath.Join(e.imageDir, "initrd.img"),
		"cmdline": "root=LABEL=vmuproot rw console=ttyS0", "domain-type": "qemu", "network": "user",
		"memory": 768, "cpus": 1, "disk": 4, "boot-timeout": "10m", "playbook": play,
	}
	m := map[string]any{}
	for vm, groups := range vms {
		m[vm] = map[string]any{"groups": groups}
	}
	cfg["vms"] = m
	data, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(e.dir, "vmup.json"), data, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *envE2E) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, vmupBinary, args...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "VMUP_HOME="+e.home, "LIBVIRT_DEFAULT_URI="+uri)
	return cmd
}

func (e *envE2E) vmup(timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := e.command(ctx, args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Run()
	e.t.Logf("vmup %s -> exit %d\n%s", strings.Join(args, " "), cmd.ProcessState.ExitCode(), errOut.String())
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// full is a VM's name outside the directory: the domain's.
func (e *envE2E) full(vm string) string { return e.name + "-" + vm }

// ssh runs a command in the environment's VM vm.
func (e *envE2E) ssh(vm string, argv ...string) string {
	e.t.Helper()
	out, _, code := e.vmup(2*time.Minute, append([]string{"ssh", vm, "--"}, argv...)...)
	if code != 0 {
		e.t.Errorf("vmup ssh %s -- %v: exit %d", vm, argv, code)
	}
	return out
}

// runs is how often the first-boot playbook ran in vm.
func (e *envE2E) runs(vm string) int {
	return strings.Count(e.ssh(vm, "cat", "/var/tmp/vmup-runs"), "run")
}

// ansibleRecapHosts are the hosts the PLAY RECAPs in up's output list.
func ansibleRecapHosts(stderr string) []string {
	var hosts []string
	for _, line := range strings.Split(stderr, "\n") {
		if i := strings.Index(line, " : ok="); i >= 0 {
			f := strings.Fields(line[:i])
			hosts = append(hosts, f[len(f)-1])
		}
	}
	slices.Sort(hosts)
	return hosts
}

// reachEachOther: from every VM, every other VM's sshd answers where the
// inventory says it is.
func (e *envE2E) reachEachOther(vms []string) { checkReachEachOther(e.t, e.vmup, vms) }

// checkReachEachOther is reachEachOther for whoever runs vmup (run).
func checkReachEachOther(t *testing.T, run func(time.Duration, ...string) (string, string, int), vms []string) {
	out, _, code := run(time.Minute, "inventory", "--format", "json")
	if code != 0 {
		t.Fatalf("inventory: exit %d", code)
	}
	var inv struct {
		All struct {
			Children struct {
				Vmup struct {
					Hosts map[string]map[string]any `json:"hosts"`
				} `json:"vmup"`
			} `json:"children"`
		} `json:"all"`
	}
	if err := json.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("inventory: %v\n%s", err, out)
	}
	hostvars := inv.All.Children.Vmup.Hosts
	for _, from := range vms {
		for _, to := range vms {
			if from == to {
				continue
			}
			hv := hostvars[to]
			addr, port := fmt.Sprint(hv["vmup_address"]), fmt.Sprint(hv["vmup_ssh_port"])
			// ssh joins its words into one remote command line: one word here.
			banner, _, code := run(time.Minute, "ssh", from, "--",
				fmt.Sprintf("timeout 10 bash -c 'exec 3<>/dev/tcp/%s/%s && head -c 7 <&3'", addr, port))
			if code != 0 || !strings.HasPrefix(banner, "SSH-2.0") {
				t.Errorf("%s does not reach %s's sshd at %s:%s (inventory): exit %d, %q", from, to, addr, port, code, banner)
			} else {
				t.Logf("%s reaches %s's sshd at %s:%s", from, to, addr, port)
			}
		}
	}
}

func (e *envE2E) checkNothingLeft() {
	t := e.t
	out, _ := virsh("list", "--all", "--name")
	vols, _ := virsh("vol-list", "vmup")
	for _, l := range strings.Split(out+"\n"+vols, "\n") {
		if strings.Contains(l, e.name+"-") {
			t.Errorf("left after destroy: %s", strings.TrimSpace(l))
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(e.home, "vms")); len(entries) > 0 {
		t.Errorf("state left: %v", entries)
	}
	if ps := processesMentioning(e.home); len(ps) > 0 {
		t.Errorf("processes left: %v", ps)
	}
}

// Issue 15: three VMs as one environment with one playbook; a fourth added and
// its first boot aborted by two Ctrl+C; all four up; destroy leaves nothing.
func TestE2EEnvironment(t *testing.T) {
	e := newEnvE2E(t, "e2eenv")
	three := map[string][]string{"web1": {"web"}, "web2": {"web"}, "db1": {"db"}}
	e.writeFile(three)
	start := time.Now()
	_, stderr, code := e.vmup(25*time.Minute, "up", "-d")
	t.Logf("TIMING environment of 3 up -d: %.1fs", time.Since(start).Seconds())
	if code != 0 {
		t.Fatalf("up -d of the environment: exit %d", code)
	}
	if hosts := ansibleRecapHosts(stderr); !slices.Equal(hosts, []string{"db1", "web1", "web2"}) {
		t.Errorf("one playbook over the three: PLAY RECAP hosts %v", hosts)
	}
	for _, vm := range []string{"web1", "web2", "db1"} {
		if n := e.runs(vm); n != 1 {
			t.Errorf("%s provisioned %d times, want 1", vm, n)
		}
		if st, _ := virsh("domstate", e.full(vm)); st != "running" {
			t.Errorf("domain %s: %s", e.full(vm), st)
		}
	}
	e.reachEachOther([]string{"web1", "web2", "db1"})

	// A fourth VM; the foreground up runs the playbook for it alone, paused
	// so that two Ctrl+C land in it.
	four := map[string][]string{"web1": {"web"}, "web2": {"web"}, "db1": {"db"}, "cache": {"db"}}
	e.writeFile(four)
	up := e.command(context.Background(), "up", "--json", "--", "-e", "pause=300")
	up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := up.StdoutPipe()
	var upErr strings.Builder
	up.Stderr = &upErr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-up.Process.Pid, syscall.SIGKILL) })
	events := make(chan jsonEvent, 500)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev jsonEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				events <- ev
			}
		}
		close(events)
	}()
	var seen []jsonEvent
	deadline := time.Now().Add(15 * time.Minute)
	for !strings.Contains(upErr.String(), "TASK [long task]") {
		if time.Now().After(deadline) {
			t.Fatalf("the playbook did not reach its long task:\n%s", upErr.String())
		}
		select {
		case ev := <-events:
			seen = append(seen, ev)
		case <-time.After(200 * time.Millisecond):
		}
	}
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	for confirm := false; !confirm; {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("up ended after one Ctrl+C:\n%s", upErr.String())
			}
			seen = append(seen, ev)
			confirm = ev.Event == "confirm_abort"
			if confirm && !strings.Contains(ev.Message, "cache") {
				t.Errorf("the first Ctrl+C's warning does not name the new VM: %q", ev.Message)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no confirm_abort after the first Ctrl+C:\n%s", upErr.String())
		}
	}
	unix.Kill(-up.Process.Pid, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		for ev := range events {
			seen = append(seen, ev)
		}
		up.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("up did not end after the second Ctrl+C:\n%s", upErr.String())
	}
	t.Logf("foreground up of the fourth VM -> exit %d\n%s", up.ProcessState.ExitCode(), upErr.String())
	if code := up.ProcessState.ExitCode(); code != exitSIGINT {
		t.Errorf("two Ctrl+C in the environment's playbook: exit %d, want 130", code)
	}
	if hosts := ansibleRecapHosts(upErr.String()); len(hosts) > 0 && !slices.Equal(hosts, []string{"cache"}) {
		t.Errorf("the playbook of the fourth VM ran on %v", hosts)
	}
	if st, err := virsh("domstate", e.full("cache")); err == nil {
		t.Errorf("the aborted first boot of cache left its domain (%s)", st)
	}
	for _, vm := range []string{"web1", "web2", "db1"} {
		if st, _ := virsh("domstate", e.full(vm)); st != "shut off" {
			t.Errorf("%s after the abort: %s, want shut off (kept)", e.full(vm), st)
		}
	}

	start = time.Now()
	if _, _, code := e.vmup(25*time.Minute, "up", "-d"); code != 0 {
		t.Fatalf("up -d of the four: exit %d", code)
	}
	t.Logf("TIMING environment of 4 up -d after the abort: %.1fs", time.Since(start).Seconds())
	for _, vm := range []string{"web1", "web2", "db1", "cache"} {
		if n := e.runs(vm); n != 1 {
			t.Errorf("%s provisioned %d times, want 1", vm, n)
		}
	}
	if _, _, code := e.vmup(10*time.Minute, "destroy"); code != 0 {
		t.Errorf("destroy of the environment: exit %d", code)
	}
	e.checkNothingLeft()
}
