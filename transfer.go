// Copying files and directories into and out of a VM over its ssh: `vmup cp`,
// and the --sync and --collect of `vmup run`.
package main

// What crosses is a tar stream between the guest's tar and this host's
// archive/tar (never the host's tar): regular files, directories and
// symlinks, with their permission bits (no setuid, setgid or sticky bit) and
// mtimes, without owners (the guest's tar extracts with --no-same-owner).
//
// A symlink crosses only if it resolves inside what is copied: a relative
// target that, followed from the link's own directory through the other
// symlinks of the copy as the kernel would, never goes above the top. On
// the host's side the top is the SRC itself, checked before a byte is sent;
// on the way out it is the destination directory, and the guest's stream is
// trusted no further than that (untar.go). Devices, fifos, sockets and hard
// links are refused either way.
//
// Every path the guest's shell gets is one word quoted by singleQuote (runproto.go): ssh
// joins the words of a command into one line for the login's shell, so an
// unquoted name would be split, expanded or run there. A guest path not
// starting with '/' is relative to the login's home, where ssh starts; "~/"
// is read as that and never handed to the shell to expand.

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// guestPath is p as the guest's shell is given it: clean, and relative to
// the login's home unless absolute ("", "~" and "~/" are the home itself).
func guestPath(p string) string {
	if p == "~" {
		return "."
	}
	return path.Clean(strings.TrimPrefix(p, "~/"))
}

// guestBase is the name a guest path lands under on the host, or an error for
// a path that has none of its own ("/", ".", "..", the home).
func guestBase(p string) (string, error) {
	base := path.Base(guestPath(p))
	if base == "." || base == ".." || base == "/" {
		return "", usagef("name the directory by its own path, such as /home/vmup",
			"cannot copy %q out of a VM: it has no name of its own to land under", p)
	}
	return base, nil
}

// upEntry is one entry of a stream to the guest.
type upEntry struct {
	name  string      // in the stream: slash-separated, relative
	path  string      // on this host
	mode  fs.FileMode // type and permission bits
	link  string      // a symlink's target
	mtime time.Time
}

// planUpload lists what is sent of hostSrc: with named, hostSrc itself under
// its base name (cp; a SRC that is a symlink is followed), else the entries of
// the directory hostSrc (--sync). It reads no file's content, and refuses
// (a usage error) a symlink that does not resolve inside hostSrc and any
// special file, before anything is sent.
func planUpload(hostSrc string, named bool) ([]upEntry, error) {
	abs, err := filepath.Abs(hostSrc)
	if err != nil {
		return nil, err
	}
	root, err := filepath.EvalSymlinks(abs)
	var st fs.FileInfo
	if err == nil {
		st, err = os.Stat(root)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch base := filepath.Base(abs); {
	case err != nil:
		return nil, usagef("", "cannot copy %s: %v", hostSrc, err)
	case named && base == string(filepath.Separator):
		return nil, usagef("name what in it to copy", "cannot copy / as a whole")
	case !named && !st.IsDir():
		return nil, usagef("", "%s is not a directory", hostSrc)
	}
	var entries []upEntry
	links := map[string]string{} // by path relative to root
	var walk func(p, rel string, fi fs.FileInfo) error
	walk = func(p, rel string, fi fs.FileInfo) error {
		e := upEntry{name: rel, path: p, mode: fi.Mode(), mtime: fi.ModTime()}
		if named {
			e.name = path.Join(filepath.Base(abs), rel)
		}
		switch m := fi.Mode(); {
		case m.IsDir(), m.IsRegular():
		case m&fs.ModeSymlink != 0:
			if e.link, err = os.Readlink(p); err != nil {
				return err
			}
			links[rel] = e.link
		default:
			return usagef("leave it out: copy what is around it by name",
				"cannot copy %s: it is a %s, not a file, directory or symlink", p, specialKind(m))
		}
		if named || rel != "." {
			entries = append(entries, e)
		}
		if !fi.IsDir() {
			return nil
		}
		children, err := os.ReadDir(p)
		if err != nil {
			return err
		}
		for _, c := range children {
			cp := filepath.Join(p, c.Name())
			cfi, err := os.Lstat(cp)
			if err != nil {
				return err
			}
			if err := walk(cp, path.Join(rel, c.Name()), cfi); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root, ".", st); err != nil {
		return nil, err
	}
	for _, e := range entries {
		rel := e.name
		if named {
			_, rel, _ = strings.Cut(e.name, "/")
		}
		if e.link != "" && !staysInside(links, rel, e.link) {
			return nil, usagef("leave it out, or copy what it points to by its own path",
				"cannot copy symlink %s: it points outside %s (to %q)", e.path, hostSrc, e.link)
		}
	}
	return entries, nil
}

func specialKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// staysInside says whether the symlink at (slash-separated, relative to a
// top) with target resolves to a place under that top: followed from the
// link's directory component by component, through the symlinks of links
// (path → target) as the kernel follows them, ".." after a symlink included.
// An absolute target, a loop and more than 40 links on the way are outside.
func staysInside(links map[string]string, at, target string) bool {
	if path.IsAbs(target) {
		return false
	}
	var done []string // the real directories reached, below the top
	if d := path.Dir(at); d != "." {
		done = strings.Split(d, "/")
	}
	todo := strings.Split(target, "/")
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return false
			}
			done = done[:len(done)-1]
			continue
		}
		next := append(done[:len(done):len(done)], c)
		t, isLink := links[strings.Join(next, "/")]
		if !isLink {
			done = next
			continue
		}
		if hops++; hops > 40 || path.IsAbs(t) {
			return false
		}
		todo = append(strings.Split(t, "/"), todo...)
	}
	return true
}

