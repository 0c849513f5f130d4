package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runJSON runs another vmup command of r with --json and returns its stdout
// events, decoded loosely so any field can be checked, its stderr and its exit code.
func (r *binaryRun) runJSON(env []string, args ...string) ([]map[string]any, string, int) {
	r.t.Helper()
	cmd := exec.Command(vmupBinary, args...)
	cmd.Env = append(append([]string{}, r.env...), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Run()
	return decodeEvents(r.t, strings.Join(args, " "), stdout.String()), stderr.String(), cmd.ProcessState.ExitCode()
}

// decodeEvents reads JSON Lines: every line must be an event, and the last one exit.
func decodeEvents(t *testing.T, name, stdout string) []map[string]any {
	t.Helper()
	var evs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev["event"] == nil || ev["time"] == nil {
			t.Errorf("vmup %s: stdout line %q is no JSON event", name, line)
			continue
		}
		evs = append(evs, ev)
	}
	if len(evs) == 0 || evs[len(evs)-1]["event"] != "exit" {
		t.Errorf("vmup %s: stdout does not end with an exit event:\n%s", name, stdout)
	}
	return evs
}

func jsonEventNames(evs []map[string]any) []string {
	var names []string
	for _, ev := range evs {
		names = append(names, ev["event"].(string))
	}
	return names
}

func eventsNamed(evs []map[string]any, name string) []map[string]any {
	var out []map[string]any
	for _, ev := range evs {
		if ev["event"] == name {
			out = append(out, ev)
		}
	}
	return out
}

// checkExit checks the last event's exit_code against the process's.
func checkExit(t *testing.T, name string, evs []map[string]any, code, want int) {
	t.Helper()
	if code != want {
		t.Errorf("vmup %s: exit %d, want %d", name, code, want)
	}
	if len(evs) == 0 {
		return
	}
	if got, ok := evs[len(evs)-1]["exit_code"].(float64); !ok || int(got) != code {
		t.Errorf("vmup %s: exit event %v, want exit_code %d", name, evs[len(evs)-1], code)
	}
}

// status, ssh-config, down and destroy speak JSON Lines with --json: their
// data as events of its own, their messages as events, and an exit event last.
func TestJSONStatusSSHConfigDownDestroySpeakEvents(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}

	evs, stderr, code := r.runJSON(nil, "status", "--json")
	checkExit(t, "status", evs, code, 0)
	vms := eventsNamed(evs, "vm")
	if len(vms) != 1 || vms[0]["vm"] != "v1" || vms[0]["domain"] != "running" || vms[0]["address"] != "127.0.0.1" ||
		vms[0]["age_seconds"] == nil || vms[0]["created"] == nil || vms[0]["forwards"] == nil || vms[0]["ssh"] == nil {
		t.Errorf("status --json: vm events %v, want one for v1 with its domain, address, age, forwards and ssh", vms)
	}
	if strings.Contains(stderr, "NAME") {
		t.Errorf("status --json printed the table: %q", stderr)
	}

	evs, _, code = r.runJSON(nil, "status", "v1", "--json")
	checkExit(t, "status v1", evs, code, 0)
	if vms := eventsNamed(evs, "vm"); len(vms) != 1 || vms[0]["phase"] != "detached" {
		t.Errorf("status v1 --json: events %v, want one vm event in phase detached", evs)
	}

	evs, stderr, code = r.runJSON(nil, "ssh-config", "v1", "--json")
	checkExit(t, "ssh-config", evs, code, 0)
	path := filepath.Join(r.home, "vms", "v1", "ssh.config")
	cfgs := eventsNamed(evs, "ssh_config")
	written, _ := os.ReadFile(path)
	if len(cfgs) != 1 || cfgs[0]["path"] != path || cfgs[0]["config"] != string(written) || !strings.HasPrefix(string(written), "Host v1") {
		t.Errorf("ssh-config --json: events %v, want one ssh_config with path %s and its text %q", evs, path, written)
	}
	if !strings.Contains(stderr, "Written to "+path) {
		t.Errorf("ssh-config --json: stderr %q lacks the human line", stderr)
	}

	evs, stderr, code = r.runJSON(nil, "down", "v1", "--json")
	checkExit(t, "down", evs, code, 0)
	if got := strings.Join(jsonEventNames(evs), " "); got != "stopping stopped exit" {
		t.Errorf("down --json: events %q, want stopping stopped exit", got)
	}
	if !strings.Contains(stderr, "VM v1 is shut off") {
		t.Errorf("down --json: stderr %q lacks the human line", stderr)
	}

	evs, _, code = r.runJSON(nil, "status", "v1", "--json")
	checkExit(t, "status v1 (shut off)", evs, code, statusNotRunning)
	if vms := eventsNamed(evs, "vm"); len(vms) != 1 || vms[0]["domain"] != "shut off" {
		t.Errorf("status v1 --json of a shut-off VM: events %v", evs)
	}

	evs, _, code = r.runJSON(nil, "destroy", "v1", "--json")
	checkExit(t, "destroy", evs, code, 0)
	if got := strings.Join(jsonEventNames(evs), " "); got != "destroyed exit" {
		t.Errorf("destroy --json: events %q, want destroyed exit", got)
	}

	evs, _, code = r.runJSON(nil, "status", "v1", "--json")
	checkExit(t, "status v1 (gone)", evs, code, statusNoSuchVM)
	if got := jsonEventNames(evs); len(got) < 2 || got[0] != "error" {
		t.Errorf("status --json of no VM: events %v, want error … exit", got)
	}
}

