package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Scripts rely on the README's list of JSON events: every event `up` can
// emit must be in it.
func TestReadmeListsEveryEvent(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	events := map[string]bool{"phase": true, "step_started": true, "step_done": true, "step_skipped": true,
		"step_failed": true, "warning": true, "error": true, "hint": true, "exit": true}
	sources, _ := filepath.Glob("*.go")
	said := regexp.MustCompile(`\.Say\("([a-z_]+)"`)
	for _, f := range sources {
		if strings.HasSuffix(f, "_test.go") || f == "commands.go" {
			continue // commands other than up print no JSON
		}
		data, _ := os.ReadFile(f)
		for _, m := range said.FindAllStringSubmatch(string(data), -1) {
			events[m[1]] = true
		}
	}
	for ev := range events {
		if !strings.Contains(string(readme), "`"+ev+"`") {
			t.Errorf("README does not list the JSON event %q", ev)
		}
	}
	for _, code := range []string{"130 / 143 / 129", "| 5 |", "| 4 |", "| 3 |", "| 2 |", "| 1 |", "| 0 |"} {
		if !strings.Contains(string(readme), code) {
			t.Errorf("README exit code table lacks %q", code)
		}
	}
}
