package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Scripts rely on the README's list of JSON events: every event a command
// can emit must be in it (TestReadmeJSONEventsMatchTheCode checks fields too).
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
		if strings.HasSuffix(f, "_test.go") {
			continue
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

var update = flag.Bool("update", false, "rewrite README.md's generated parts")

const (
	tableBegin = "<!-- BEGIN phase table: generated from phase.go by `go test -run TestReadmePhaseTable -update` -->\n"
	tableEnd   = "<!-- END phase table -->"
)

// The README's phase table is the code's, so it never drifts; -update
// rewrites it, the way cmd/go keeps its documentation current.
func TestReadmePhaseTable(t *testing.T) {
	checkReadmeGenerated(t, tableBegin, tableEnd, phaseTableMarkdown(),
		"README.md's phase table differs from phase.go; run `go test -run TestReadmePhaseTable -update`")
}

// checkReadmeGenerated checks that README.md holds generated between the
// markers begin and end; -update writes it there.
func checkReadmeGenerated(t *testing.T, begin, end, generated, differs string) {
	t.Helper()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	b, e := strings.Index(readme, begin), strings.Index(readme, end)
	if b < 0 || e < b {
		t.Fatalf("README.md lacks the markers %q … %q", begin, end)
	}
	want := readme[:b+len(begin)] + generated + readme[e:]
	if want == readme {
		return
	}
	if *update {
		if err := os.WriteFile("README.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Error(differs)
}

// Every action the table names is explained in the README.
func TestReadmeExplainsEveryAction(t *testing.T) {
	readme, _ := os.ReadFile("README.md")
	_, legend, _ := strings.Cut(string(readme), "Actions in the table:")
	legend, _, _ = strings.Cut(legend, tableBegin)
	for _, a := range actionNames {
		if !strings.Contains(legend, "`"+a+"`") {
			t.Errorf("README's legend lacks the action %q", a)
		}
	}
}