// errGuestStopped ends a stream the guest's tar no longer reads.
var errGuestStopped = errors.New("the guest's tar stopped reading")

// sendTar streams entries as one tar to the guest's tar, which extracts them
// in dir (made if missing) with their modes and without owners. What is in
// dir already is merged with as the guest's tar does: files are replaced.
func sendTar(ctx context.Context, s *SSH, entries []upEntry, dir string) error {
	pr, pw := io.Pipe()
	wrote := make(chan error, 1)
	go func() {
		err := writeTar(pw, entries)
		pw.CloseWithError(err)
		wrote <- err
	}()
	q := singleQuote(dir)
	_, runErr := s.ExecWith(ctx, pr, nil, "mkdir", "-p", "--", q, "&&",
		"tar", "-x", "-p", "-f", "-", "-C", q, "--no-same-owner")
	pr.CloseWithError(errGuestStopped) // a writer still at work stops
	writeErr := <-wrote
	what := fmt.Sprintf("cannot copy into %s of VM %s", dir, s.name)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case writeErr != nil && !errors.Is(writeErr, errGuestStopped):
		return fmt.Errorf("%s: %w", what, writeErr)
	case runErr != nil:
		return guestFailed(s, runErr, what)
	}
	return nil
}

// writeTar writes entries as a tar stream, each file's content as it is now:
// a file replaced by anything but a file since planUpload is an error.
func writeTar(w io.Writer, entries []upEntry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: int64(e.mode.Perm()), ModTime: e.mtime}
		switch {
		case e.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		case e.mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			if err := writeTarFile(tw, h, e.path); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
	}
	return tw.Close()
}

func writeTarFile(tw *tar.Writer, h *tar.Header, p string) error {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is no longer a file", p)
	}
	h.Typeflag, h.Size, h.Mode, h.ModTime = tar.TypeReg, st.Size(), int64(st.Mode().Perm()), st.ModTime()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, h.Size); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s shrank while it was copied", p)
		}
		return err
	}
	return nil
}

// copyToGuest copies hostSrc (a file or a directory tree) into the guest's
// directory guestDir, made if missing, as guestDir/BASE.
func copyToGuest(ctx context.Context, s *SSH, hostSrc, guestDir string) error {
	entries, err := planUpload(hostSrc, true)
	if err != nil {
		return err
	}
	return sendTar(ctx, s, entries, guestPath(guestDir))
}

// syncSpec reads --sync's HOST_DIR[:GUEST_DIR], cut at the first ':'.
// GUEST_DIR is by default HOST_DIR's base name in the login's home; hostDir
// comes back absolute. HOST_DIR must be a directory that syncToGuest would
// send as it is (no symlink out of it, no special file), so a bad one is
// refused before anything is made.
func syncSpec(spec string) (hostDir, guestDir string, err error) {
	const hint = "give it as HOST_DIR[:GUEST_DIR]"
	h, g, hasGuest := strings.Cut(spec, ":")
	switch {
	case h == "":
		return "", "", usagef(hint, "--sync %q names no host directory", spec)
	case hasGuest && g == "":
		return "", "", usagef(hint, "--sync %q names no guest directory after the ':'", spec)
	}
	if hostDir, err = filepath.Abs(h); err != nil {
		return "", "", err
	}
	if _, err := planUpload(hostDir, false); err != nil {
		return "", "", err
	}
	if !hasGuest {
		if g = filepath.Base(hostDir); g == string(filepath.Separator) {
			return "", "", usagef("give the guest's directory: --sync /:GUEST_DIR", "--sync / has no name to use in the guest")
		}
	}
	return hostDir, guestPath(g), nil
}

