package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// playbookLogRE names the logs Ansible.Run writes; the newest sorts last.
var playbookLogRE = lazyRE(`^playbook-[0-9]{8}T[0-9]{6}Z\.log$`)

// runLogs shows the VM's logs on stdout; -f polls the console log every
// env.Poll until a signal ends it (followExit).
func runLogs(env Env, o *Options) int {
	return showLogs(env.ctx(), os.Stdout, env, o, func(ctx context.Context) error { return sleepCtx(ctx, env.Poll) })
}

// followExit is how a signal ends `logs -f`: Ctrl+C, the way to stop
// following, with 0; SIGTERM and SIGHUP with their codes.
func followExit(sig os.Signal) (int, bool) {
	if sig == syscall.SIGINT {
		return exitOK, true
	}
	return signalExit(sig), true
}

// showLogs writes the VM's last playbook log and its console log to w, each
// under its path; with -f it then follows the console log until ctx ends,
// calling wait between looks. It reads only regular files in the VM's own
// state dir, opened without following a symlink: nothing on disk is trusted.
func showLogs(ctx context.Context, w io.Writer, env Env, o *Options, wait func(context.Context) error) int {
	paths, j, code := loadVM(env, o, "logs")
	if j == nil {
		return code
	}
	fail := func(err error) int {
		if errors.Is(err, syscall.EPIPE) {
			return exitOK // the reader had enough (`vmup logs web | head`)
		}
		return reportError(env.Out, fmt.Errorf("VM %s: %w", o.Name, err))
	}
	dirFD, err := openStateDir(paths)
	if err == nil && dirFD < 0 {
		err = errors.New("its state directory vanished")
	}
	if err != nil {
		return fail(err)
	}
	playbook, err := lastPlaybookLog(dirFD, paths)
	unix.Close(dirFD)
	if err != nil {
		return fail(err)
	}
	// Opened anew at each look: a VM destroyed and made again has a new state dir.
	openConsole := func() (*os.File, error) {
		fd, err := openStateDir(paths)
		if err != nil || fd < 0 {
			return nil, err
		}
		defer unix.Close(fd)
		return openRegularAt(fd, paths.Console(), "console.log")
	}
	console, err := openConsole()
	if err != nil {
		if playbook != nil {
			playbook.Close()
		}
		return fail(err)
	}
	defer func() {
		if console != nil {
			console.Close()
		}
	}()
	if playbook != nil {
		fmt.Fprintf(w, "==> %s <==\n", playbook.Name())
		_, err := io.Copy(w, playbook)
		playbook.Close()
		if err == nil {
			_, err = io.WriteString(w, "\n")
		}
		if err != nil {
			return fail(err)
		}
	} else {
		env.Out.Warn("VM %s has run no playbook: no log in %s", o.Name, paths.Logs())
	}
	header := fmt.Sprintf("==> %s <==\n", paths.Console())
	if !o.Follow {
		if console == nil {
			env.Out.Warn("VM %s has no console log yet (it never booted)", o.Name)
			return exitOK
		}
		if _, err := io.WriteString(w, header); err != nil {
			return fail(err)
		}
		if _, err := io.Copy(w, console); err != nil {
			return fail(err)
		}
		return exitOK
	}
	if console == nil {
		env.Out.Warn("VM %s has no console log yet (it never booted); waiting for one", o.Name)
	}
	f := console
	console = nil // follow closes it
	if err := follow(ctx, w, header, f, openConsole, wait); err != nil {
		return fail(err)
	}
	return exitOK
}

// follow copies f to w and then what is appended to it, until ctx ends. A
// file made anew at its path (the VM made again) or cut short is read from
// its start; while there is none (nil), it waits for one.
func follow(ctx context.Context, w io.Writer, header string, f *os.File, open func() (*os.File, error), wait func(context.Context) error) error {
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	shown := false
	for {
		if f != nil {
			if !shown {
				if _, err := io.WriteString(w, header); err != nil {
					return err
				}
				shown = true
			}
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
		}
		if wait(ctx) != nil {
			return nil
		}
		cur, err := open()
		if err != nil {
			return err
		}
		if cur != nil && (f == nil || !sameFile(f, cur)) {
			if f != nil {
				f.Close()
			}
			f = cur
			continue
		}
		if cur != nil {
			cur.Close()
		}
		if f == nil {
			continue
		}
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if off, err := f.Seek(0, io.SeekCurrent); err == nil && st.Size() < off {
			f.Seek(0, io.SeekStart) // cut short: what is there now is new
		}
	}
}

// openStateDir opens the VM's state dir after checking it as every command
// does, and never through a symlink; -1 when it is gone.
func openStateDir(paths Paths) (int, error) {
	if err := checkStateDirs(paths); err != nil {
		return -1, err
	}
	fd, err := unix.Open(paths.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, nil
	case err != nil:
		return -1, fmt.Errorf("cannot open its state directory: %w", err)
	}
	return fd, nil
}

func sameFile(a, b *os.File) bool {
	sa, err1 := a.Stat()
	sb, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// lastPlaybookLog opens the newest playbook log in the state dir's logs/, or
// returns nil when there is none.
func lastPlaybookLog(dirFD int, paths Paths) (*os.File, error) {
	fd, err := unix.Openat(dirFD, "logs", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		return nil, errors.New("logs is not a directory")
	case err != nil:
		return nil, fmt.Errorf("cannot open logs: %w", err)
	}
	logs := os.NewFile(uintptr(fd), paths.Logs())
	defer logs.Close()
	entries, err := logs.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("cannot read logs: %w", err)
	}
	var names []string
	for _, e := range entries {
		if playbookLogRE.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	last := slices.Max(names)
	f, err := openRegularAt(fd, filepath.Join(paths.Logs(), last), "logs/"+last)
	if err == nil && f == nil {
		err = fmt.Errorf("logs/%s vanished while it was read", last)
	}
	return f, err
}

// openRegularAt opens the file at path, which is the base name of path in the
// directory dirFD, for reading if it is a regular file: a symlink is not
// followed, and a FIFO or a device is not read (O_NONBLOCK: opening a FIFO
// does not wait for a writer). A missing file is nil. Errors name it as rel.
func openRegularAt(dirFD int, path, rel string) (*os.File, error) {
	fd, err := unix.Openat(dirFD, filepath.Base(path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%s is not a regular file", rel)
	case err != nil:
		return nil, fmt.Errorf("cannot open %s: %w", rel, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is not a regular file", rel)
	}
	unix.SetNonblock(fd, false)
	return os.NewFile(uintptr(fd), path), nil
}
