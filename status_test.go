package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// virshCost is what one virsh call costs on a real host: a connection to
// libvirtd and back (the issue measured 21 ms per VM for status).
const virshCost = 20 * time.Millisecond

// costlyRunner is the fake runner with a fixed cost per virsh call.
type costlyRunner struct {
	*fakeRunner
	cost time.Duration
}

func (c costlyRunner) Run(ctx context.Context, cmd Cmd) (Result, error) {
	if filepath.Base(cmd.Args[0]) == "virsh" {
		time.Sleep(c.cost) // models the call's cost, not a synchronisation
	}
	return c.fakeRunner.Run(ctx, cmd)
}

// fakeVM writes the journal of a VM made and shut off (or running) as
// `vmup up -d` leaves it, and defines its domain in the fake world.
func fakeVM(tb testing.TB, home string, w *fakeWorld, name, connect, domain string, port int, edit func(j *Journal)) {
	tb.Helper()
	paths := pathsFor(home, name)
	if err := ensureDir(paths.Dir); err != nil {
		tb.Fatal(err)
	}
	j := &Journal{Name: name, Phase: Detached, FailedIn: noPhase, FirstBootDone: true, User: "vmup", Network: "user",
		Connect: connect, Pool: "vmup", SSHHost: "127.0.0.1", SSHPort: port, CPUs: 2, MemoryMiB: 2048, DiskGiB: 20}
	if edit != nil {
		edit(j)
	}
	if err := writeJournal(paths, j); err != nil {
		tb.Fatal(err)
	}
	if domain != "" {
		w.Domains[name], w.Owned[name] = domain, true
	}
}

// withStdout sends what f prints on stdout to a file and returns it.
func withStdout(tb testing.TB, f func()) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "stdout")
	file, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = file
	defer func() { os.Stdout = saved; file.Close() }()
	f()
	data, _ := os.ReadFile(path)
	return string(data)
}

// BenchmarkStatus times `vmup status` of 1, 10 and 100 VMs against a fake
// virsh whose every call costs virshCost, next to the cost of one call.
// Run: go test -bench Status -run XXX .
func BenchmarkStatus(b *testing.B) {
	b.Run("one-virsh-call", func(b *testing.B) {
		r := costlyRunner{newFakeRunner(), virshCost}
		r.world.Domains["vm000"] = "running"
		v := newVirsh(r, "qemu:///session")
		for b.Loop() {
			if _, err := v.DomState(context.Background(), "vm000"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(r.recorded()))/float64(b.N), "virsh-calls/op")
	})
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			r := costlyRunner{newFakeRunner(), virshCost}
			home := b.TempDir()
			for i := range n {
				state := "running"
				if i%2 == 1 {
					state = "shut off"
				}
				fakeVM(b, home, r.world, fmt.Sprintf("vm%03d", i), "qemu:///session", state, 2200+i, nil)
			}
			env := Env{Runner: r, Home: home, Out: newOutput(&nopWriter{}, nil, "")}
			o, _, err := parseCommand("status", nil)
			if err != nil {
				b.Fatal(err)
			}
			var runs int
			withStdout(b, func() {
				for b.Loop() {
					runs++
					if code := runStatus(env, o); code != exitOK {
						b.Fatalf("status: exit %d", code)
					}
				}
			})
			b.ReportMetric(float64(len(r.recorded()))/float64(runs), "virsh-calls/op")
		})
	}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// statusLines runs `vmup status` (args: none, or NAME and flags) and returns
// its exit code and stdout.
func statusLines(t *testing.T, env Env, args ...string) (int, string) {
	t.Helper()
	o, _, err := parseCommand("status", args)
	if err != nil {
		t.Fatal(err)
	}
	var code int
	out := withStdout(t, func() {
		if o.JSON { // as run does: events on stdout, human lines where they were
			env.Out = newOutput(env.Out.human, os.Stdout, o.Name)
		}
		code = runStatus(env, o)
	})
	return code, out
}

// statusJSON parses `status --json`'s vm events by VM name.
func statusJSON(t *testing.T, out string) map[string]map[string]any {
	t.Helper()
	byName := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("status --json line %q: %v", line, err)
		}
		if m["event"] == "vm" {
			byName[m["vm"].(string)] = m
		}
	}
	return byName
}

