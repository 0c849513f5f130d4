package main

import (
	"flag"
	"os"
	"strings"
	"testing"
)

// --help and the README name every command and every flag the code takes,
// and --help names no command the code does not run.
func TestHelpAndReadmeNameEveryCommandAndFlag(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds := completionCommands(usage)
	if len(cmds) < 10 {
		t.Fatalf("--help's Usage lists %d commands", len(cmds))
	}
	for _, c := range cmds {
		if !strings.Contains(string(readme), "vmup "+c.name) {
			t.Errorf("README never shows `vmup %s`", c.name)
		}
		if c.name == "version" || c.name == "completion" {
			continue
		}
		// Runs: an unknown command is a usage error before anything else.
		if code := run([]string{c.name, "--no-such-flag"}); code != exitUsage {
			t.Errorf("vmup %s --no-such-flag: exit %d, want 2", c.name, code)
		}
		flagsFor(c.name, defaultOptions()).VisitAll(func(f *flag.Flag) {
			long := "--" + f.Name
			if len(f.Name) == 1 {
				long = "-" + f.Name
			}
			if !strings.Contains(usage, long) {
				t.Errorf("--help does not name %s %s", c.name, long)
			}
			if !strings.Contains(string(readme), long) {
				t.Errorf("README does not name %s %s", c.name, long)
			}
		})
	}
}
