package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A child that exits normally leaves nothing behind: what it started in its
// process group is stopped before Run returns.
func TestRunnerEmptiesGroupAfterExit(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	var pgid int
	// Stdout is a file, not a pipe: no WaitDelay, Run would return at once.
	_, err = execRunner{Grace: 200 * time.Millisecond}.Run(context.Background(), Cmd{
		Args:    []string{"sh", "-c", `sleep 300 & echo $! > "$0"; exit 0`, pidFile},
		Stdout:  devNull,
		Stderr:  devNull,
		Started: func(g int) { pgid = g },
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	bg, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Kill(bg, unix.SIGKILL)
	if !dead(bg) {
		t.Errorf("Run returned while the background sleep %d of the child's group %d lives on", bg, pgid)
	}
}

// dead says whether pid is gone or a zombie (dead, not yet reaped by init).
func dead(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return unix.Kill(pid, 0) == unix.ESRCH
	}
	_, rest, _ := strings.Cut(string(data), ") ")
	return strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X")
}
