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

// With --json anywhere before `--`, an error in the arguments or in vmup.json
// still reaches a script as error, hint and exit events on stdout.
func TestJSONUsageErrorsEmitEvents(t *testing.T) {
	badConfig := t.TempDir()
	os.WriteFile(filepath.Join(badConfig, configFile), []byte(`{"cpus": "four"}`), 0o600)
	cases := []struct {
		dir  string
		args []string
		json bool
	}{
		{"", []string{"up", "v1", "--json", "--cpus", "x"}, true},
		{"", []string{"up", "--json", "v1", "--bogus"}, true},
		{"", []string{"up", "v1", "-json=true", "--cpus", "x"}, true},
		{"", []string{"up", "v1", "too", "many", "--json"}, true},
		{badConfig, []string{"up", "v1", "--json"}, true},
		{"", []string{"status", "--json", "--bogus"}, true},
		{badConfig, []string{"status", "--json"}, true},
		{"", []string{"up", "v1", "--json=false", "--cpus", "x"}, false},
		{"", []string{"up", "v1", "--cpus", "x", "--", "--json"}, false},
	}
	for _, c := range cases {
		cmd := exec.Command(vmupBinary, c.args...)
		cmd.Dir = c.dir
		cmd.Env = append(os.Environ(), "VMUP_HOME="+t.TempDir(), "VMUP_VIRSH=/nonexistent/virsh")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.Run()
		name := strings.Join(c.args, " ")
		if code := cmd.ProcessState.ExitCode(); code != exitUsage {
			t.Errorf("vmup %s: exit %d, want 2\n%s", name, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "vmup: error: ") {
			t.Errorf("vmup %s: no error on stderr: %q", name, stderr.String())
		}
		if !c.json {
			if stdout.Len() != 0 {
				t.Errorf("vmup %s: JSON without --json: %q", name, stdout.String())
			}
			continue
		}
		var got []string
		var last jsonEvent
		for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
			if err := json.Unmarshal([]byte(line), &last); err != nil {
				t.Errorf("vmup %s: stdout line %q is no JSON event", name, line)
				break
			}
			got = append(got, last.Event)
		}
		if len(got) < 2 || got[0] != "error" || got[len(got)-1] != "exit" || last.ExitCode == nil || *last.ExitCode != exitUsage {
			t.Errorf("vmup %s: events %v (last %+v), want error … exit with exit_code 2\nstdout: %s", name, got, last, stdout.String())
		}
	}
}
