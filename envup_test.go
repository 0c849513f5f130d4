package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// envUp runs `vmup up` of the environment in the background.
func (h *harness) envUp(args ...string) chan int {
	h.t.Helper()
	o, _, err := parseCommand("up", args)
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	done := make(chan int, 1)
	go func() { done <- runEnv("up", env, o) }()
	return done
}

// playbookCalls are the ansible-playbook argvs the run made.
func (h *harness) playbookCalls() [][]string {
	var pb [][]string
	for _, c := range h.fake.rawCalls() {
		if strings.HasSuffix(c[0], "ansible-playbook") {
			pb = append(pb, c)
		}
	}
	return pb
}

func (h *harness) envJournal(name string) *Journal {
	j, err := readJournal(pathsFor(h.env.Home, name))
	if err != nil {
		h.t.Fatal(err)
	}
	return j
}

func (h *harness) exitEvent() jsonEvent {
	h.events.mu.Lock()
	defer h.events.mu.Unlock()
	var last jsonEvent
	for _, ev := range h.events.events {
		if ev.Event == "exit" {
			last = ev
		}
	}
	return last
}

// Three VMs: their first boots, then ONE playbook over an inventory of all
// three in their groups, each VM's completed first boot on disk before any
// VM runs.
func TestEnvUpOnePlaybook(t *testing.T) {
	h := envHarness(t, `{"web1": {"groups": ["web"]}, "web2": {"groups": ["web"]}, "db": {"groups": ["db"]}}`)
	var mu sync.Mutex
	var early []string
	h.events.onEvent = func(ev jsonEvent) {
		if ev.Event == "phase" && strings.HasSuffix(ev.Message, "-> running") && ev.VM != "" {
			for _, n := range []string{"shop-db", "shop-web1", "shop-web2"} {
				if j, _ := readJournal(pathsFor(h.env.Home, n)); j == nil || !j.FirstBootDone {
					mu.Lock()
					early = append(early, ev.VM+" runs before "+n+" is recorded")
					mu.Unlock()
				}
			}
		}
	}
	if code := h.wait(h.envUp("-d")); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if len(early) > 0 {
		t.Errorf("a VM entered running before every first boot was recorded: %v", early)
	}
	pb := h.playbookCalls()
	if len(pb) != 1 {
		t.Fatalf("ansible-playbook ran %d times, want once: %v", len(pb), pb)
	}
	if i := slices.Index(pb[0], "--limit"); i < 0 || pb[0][i+1] != "db,web1,web2" {
		t.Errorf("playbook argv %v; want --limit db,web1,web2", pb[0])
	}
	// It started only once every VM had booted.
	calls := h.calls()
	last, at := -1, -1
	for i, c := range calls {
		if len(c) > 1 && c[0] == "virsh" && c[1] == "start" {
			last = i
		}
		if c[0] == "ansible-playbook" {
			at = i
		}
	}
	if at < last {
		t.Errorf("the playbook (call %d) ran before the last first boot started (call %d)", at, last)
	}
	for _, n := range []string{"shop-db", "shop-web1", "shop-web2"} {
		if j := h.envJournal(n); j == nil || !j.FirstBootDone || j.Phase != Detached || j.PlaybookPGID != 0 {
			t.Errorf("%s: journal %+v; want first boot done, detached, no playbook group", n, j)
		}
	}
	for _, n := range []string{"shop-db", "shop-web1", "shop-web2"} {
		if logs, _ := filepath.Glob(filepath.Join(pathsFor(h.env.Home, n).Logs(), "playbook-*.log")); len(logs) != 1 {
			t.Errorf("%s: playbook logs %v; want the environment's one", n, logs)
		}
	}
	inv, err := os.ReadFile(pathsFor(h.env.Home, "shop-db").File("env-inventory.json"))
	if err != nil || !strings.Contains(string(inv), `"web1": {}`) || !strings.Contains(string(inv), "ControlPath=") {
		t.Errorf("the setup inventory: %v\n%s", err, inv)
	}
	want := []vmOutcome{{VM: "shop-db", Phase: "detached", Outcome: "kept"}, {VM: "shop-web1", Phase: "detached", Outcome: "kept"}, {VM: "shop-web2", Phase: "detached", Outcome: "kept"}}
	if got := h.exitEvent().VMs; !slices.Equal(got, want) {
		t.Errorf("exit event's vms %v, want %v", got, want)
	}
	// Every event names the environment; each step is a VM's.
	for _, ev := range h.events.events {
		if ev.Environment != "shop" || strings.HasPrefix(ev.Event, "step_") && ev.VM == "" {
			t.Errorf("event %+v: want environment shop (and a step's vm)", ev)
		}
	}
	// Every human line of a VM names it.
	for _, line := range strings.Split(strings.TrimSpace(h.stderr.String()), "\n") {
		if strings.HasPrefix(line, "[") {
			t.Errorf("a VM's line without its name: %q", line)
		}
	}

	// A fourth VM: the playbook runs for it alone, over all four.
	os.WriteFile(configFile, []byte(strings.Replace(readFile(t, configFile), `"db": {`, `"cache": {}, "db": {`, 1)), 0o600)
	if code := h.wait(h.envUp("-d")); code != 0 {
		t.Fatalf("second up: exit %d\n%s", code, h.stderr)
	}
	pb = h.playbookCalls()
	if len(pb) != 2 || pb[1][slices.Index(pb[1], "--limit")+1] != "cache" {
		t.Errorf("second up's playbook: %v; want one more, --limit cache", pb)
	}
	// destroy: nothing of the environment is left.
	if code := h.runEnv("destroy"); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	names, _ := listVMs(h.env.Home)
	var vols []string
	for v := range h.fake.world.Volumes {
		if !strings.HasPrefix(v, "vmup/vmup-base-") {
			vols = append(vols, v)
		}
	}
	if len(h.fake.world.Domains) != 0 || len(names) != 0 || len(vols) != 0 {
		t.Errorf("after destroy: domains %v, state dirs %v, volumes %v; want none", h.fake.world.Domains, names, vols)
	}
}