// The issue measured status at 21 ms per VM: one virsh call each. Now it is
// one listing per libvirt URI, whatever the number of VMs.
func TestStatusOfManyVMsAsksLibvirtOncePerURI(t *testing.T) {
	r := newFakeRunner()
	home := t.TempDir()
	for i := range 6 {
		fakeVM(t, home, r.world, fmt.Sprintf("s%d", i), "qemu:///session", "running", 2200+i, nil)
	}
	for i := range 3 {
		fakeVM(t, home, r.world, fmt.Sprintf("y%d", i), "qemu:///system", "shut off", 0, nil)
	}
	env := Env{Runner: r, Home: home, Out: newOutput(&nopWriter{}, nil, "")}
	if code, out := statusLines(t, env); code != exitOK {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	want := [][]string{
		{"virsh", "-c", "qemu:///session", "domstats", "--state"},
		{"virsh", "-c", "qemu:///system", "domstats", "--state"},
	}
	if diff := cmp.Diff(want, r.rawCalls()); diff != "" {
		t.Errorf("virsh calls mismatch (-want +got):\n%s", diff)
	}
}

// Each VM's domain is told as `virsh domstate` words it, a managed save as
// "saved", a missing domain as "undefined"; by the listing of every VM and
// by `status NAME` alike.
func TestStatusMapsDomainStates(t *testing.T) {
	r := newFakeRunner()
	home := t.TempDir()
	want := map[string]string{"up1": "running", "off1": "shut off", "saved1": "saved", "gone1": "undefined", "paused1": "paused"}
	for name, domain := range want {
		switch domain {
		case "saved":
			fakeVM(t, home, r.world, name, "qemu:///session", "shut off", 0, nil)
			r.world.ManagedSave[name] = true
		case "undefined":
			fakeVM(t, home, r.world, name, "qemu:///session", "", 0, nil)
		default:
			fakeVM(t, home, r.world, name, "qemu:///session", domain, 0, nil)
		}
	}
	r.world.Domains["someone-elses"] = "running" // not vmup's: not listed
	env := Env{Runner: r, Home: home, Out: newOutput(&nopWriter{}, nil, "")}
	_, out := statusLines(t, env, "--json")
	got := map[string]string{}
	for name, m := range statusJSON(t, out) {
		got[name] = m["domain"].(string)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("status --json domains (-want +got):\n%s", diff)
	}
	for name, domain := range want {
		wantCode := statusNotRunning
		if domain == "running" {
			wantCode = exitOK
		}
		code, out := statusLines(t, env, name, "--json")
		if got := statusJSON(t, out)[name]["domain"]; got != domain || code != wantCode {
			t.Errorf("status %s: domain %v, exit %d; want %s, exit %d", name, got, code, domain, wantCode)
		}
	}
}

// The age comes from the journal's record of when the VM was made; a journal
// of an older vmup has none, and none is made up.
func TestStatusShowsAddressAndAge(t *testing.T) {
	r := newFakeRunner()
	home := t.TempDir()
	made := time.Now().Add(-3*time.Hour - 5*time.Minute).UTC()
	fakeVM(t, home, r.world, "new1", "qemu:///session", "running", 2222, func(j *Journal) { j.Created = made })
	fakeVM(t, home, r.world, "old1", "qemu:///session", "running", 2223, nil)
	env := Env{Runner: r, Home: home, Out: newOutput(&nopWriter{}, nil, "")}

	_, out := statusLines(t, env)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !slices.Equal(strings.Fields(lines[0]), []string{"NAME", "PHASE", "DOMAIN", "SSH", "AGE", "FORWARDS"}) {
		t.Fatalf("status table:\n%s", out)
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		switch {
		case f[0] == "new1" && slices.Equal(f[1:], []string{"detached", "running", "127.0.0.1:2222", "3h", "-"}):
		case f[0] == "old1" && slices.Equal(f[1:], []string{"detached", "running", "127.0.0.1:2223", "-", "-"}):
		default:
			t.Errorf("status row %q", l)
		}
	}

	_, out = statusLines(t, env, "--json")
	vms := statusJSON(t, out)
	n := vms["new1"]
	if n["address"] != "127.0.0.1" || n["ssh"] != "127.0.0.1:2222" || n["created"] != made.Format(time.RFC3339Nano) {
		t.Errorf("new1: %v; want address 127.0.0.1, ssh 127.0.0.1:2222, created %s", n, made.Format(time.RFC3339Nano))
	}
	if age, ok := n["age_seconds"].(float64); !ok || age < 3*3600+5*60 || age > 3*3600+5*60+60 {
		t.Errorf("new1: age_seconds %v, want about %d", n["age_seconds"], 3*3600+5*60)
	}
	if _, ok := vms["old1"]["age_seconds"]; ok {
		t.Errorf("old1 has an age without a created time: %v", vms["old1"])
	}
	if _, ok := vms["old1"]["created"]; ok {
		t.Errorf("old1 has a created time its journal lacks: %v", vms["old1"])
	}
}

func TestAgeWords(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Minute, "0s"}, {0, "0s"}, {59 * time.Second, "59s"}, {90 * time.Second, "1m"}, {59 * time.Minute, "59m"},
		{3*time.Hour + 59*time.Minute, "3h"}, {47 * time.Hour, "47h"}, {49 * time.Hour, "2d"}, {400 * 24 * time.Hour, "400d"},
	} {
		if got := ageWords(c.d); got != c.want {
			t.Errorf("ageWords(%s) = %q, want %q", c.d, got, c.want)
		}
	}
}