// syncToGuest copies the contents of hostDir into the guest's directory
// guestDir (made if missing; its own mode is left as it is). It adds and
// replaces, and deletes nothing in guestDir.
func syncToGuest(ctx context.Context, s *SSH, hostDir, guestDir string) error {
	entries, err := planUpload(hostDir, false)
	if err != nil {
		return err
	}
	return sendTar(ctx, s, entries, guestPath(guestDir))
}

// guestMissing is the guest's exit code for a SRC that does not exist; tar
// and ssh never exit with it.
const guestMissing = 66

// missingError is a guest path that does not exist.
type missingError struct{ path, vm string }

func (e *missingError) Error() string {
	return fmt.Sprintf("%s: no such file or directory in VM %s", e.path, e.vm)
}

// copyFromGuest copies the guest's guestSrc (a file or a directory tree) into
// hostDir (made if missing) as hostDir/BASE. The stream lands in a temporary
// directory in hostDir first and is moved into place only once all of it
// came and passed (untar.go); otherwise nothing of it is left. Onto an
// existing BASE it merges as docker cp does: directories merge, a file or
// symlink replaces a file or symlink, and a directory and a file never
// replace each other.
func copyFromGuest(ctx context.Context, s *SSH, guestSrc, hostDir string) error {
	base, err := guestBase(guestSrc)
	if err != nil {
		return err
	}
	src := guestPath(guestSrc)
	what := fmt.Sprintf("cannot copy %s out of VM %s", src, s.name)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	tmp, err := os.MkdirTemp(hostDir, ".vmup-cp-*")
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer os.RemoveAll(tmp)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	ran := make(chan error, 1)
	go func() {
		q := singleQuote(src)
		_, err := s.ExecWith(runCtx, nil, pw, "test", "-e", q, "||", "test", "-L", q, "||", "exit", fmt.Sprint(guestMissing), ";",
			"tar", "-c", "-f", "-", "-C", singleQuote(path.Dir(src)), singleQuote("./"+base))
		pw.CloseWithError(err)
		ran <- err
	}()
	x := newExtractor(tmp, hostDir, base, s.name)
	readErr := x.read(pr)
	if readErr != nil {
		cancel()
		pr.CloseWithError(readErr)
	} else {
		io.Copy(io.Discard, pr) // tar pads its stream past the end
	}
	runErr := <-ran
	// The reader's error is its own unless it is the guest's ending early.
	own := readErr != nil && !errors.Is(readErr, io.ErrUnexpectedEOF) && (runErr == nil || !errors.Is(readErr, runErr))
	var ee *ExitError
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case own:
		return fmt.Errorf("%s: %w", what, readErr)
	case errors.As(runErr, &ee) && ee.ExitCode == guestMissing:
		return &missingError{path: src, vm: s.name}
	case runErr != nil:
		return guestFailed(s, runErr, what)
	case readErr != nil:
		return fmt.Errorf("%s: %w", what, readErr)
	}
	if err := x.finish(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// collectFromGuest is copyFromGuest for --collect: a guestPath that the
// guest does not have is an error that says so.
func collectFromGuest(ctx context.Context, s *SSH, guestPath, hostDir string) error {
	err := copyFromGuest(ctx, s, guestPath, hostDir)
	if me := (*missingError)(nil); errors.As(err, &me) {
		return fmt.Errorf("nothing to collect: %w", err)
	}
	return err
}

// guestFailed says why the ssh of a copy failed, in the words of ssh or of
// the guest's tar.
func guestFailed(s *SSH, err error, what string) error {
	var ee *ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("%s: %w", what, err)
	}
	var said []string // the guest's words: no control character reaches the terminal
	for l := range strings.Lines(ee.Stderr) {
		if l = strings.TrimSpace(l); l != "" {
			said = append(said, strings.Map(func(r rune) rune {
				if unicode.IsControl(r) {
					return '?'
				}
				return r
			}, l))
		}
	}
	if len(said) == 0 {
		said = []string{fmt.Sprintf("exit status %d", ee.ExitCode)}
	}
	if ee.ExitCode == 255 {
		return &hintedError{msg: fmt.Sprintf("%s: ssh failed: %s", what, strings.Join(said, "; ")),
			hint: fmt.Sprintf("run `vmup status %s` to check that it runs", s.name)}
	}
	return fmt.Errorf("%s: %s", what, strings.Join(said, "; "))
}
