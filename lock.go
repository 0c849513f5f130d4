// Locks: one file per VM (and one per home for what VMs share), flocked, naming its holder.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is an flock on a file; the kernel drops it when the process dies, so a
// killed vmup never leaves a VM locked.
type Lock struct{ f *os.File }

var errLocked = errors.New("locked")

// lockRecord is what a lock's holder writes into the lock file once it has
// the lock: "PID STARTTIME COMMAND". The start time tells that process from
// a later one that got its pid; the command (up, down, destroy, provision)
// says what it is doing, as only an `up` is ever asked to stop.
type lockRecord struct {
	PID     int
	Start   uint64
	Command string
}

var lockCommands = []string{"up", "down", "destroy", "provision", "reset", "prune"}

// parseLockRecord accepts exactly what tryLock writes; anything else (an
// older vmup's bare pid, a half-written file) is no record.
func parseLockRecord(data []byte) (lockRecord, bool) {
	f := strings.Fields(string(data))
	if len(f) != 3 || !slices.Contains(lockCommands, f[2]) {
		return lockRecord{}, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return lockRecord{}, false
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return lockRecord{}, false
	}
	return lockRecord{PID: pid, Start: start, Command: f[2]}, true
}

// alive says whether the recorded process still runs: its pid names a
// process that started when the record says.
func (r lockRecord) alive() bool {
	start, err := procStart(r.PID)
	return r.PID > 0 && err == nil && start == r.Start
}

// describe names the holder for a message; a record that proves nothing
// names nobody.
func (r lockRecord) describe() string {
	if r.Command == "" || !r.alive() {
		return "another vmup"
	}
	return fmt.Sprintf("vmup %s (pid %d)", r.Command, r.PID)
}

// procStart is when the process started (field 22 of /proc/PID/stat, in
// clock ticks since boot). The fields are counted after the last ')': the
// command name before it may hold spaces and parentheses.
func procStart(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:])) // f[0] is field 3
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// tryLock takes the lock for cmd and records the taker, or returns errLocked
// with the holder's pid as its record names it (0 if it names none).
func tryLock(path, cmd string) (*Lock, int, error) {
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return nil, 0, err
	}
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, 0, err
		}
		l, pid, err := lockOpened(f, path, cmd)
		if !errors.Is(err, errStaleLock) {
			return l, pid, err
		}
	}
}

// errStaleLock is a lock taken on a file no longer at its path.
var errStaleLock = errors.New("lock file replaced")

// lockOpened takes the lock on f, opened at path, and records the taker. A
// holder that wrote no record yet is a probe (status) or a taker about to
// write one: waited for briefly, it is no reason to say busy. A file removed
// or replaced since it was opened locks nothing: errStaleLock, open it anew.
func lockOpened(f *os.File, path, cmd string) (*Lock, int, error) {
	for tries := 0; ; tries++ {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		data, _ := os.ReadFile(path)
		rec, ok := parseLockRecord(data)
		if !errors.Is(err, unix.EWOULDBLOCK) || ok || tries == 20 {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, rec.PID, errLocked
			}
			return nil, 0, err
		}
		time.Sleep(5 * time.Millisecond)
	}
	var held, atPath unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &atPath) != nil ||
		held.Ino != atPath.Ino || held.Dev != atPath.Dev {
		f.Close()
		return nil, 0, errStaleLock
	}
	start, _ := procStart(os.Getpid())
	rec := fmt.Sprintf("%d %d %s\n", os.Getpid(), start, cmd)
	// Written before the old length is cut: a reader never sees it empty.
	f.WriteAt([]byte(rec), 0)
	f.Truncate(int64(len(rec)))
	return &Lock{f}, 0, nil
}

// waitLock polls for the lock until it is free or ctx ends.
func waitLock(ctx context.Context, path, cmd string) (*Lock, error) {
	for {
		l, _, err := tryLock(path, cmd)
		if !errors.Is(err, errLocked) {
			return l, err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, errLocked
		}
	}
}

// lockHolder says whether a process holds the lock, and what its record
// says, without taking the lock for longer than the probe or writing to it.
func lockHolder(path string) (rec lockRecord, held bool) {
	f, err := os.Open(path)
	if err != nil {
		return lockRecord{}, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return lockRecord{}, false // closing f releases it
	}
	data, _ := os.ReadFile(path)
	rec, _ = parseLockRecord(data)
	return rec, true
}

// Unlock empties the record first: a holder that let go is named by no
// lock file, even while it still runs.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Truncate(0)
		l.f.Close()
		l.f = nil
	}
}
