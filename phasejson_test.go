package main

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// state.json files written before the journal's phase was typed read as they
// did, and are written back byte for byte: the phase names are the same
// strings, failed_in stays absent when unset and present when it names
// preparing, and an empty phase still reads.
func TestJournalPhaseFormatIsUnchanged(t *testing.T) {
	journal := func(phase, failedIn string) string {
		s := "{\n  \"version\": 2,\n  \"name\": \"v1\",\n  \"phase\": \"" + phase + "\",\n"
		if failedIn != "" {
			s += "  \"failed_in\": \"" + failedIn + "\",\n"
		}
		return s + `  "first_boot_done": false,
  "pid": 4242,
  "ssh_port": 2222,
  "ssh_host": "127.0.0.1",
  "user": "vmup",
  "network": "user",
  "connect": "qemu:///session",
  "pool": "vmup",
  "cpus": 2,
  "memory": 2048,
  "disk": 20,
  "updated": "2024-05-01T10:00:00Z"
}
`
	}
	paths := pathsFor(t.TempDir(), "v1")
	if err := ensureDir(paths.Dir); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		phase, failedIn  string
		diedMidFirstBoot bool
	}{
		{"failed", "provisioning", false},
		{"failed", "preparing", true}, // the phase numbered 0 is written, not omitted
		{"stop_failed", "stopping", false},
		{"running", "", false},
		{"preparing", "", true},
		{"failed", "", false}, // no failed_in: kept and retried, never taken for "failed in preparing"
		{"", "", false},
	} {
		want := journal(c.phase, c.failedIn)
		if err := os.WriteFile(paths.Journal(), []byte(want), 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := readJournal(paths)
		if err != nil {
			t.Errorf("phase %q failed_in %q: %v", c.phase, c.failedIn, err)
			continue
		}
		if got := diedMidFirstBoot(j); got != c.diedMidFirstBoot {
			t.Errorf("phase %q failed_in %q: diedMidFirstBoot %v, want %v", c.phase, c.failedIn, got, c.diedMidFirstBoot)
		}
		data, err := json.MarshalIndent(j, "", "  ")
		if err != nil {
			t.Errorf("phase %q failed_in %q: %v", c.phase, c.failedIn, err)
			continue
		}
		if got := string(data) + "\n"; got != want {
			t.Errorf("phase %q failed_in %q: written as\n%s\nwant\n%s", c.phase, c.failedIn, got, want)
		}
	}
}

// The journal's phase is a Phase: no code turns a phase into its name to
// compare it, or parses a name outside phase.go.
func TestNoCodeComparesPhaseStrings(t *testing.T) {
	phases := []string{}
	for p := Phase(0); p < numPhases; p++ {
		phases = append(phases, phaseConstName(p))
	}
	for _, f := range parseSources(t) {
		if filepath.Base(f.name) == "phase.go" {
			continue
		}
		ast.Inspect(f.file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fun := call.Fun.(type) {
			case *ast.Ident:
				if fun.Name == "parsePhase" {
					t.Errorf("%s: parsePhase outside phase.go", f.fset.Position(call.Pos()))
				}
			case *ast.SelectorExpr:
				if x, ok := fun.X.(*ast.Ident); ok && fun.Sel.Name == "String" && slices.Contains(phases, x.Name) {
					t.Errorf("%s: %s.String() names a phase as a string", f.fset.Position(call.Pos()), x.Name)
				}
			}
			return true
		})
	}
}

// phaseConstName is the Go name of p's constant, as phase.go declares it.
func phaseConstName(p Phase) string {
	parts := strings.Split(p.String(), "_")
	for i, s := range parts {
		parts[i] = strings.ToUpper(s[:1]) + s[1:]
	}
	return strings.Join(parts, "")
}

type sourceFile struct {
	name string
	fset *token.FileSet
	file *ast.File
}

// parseSources parses the package's non-test Go files.
func parseSources(t *testing.T) []sourceFile {
	t.Helper()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []sourceFile
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, sourceFile{name, fset, f})
	}
	return files
}
