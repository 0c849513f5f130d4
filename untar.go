// Extracting a guest's tar stream on this host, trusting it no further than
// the directory it was asked into.
package main

// The guest is not trusted: its tar stream may be made to write outside the
// destination. So every entry must be a plain relative path under the one
// name that was asked for (no "..", no absolute name), may not go through
// anything but a directory this stream made (a symlink it sent earlier
// included), and must be a file, a directory or a symlink that resolves
// inside the destination directory (transfer.go's staysInside, checked as
// each link comes and again once all of them came). Hard links and special
// files are refused. Files are written with O_EXCL and O_NOFOLLOW into a
// temporary directory, moved into place only once the whole stream passed.

import (
	"archive/tar"
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

	"golang.org/x/sys/unix"
)

// extractor writes one guest's stream into tmp, a temporary directory in
// hostDir, and then moves its top entry to hostDir.
type extractor struct {
	tmp, hostDir string
	top          string // the name every entry is or is under
	vm           string
	kinds        map[string]byte   // entries written, by name: their tar type
	links        map[string]string // symlinks written, by name: their target
	dirs         []dirAttr         // in the order written: parents first
}

// dirAttr is a directory's mode and mtime, set once everything is in place.
type dirAttr struct {
	name  string
	perm  fs.FileMode
	mtime time.Time
}

func newExtractor(tmp, hostDir, top, vm string) *extractor {
	return &extractor{tmp: tmp, hostDir: hostDir, top: top, vm: vm,
		kinds: map[string]byte{}, links: map[string]string{}}
}

// unsafeError is an entry of the guest's stream that is refused.
type unsafeError struct{ vm, msg string }

func (e *unsafeError) Error() string {
	return fmt.Sprintf("VM %s sent an unsafe entry: %s", e.vm, e.msg)
}

func (x *extractor) refuse(format string, a ...any) error {
	return &unsafeError{vm: x.vm, msg: fmt.Sprintf(format, a...)}
}

// read extracts the stream r until its end.
func (x *extractor) read(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return err
		case h.Typeflag == tar.TypeXGlobalHeader:
			continue
		}
		if err := x.entry(h, tr); err != nil {
			return err
		}
	}
}

// entryName is a stream's name as a clean relative path ("./" and a
// directory's trailing "/" dropped); false for anything else.
func entryName(raw string) (string, bool) {
	n := strings.TrimPrefix(strings.TrimSuffix(raw, "/"), "./")
	ok := n != "" && n != "." && n != ".." && !path.IsAbs(n) && path.Clean(n) == n &&
		!strings.HasPrefix(n, "../") && !strings.ContainsRune(n, 0)
	return n, ok
}

func (x *extractor) entry(h *tar.Header, r io.Reader) error {
	name, ok := entryName(h.Name)
	switch {
	case !ok:
		return x.refuse("%q is not a plain relative path", h.Name)
	case name != x.top && !strings.HasPrefix(name, x.top+"/"):
		return x.refuse("%q is not under %q, the name asked for", h.Name, x.top)
	case x.kinds[name] != 0:
		return x.refuse("%q comes twice", h.Name)
	}
	if err := x.parentsAreDirs(name); err != nil {
		return err
	}
	p := filepath.Join(x.tmp, filepath.FromSlash(name))
	perm := fs.FileMode(h.Mode).Perm()
	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(p, 0o700); err != nil { // its mode once all is in place
			return err
		}
		x.dirs = append(x.dirs, dirAttr{name, perm, h.ModTime})
	case tar.TypeReg:
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if err == nil {
			err = f.Chmod(perm)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if err := os.Chtimes(p, h.ModTime, h.ModTime); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if !staysInside(x.links, name, h.Linkname) {
			return x.refuse("symlink %q points outside %s (to %q)", name, x.hostDir, h.Linkname)
		}
		if err := os.Symlink(h.Linkname, p); err != nil {
			return err
		}
		x.links[name] = h.Linkname
		ts := unix.NsecToTimespec(h.ModTime.UnixNano())
		unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	case tar.TypeLink:
		return x.refuse("%q is a hard link (to %q)", name, h.Linkname)
	default:
		return x.refuse("%q is of tar type %q, not a file, directory or symlink", name, h.Typeflag)
	}
	x.kinds[name] = h.Typeflag
	return nil
}

// parentsAreDirs checks that each directory above name is a real directory
// this stream made: never a symlink, never missing.
func (x *extractor) parentsAreDirs(name string) error {
	dir := ""
	parts := strings.Split(name, "/")
	for _, c := range parts[:len(parts)-1] {
		dir = path.Join(dir, c)
		st, err := os.Lstat(filepath.Join(x.tmp, filepath.FromSlash(dir)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return x.refuse("%q comes before its directory %q", name, dir)
		case err != nil:
			return err
		case st.Mode()&fs.ModeSymlink != 0:
			return x.refuse("%q goes through the symlink %q", name, dir)
		case !st.IsDir():
			return x.refuse("%q is under %q, which is not a directory", name, dir)
		}
	}
	return nil
}

// finish checks the symlinks again, now that all of them came (a later one
// can change where an earlier one leads), and moves the top entry into
// hostDir; then sets the directories' modes and mtimes, deepest first.
func (x *extractor) finish() error {
	if len(x.kinds) == 0 {
		return fmt.Errorf("VM %s sent nothing", x.vm)
	}
	for name, target := range x.links {
		if !staysInside(x.links, name, target) {
			return x.refuse("symlink %q points outside %s (to %q) through the symlinks sent with it", name, x.hostDir, target)
		}
	}
	if err := x.place(x.top); err != nil {
		return err
	}
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		p := filepath.Join(x.hostDir, filepath.FromSlash(d.name))
		if err := os.Chmod(p, d.perm); err != nil {
			return err
		}
		if err := os.Chtimes(p, d.mtime, d.mtime); err != nil {
			return err
		}
	}
	return nil
}

// place moves name from tmp to hostDir: by one rename where hostDir has no
// such name; onto a directory, a directory merges into it entry by entry
// (files of the same name replaced); a file or symlink replaces a file or
// symlink (never what a symlink points to); a directory and a file never
// replace each other.
func (x *extractor) place(name string) error {
	src := filepath.Join(x.tmp, filepath.FromSlash(name))
	dst := filepath.Join(x.hostDir, filepath.FromSlash(name))
	have, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return os.Rename(src, dst)
	}
	if err != nil {
		return err
	}
	isDir := x.kinds[name] == tar.TypeDir
	switch {
	case isDir && have.IsDir():
		children, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, c := range children {
			if err := x.place(path.Join(name, c.Name())); err != nil {
				return err
			}
		}
		return nil
	case isDir:
		return fmt.Errorf("%s exists and is not a directory", dst)
	case have.IsDir():
		return fmt.Errorf("%s exists and is a directory", dst)
	}
	return os.Rename(src, dst)
}