// Every command that takes --json reports a usage error, a bad vmup.json
// and an environment error as events, so a script never parses stderr.
func TestJSONErrorsOfEveryCommand(t *testing.T) {
	badConfig := t.TempDir()
	os.WriteFile(filepath.Join(badConfig, configFile), []byte(`{"cpus": "four"}`), 0o600)
	cases := []struct {
		dir  string
		args []string
		code int
	}{
		{"", []string{"down", "v1", "--json", "--bogus"}, exitUsage},
		{"", []string{"destroy", "v1", "--json", "--bogus"}, exitUsage},
		{"", []string{"provision", "v1", "--json", "--bogus"}, exitUsage},
		{"", []string{"reset", "v1", "--json", "--bogus"}, exitUsage},
		{"", []string{"status", "--json", "--bogus"}, exitUsage},
		{"", []string{"ssh-config", "v1", "--json", "--bogus"}, exitUsage},
		{"", []string{"images", "--json", "--bogus"}, exitUsage},
		{"", []string{"down", "Bad_Name", "--json"}, exitUsage},
		{"", []string{"destroy", "--json"}, exitUsage},
		{"", []string{"down", "v1", "--json", "--force", "--suspend"}, exitUsage},
		{badConfig, []string{"down", "v1", "--json"}, exitUsage},
		{badConfig, []string{"destroy", "v1", "--json"}, exitUsage},
		{badConfig, []string{"ssh-config", "v1", "--json"}, exitUsage},
		{badConfig, []string{"provision", "v1", "--json"}, exitUsage},
		{"", []string{"down", "nosuchvm", "--json"}, exitFailed},
		{"", []string{"ssh-config", "nosuchvm", "--json"}, exitFailed},
		{"", []string{"provision", "nosuchvm", "--json"}, exitFailed},
		{"", []string{"status", "nosuchvm", "--json"}, statusNoSuchVM},
	}
	for _, c := range cases {
		name := strings.Join(c.args, " ")
		cmd := exec.Command(vmupBinary, c.args...)
		cmd.Dir = c.dir
		cmd.Env = append(os.Environ(), "VMUP_HOME="+t.TempDir(), "VMUP_VIRSH=/nonexistent/virsh")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.Run()
		evs := decodeEvents(t, name, stdout.String())
		checkExit(t, name, evs, cmd.ProcessState.ExitCode(), c.code)
		if got := jsonEventNames(evs); len(got) < 2 || got[0] != "error" {
			t.Errorf("vmup %s: events %v, want error … exit", name, got)
		}
		if !strings.Contains(stderr.String(), "vmup: error: ") {
			t.Errorf("vmup %s: no error on stderr: %q", name, stderr.String())
		}
	}
}

// Where ansible-playbook ends a first boot or a provision, the exit event
// carries its exit code and a reading of it next to vmup's 3.
func TestJSONExitCarriesAnsiblesReading(t *testing.T) {
	for _, c := range []struct{ mode, result string }{
		{"fail", "failed"}, {"unreachable", "unreachable"}, {"exit4", "error"}, {"exit1", "error"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			r := startVmup(t, c.mode)
			r.waitEvent("exit")
			last := r.seen[len(r.seen)-1]
			if code := r.exitCode(); code != exitProvision {
				t.Fatalf("up: exit %d, want 3", code)
			}
			// The typed events lack the new fields before the fix: read the raw line.
			evs, _, code := r.runJSON([]string{"VMUP_FAKE_PLAYBOOK=" + c.mode}, "provision", "v1", "--json")
			checkExit(t, "provision", evs, code, exitProvision)
			want := map[string]int{"fail": 2, "unreachable": 4, "exit4": 4, "exit1": 1}[c.mode]
			if len(evs) > 0 {
				ev := evs[len(evs)-1]
				if got, _ := ev["ansible_exit_code"].(float64); int(got) != want || ev["ansible_result"] != c.result {
					t.Errorf("provision --json: exit event %v, want ansible_exit_code %d, ansible_result %q", ev, want, c.result)
				}
			}
			raw, _ := json.Marshal(last)
			var ev map[string]any
			json.Unmarshal(raw, &ev)
			if got, _ := ev["ansible_exit_code"].(float64); int(got) != want || ev["ansible_result"] != c.result {
				t.Errorf("up --json: exit event %s, want ansible_exit_code %d, ansible_result %q", raw, want, c.result)
			}
		})
	}
}

// statusVM is the vm event of `status NAME --json`'s output.
func statusVM(out string) (jsonEvent, bool) {
	for _, line := range strings.Split(out, "\n") {
		var ev jsonEvent
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "vm" {
			return ev, true
		}
	}
	return jsonEvent{}, false
}