func readFile(t *testing.T, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// A VM that fails to boot: no playbook, every VM kept, exit 1.
func TestEnvUpBootFailureKeepsAll(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {}}`)
	h.fake.world.Fail["start shop-db"] = "error: Failed to start domain 'shop-db'"
	if code := h.wait(h.envUp("-d")); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, h.stderr)
	}
	if pb := h.playbookCalls(); len(pb) != 0 {
		t.Errorf("the playbook ran: %v", pb)
	}
	for _, n := range []string{"shop-db", "shop-web"} {
		if _, ok := h.fake.world.Domains[n]; !ok || !made(pathsFor(h.env.Home, n)) {
			t.Errorf("%s was not kept", n)
		}
		if j := h.envJournal(n); j.FirstBootDone || j.Phase != Failed {
			t.Errorf("%s: phase %s, first boot done %v; want failed, not done", n, j.Phase, j.FirstBootDone)
		}
	}
	// `vmup up` again retries.
	delete(h.fake.world.Fail, "start shop-db")
	if code := h.wait(h.envUp("-d")); code != 0 {
		t.Fatalf("retry: exit %d\n%s", code, h.stderr)
	}
	if pb := h.playbookCalls(); len(pb) != 1 {
		t.Errorf("retry: %d playbooks, want 1", len(pb))
	}
}

// The playbook fails: exit 3, every VM kept.
func TestEnvUpPlaybookFailsKeepsAll(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {}}`)
	h.fake.playbook = "fail"
	if code := h.wait(h.envUp("-d")); code != 3 {
		t.Fatalf("exit %d, want 3\n%s", code, h.stderr)
	}
	for _, n := range []string{"shop-db", "shop-web"} {
		if j := h.envJournal(n); j == nil || j.FirstBootDone || h.fake.world.Domains[n] != "running" {
			t.Errorf("%s: journal %+v, domain %q; want kept running, first boot not done", n, j, h.fake.world.Domains[n])
		}
	}
	if ev := h.exitEvent(); ev.AnsibleExitCode == nil || *ev.AnsibleExitCode != 2 {
		t.Errorf("exit event %+v; want ansible_exit_code 2", ev)
	}
}

