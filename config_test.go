package main

import (
	"errors"
	"os"
	"testing"
)

// vmup.json is one JSON object: anything after it is a mistake, not a comment.
func TestConfigTrailingGarbageRejected(t *testing.T) {
	for _, data := range []string{`{"cpus":4} trailing garbage`, `{"cpus":4} {"cpus":8}`, `{"cpus":4}]`} {
		t.Run(data, func(t *testing.T) {
			t.Chdir(t.TempDir())
			if err := os.WriteFile(configFile, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := parseCommand("up", []string{"v1"})
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("vmup.json %q: err %v, want a usage error", data, err)
			}
		})
	}
	t.Chdir(t.TempDir())
	os.WriteFile(configFile, []byte("{\"cpus\":4}\n\n"), 0o600)
	if o, _, err := parseCommand("up", []string{"v1"}); err != nil || o.CPUs != 4 || !o.set["cpus"] {
		t.Errorf("vmup.json with a trailing newline: %+v, %v", o, err)
	}
}