// `virsh domstats --state` as libvirt 9.0 prints it, every state virsh knows.
func TestParseDomStats(t *testing.T) {
	out := "Domain: 'a'\n  state.state=1\n  state.reason=1\n\n" +
		"Domain: 'b'\n  state.state=5\n  state.reason=5\n\n" +
		"Domain: 'c'\n  state.state=5\n  state.reason=2\n\n" +
		"Domain: 'd'\n  state.state=3\n  state.reason=1\n\n" +
		"Domain: 'e'\n  state.state=4\n  state.reason=1\n\n" +
		"Domain: 'f'\n  state.state=6\n  state.reason=1\n\n" +
		"Domain: 'g'\n  state.state=7\n  state.reason=0\n\n" +
		"Domain: 'h'\n  state.state=2\n  state.reason=0\n\n" +
		"Domain: 'i'\n  state.state=42\n  state.reason=42\n\n" +
		"Domain: 'it's'\n  state.state=1\n  state.reason=3\n"
	want := map[string]domainState{
		"a": {"running", "booted"}, "b": {"shut off", "saved"}, "c": {"shut off", "destroyed"},
		"d": {"paused", "user"}, "e": {"in shutdown", "user"}, "f": {"crashed", "panicked"},
		"g": {"pmsuspended", "unknown"}, "h": {"idle", "unknown"}, "i": {"no state", "unknown"},
		"it's": {"running", "restored"},
	}
	got, err := parseDomStats(out)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseDomStats (-want +got):\n%s", diff)
	}
	if got, err := parseDomStats(""); err != nil || len(got) != 0 {
		t.Errorf("no domains: %v, %v", got, err)
	}
	if _, err := parseDomStats("Domain: 'a'\n  state.state=x\n"); err == nil {
		t.Error("a state that is no number is accepted")
	}
}

// The first `up` records when the VM was made; later runs keep that time.
func TestUpRecordsWhenTheVMWasMade(t *testing.T) {
	h := newHarness(t)
	before := time.Now()
	h.createDetached()
	made := h.journal().Created
	if made.Before(before.Add(-time.Second)) || made.After(time.Now()) {
		t.Fatalf("journal created %v; want the time of the first up (%v)", made, before)
	}
	if code := h.down(); code != 0 {
		t.Fatalf("down: exit %d\n%s", code, h.stderr)
	}
	if code := h.wait(h.up("v1", "-d")); code != 0 {
		t.Fatalf("up -d: exit %d\n%s", code, h.stderr)
	}
	if got := h.journal().Created; !got.Equal(made) {
		t.Errorf("after down and up, created %v; want %v kept", got, made)
	}
}

// Through the binary and its fake virsh: the listing of two VMs is one
// virsh call, and the table shows each one's domain and age.
func TestBinaryStatusListsDomainsInOneCall(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	worldFile := filepath.Join(r.dir, "world.json")
	w := loadWorld(worldFile)
	v1, err := readJournal(pathsFor(r.home, "v1"))
	if err != nil || v1 == nil {
		t.Fatalf("v1's journal: %v", err)
	}
	fakeVM(t, r.home, w, "v2", v1.Connect, "shut off", 0, nil) // on v1's URI, whichever is the default
	w.ManagedSave["v2"] = true
	saveWorld(worldFile, w)
	before := len(r.calls())
	out, code := r.vmup("status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if diff := cmp.Diff([][]string{{"virsh", "domstats", "--state"}}, r.calls()[before:]); diff != "" {
		t.Errorf("virsh calls of status (-want +got):\n%s", diff)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		rows[f[0]] = f
	}
	if f := rows["v1"]; len(f) != 6 || f[2] != "running" || !regexp.MustCompile(`^[0-9]+s$`).MatchString(f[4]) {
		t.Errorf("v1's row %q; want it running, made moments ago\n%s", f, out)
	}
	if f := rows["v2"]; len(f) != 6 || f[2] != "saved" || f[4] != "-" {
		t.Errorf("v2's row %q; want it saved, of no known age\n%s", f, out)
	}
}