// Two Ctrl+C during the playbook of a new VM: the new VM is wiped, the
// provisioned one shut down and kept, exit 130. The first says which is which.
func TestEnvUpCtrlCMixedFirstBootAndProvisioned(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {}}`)
	if code := h.wait(h.envUp("web", "-d")); code != 0 {
		t.Fatalf("up web: exit %d\n%s", code, h.stderr)
	}
	h.fake.playbook = "block"
	done := h.envUp()
	<-h.fake.playbookStarted
	<-h.fake.playbookStarted
	if j := h.envJournal("shop-db"); j.PlaybookPGID != 999999 {
		t.Errorf("db's journal names playbook group %d while it runs, want 999999", j.PlaybookPGID)
	}
	h.sigs <- syscall.SIGINT
	h.events.waitFor(t, "confirm_abort", "aborts the first boot of db")
	h.events.waitFor(t, "confirm_abort", "web, whose first boot completed, is shut down")
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 130 {
		t.Fatalf("exit %d, want 130\n%s", code, h.stderr)
	}
	if _, ok := h.fake.world.Domains["shop-db"]; ok || made(pathsFor(h.env.Home, "shop-db")) {
		t.Errorf("db's first boot was not wiped: domains %v", h.fake.world.Domains)
	}
	if j := h.envJournal("shop-web"); j == nil || !j.FirstBootDone || h.fake.world.Domains["shop-web"] != "shut off" {
		t.Errorf("web: journal %+v, domain %q; want kept, shut off", j, h.fake.world.Domains["shop-web"])
	}
	pb := h.playbookCalls()
	if i := slices.Index(pb[len(pb)-1], "--limit"); i < 0 || pb[len(pb)-1][i+1] != "db" {
		t.Errorf("playbook %v; want --limit db", pb[len(pb)-1])
	}
	want := []vmOutcome{{VM: "shop-db", Phase: "aborted", ExitCode: 130, Outcome: "removed"}, {VM: "shop-web", Phase: "stopped", Outcome: "kept"}}
	if got := h.exitEvent().VMs; !slices.Equal(got, want) {
		t.Errorf("exit event's vms %v, want %v", got, want)
	}
}

// In the foreground the environment runs until Ctrl+C, which shuts every VM
// down (exit 0); --parallel 1 begins one VM at a time.
func TestEnvUpForegroundCtrlCShutsAllDownParallelOne(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {}}`)
	done := h.envUp("--parallel", "1")
	h.events.waitFor(t, "waiting", "Press Ctrl+C to shut the VMs down")
	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	for _, n := range []string{"shop-db", "shop-web"} {
		if j := h.envJournal(n); !j.FirstBootDone || j.Phase != Stopped || h.fake.world.Domains[n] != "shut off" {
			t.Errorf("%s: phase %s, domain %q; want stopped, shut off", n, j.Phase, h.fake.world.Domains[n])
		}
	}
	calls := h.calls()
	startDB, diskWeb := -1, -1
	for i, c := range calls {
		switch strings.Join(c, " ") {
		case "virsh start shop-db":
			startDB = i
		}
		if diskWeb < 0 && len(c) > 3 && c[1] == "vol-create-as" && c[3] == "shop-web.qcow2" {
			diskWeb = i
		}
	}
	if startDB < 0 || diskWeb < startDB {
		t.Errorf("--parallel 1: web's disk (call %d) was made before db had started (call %d)", diskWeb, startDB)
	}
}

// A mistake in any VM is found before anything is made: exit 2, no VM.
func TestEnvUpChecksEveryVMFirst(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {"restrict-network": true}}`)
	if code := h.wait(h.envUp("-d")); code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	if len(h.fake.world.Domains) != 0 || made(pathsFor(h.env.Home, "shop-web")) {
		t.Errorf("something was made: %v", h.fake.world.Domains)
	}
	os.WriteFile(configFile, []byte(strings.Replace(readFile(t, configFile), `"restrict-network": true`, `"playbook": "/etc/hostname"`, 1)), 0o600)
	if code := h.wait(h.envUp("-d")); code != 2 || !strings.Contains(h.stderr.String(), "different playbooks") {
		t.Fatalf("two playbooks: exit %d, want 2\n%s", code, h.stderr)
	}
}

// A VM that fails while others wait for a slot (--parallel 1): those are
// left as they are, and the run ends (exit 1).
func TestEnvUpFailureLeavesWaitingVMsAlone(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {}, "cache": {}}`)
	h.fake.world.Fail["start shop-cache"] = "error: Failed to start domain 'shop-cache'"
	if code := h.wait(h.envUp("-d", "--parallel", "1")); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, h.stderr)
	}
	if _, ok := h.fake.world.Domains["shop-web"]; ok || made(pathsFor(h.env.Home, "shop-db")) {
		t.Errorf("a VM waiting for a slot was begun after cache failed: %v", h.fake.world.Domains)
	}
	if got := h.exitEvent().VMs; len(got) != 3 || got[0] != (vmOutcome{VM: "shop-cache", Phase: "failed", ExitCode: 1, Outcome: "kept"}) {
		t.Errorf("exit event's vms %v", got)
	}
}

// provision in the directory: one playbook over the environment's inventory,
// limited to the VMs it acts on.
func TestEnvProvisionOnePlaybook(t *testing.T) {
	h := envHarness(t, `{"web": {"groups": ["web"]}, "db": {}}`)
	if code := h.wait(h.envUp("-d")); code != 0 {
		t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
	if code := h.runEnv("provision"); code != 0 {
		t.Fatalf("provision: exit %d\n%s", code, h.stderr)
	}
	pb := h.playbookCalls()
	if len(pb) != 2 || pb[1][slices.Index(pb[1], "--limit")+1] != "db,web" || !strings.HasSuffix(pb[1][2], "env-inventory.json") {
		t.Errorf("playbooks %v; want a second one over the environment's inventory, --limit db,web", pb)
	}
	if code := h.runEnv("provision", "web"); code != 0 || len(h.playbookCalls()) != 3 {
		t.Fatalf("provision web: exit %d, playbooks %v", code, h.playbookCalls())
	}
	if pb := h.playbookCalls()[2]; pb[slices.Index(pb, "--limit")+1] != "web" {
		t.Errorf("provision web: %v; want --limit web", pb)
	}
}
