package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// A download an `up` resolved is used until its base volume exists: the up
// holds a shared flock on the file, and prune removes a download only under
// an exclusive one it takes without waiting. Both run in the same home, so
// the kernel's lock on the one file decides.

// resolveAndHold is resolveImage, with a download of the cache held in use
// until release is called.
func resolveAndHold(ctx context.Context, out *Output, run Runner, home, image, wantSHA string) (path string, release func(), err error) {
	for tries := 0; ; tries++ {
		path, err := resolveImage(ctx, out, run, home, image, wantSHA)
		if err != nil || filepath.Dir(path) != filepath.Join(home, "cache") {
			return path, func() {}, err
		}
		f, err := holdShared(ctx, path)
		if err == nil {
			return path, func() { f.Close() }, nil
		}
		// Removed by a prune between resolving and holding it: fetch it again.
		if !errors.Is(err, os.ErrNotExist) || tries == 2 {
			return "", nil, err
		}
	}
}

// holdShared flocks path shared, and fails with os.ErrNotExist if the name
// no longer leads to the file it locked.
func holdShared(ctx context.Context, path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, err
		}
		// A prune holds it only while it removes it.
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			f.Close()
			return nil, err
		}
	}
	if !stillNames(f, path) {
		f.Close()
		return nil, os.ErrNotExist
	}
	return f, nil
}

// stillNames says whether path still leads to the open file f: a file
// locked after another vmup renamed a new one over its name is not that name's.
func stillNames(f *os.File, path string) bool {
	fst, err1 := f.Stat()
	st, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && os.SameFile(fst, st)
}

// errInUse is a download an `up` holds.
var errInUse = errors.New("in use")

// removeUnused removes path (not with dryRun) unless a vmup holds it in use.
func removeUnused(path string, dryRun bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return errInUse
	} else if err != nil {
		return err
	}
	if !stillNames(f, path) {
		return errInUse // replaced meanwhile by a pinned refetch: a new download
	}
	if dryRun {
		return nil
	}
	return os.Remove(path)
}

// replaceHeld renames from over to once no vmup holds to in use: a run that
// resolved to builds its base from those bytes, under the name their sha256
// gives, so they are not changed under it. It waits for an exclusive flock
// on the file to is now (a run lets go once its base exists).
func replaceHeld(ctx context.Context, out *Output, from, to string) error {
	f, err := os.Open(to)
	if errors.Is(err, os.ErrNotExist) {
		return os.Rename(from, to)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for said := false; ; said = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil && !stillNames(f, to) {
			// Another refetch replaced it meanwhile: wait for that file instead.
			f.Close()
			return replaceHeld(ctx, out, from, to)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		if !said && out != nil {
			out.Say("waiting", "Waiting for another vmup to finish with the cached copy of %s before it is replaced", filepath.Base(to))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	return os.Rename(from, to)
}
