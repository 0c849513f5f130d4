package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeGuest is a guest that is a local directory. For an ssh argv it runs
// the remote command (the words after "--", joined by spaces as ssh joins
// them) with the real /bin/sh in home, the guest's login directory, and the
// real tar: GNU tar, or busybox's with busybox set. So the shell parses what
// vmup quoted, as the guest's would.
type fakeGuest struct {
	home    string
	tarPath string // prepended to PATH: a directory whose tar is busybox
	emit    []byte // set: the guest's stdout is this stream, whatever was asked

	mu     sync.Mutex
	remote [][]string // the remote command of each ssh
}

func (g *fakeGuest) Run(ctx context.Context, c Cmd) (Result, error) {
	i := slices.Index(c.Args, "--")
	if i < 0 {
		return Result{}, fmt.Errorf("fake guest: no remote command in %q", c.Args)
	}
	words := c.Args[i+1:]
	g.mu.Lock()
	g.remote = append(g.remote, words)
	g.mu.Unlock()
	if g.emit != nil {
		c.Stdout.Write(g.emit)
		return Result{}, nil
	}
	var env []string
	if g.tarPath != "" {
		env = append(env, "PATH="+g.tarPath+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	script := "cd " + singleQuote(g.home) + " || exit 1; " + strings.Join(words, " ")
	return execRunner{}.Run(ctx, Cmd{Args: []string{"/bin/sh", "-c", script}, Env: env, Stdin: c.Stdin, Stdout: c.Stdout})
}

func (g *fakeGuest) calls() [][]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.remote)
}

// newFakeGuest is a fake guest with an empty home, and the SSH of VM web to it.
func newFakeGuest(t *testing.T, tarName string) (*fakeGuest, *SSH) {
	t.Helper()
	g := &fakeGuest{home: filepath.Join(t.TempDir(), "home")}
	if err := os.Mkdir(g.home, 0o755); err != nil {
		t.Fatal(err)
	}
	if tarName == "busybox" {
		bb, err := exec.LookPath("busybox")
		if err != nil {
			t.Skip("busybox is not installed")
		}
		g.tarPath = t.TempDir()
		if err := os.Symlink(bb, filepath.Join(g.tarPath, "tar")); err != nil {
			t.Fatal(err)
		}
	}
	return g, newSSH(g, "web", "vmup", pathsFor(t.TempDir(), "web"), Endpoint{Host: "127.0.0.1", Port: 2222})
}

// guestTars are the tars a guest may have.
var guestTars = []string{"gnu", "busybox"}

// listTree lists the tree at root as path → type, mode and content (a
// symlink: its target), for go-cmp.
func listTree(t *testing.T, root string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch m := fi.Mode(); {
		case m.IsDir():
			got[rel] = fmt.Sprintf("dir %04o", m.Perm())
		case m&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			got[rel] = "symlink -> " + target
		case m.IsRegular():
			data, _ := os.ReadFile(p)
			got[rel] = fmt.Sprintf("file %04o %q", m.Perm(), data)
		default:
			got[rel] = "special " + m.String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

var oldTime = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

// sampleTree makes in dir what every round trip copies: files of modes
// 0640, 0755 and 0666, an empty directory, a 0750 directory, symlinks that
// stay in the tree, and a file and a directory with an old mtime.
func sampleTree(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{"sub/deep", "empty"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, f := range map[string]struct {
		body string
		mode fs.FileMode
	}{"a.txt": {"alpha\n", 0o640}, "run.sh": {"#!/bin/sh\necho hi\n", 0o755},
		"sub/deep/b": {"beta", 0o600}, "sub/open": {"", 0o666}} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(f.body), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, f.mode)
	}
	os.Symlink("../a.txt", filepath.Join(dir, "sub", "to-a"))
	os.Symlink("sub/deep", filepath.Join(dir, "deep-link"))
	os.Symlink("deep/../../empty", filepath.Join(dir, "sub", "to-empty"))
	os.Chmod(filepath.Join(dir, "sub"), 0o750)
	os.Chtimes(filepath.Join(dir, "a.txt"), oldTime, oldTime)
	os.Chtimes(filepath.Join(dir, "sub", "deep"), oldTime, oldTime)
}

func mtime(t *testing.T, p string) time.Time {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.ModTime().UTC()
}

// Into the guest: the tree arrives as it is, under its base name in the
// guest directory (made if missing, relative to the home), with GNU tar and
// with busybox tar.
func TestCopyToGuestKeepsFilesModesAndSymlinks(t *testing.T) {
	for _, tarName := range guestTars {
		t.Run(tarName, func(t *testing.T) {
			g, s := newFakeGuest(t, tarName)
			src := filepath.Join(t.TempDir(), "proj")
			sampleTree(t, src)
			if err := copyToGuest(context.Background(), s, src, "dest/in"); err != nil {
				t.Fatal(err)
			}
			landed := filepath.Join(g.home, "dest", "in", "proj")
			if diff := cmp.Diff(listTree(t, src), listTree(t, landed)); diff != "" {
				t.Errorf("the guest's tree differs (-host +guest):\n%s", diff)
			}
			if got := mtime(t, filepath.Join(landed, "a.txt")); !got.Equal(oldTime) {
				t.Errorf("a.txt's mtime in the guest is %v, want %v", got, oldTime)
			}
			// One file, into an absolute directory and into ~/.
			file := filepath.Join(src, "run.sh")
			if err := copyToGuest(context.Background(), s, file, filepath.Join(g.home, "abs")); err != nil {
				t.Fatal(err)
			}
			if err := copyToGuest(context.Background(), s, file, "~/"); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"abs/run.sh", "run.sh"} {
				if got := listTree(t, filepath.Join(g.home, p))["."]; got != "file 0755 \"#!/bin/sh\\necho hi\\n\"" {
					t.Errorf("%s in the guest: %s", p, got)
				}
			}
		})
	}
}

// Out of the guest: the tree lands under its base name in the host
// directory (made if missing) with its modes and mtimes, and no temporary
// directory is left.
func TestCopyFromGuestKeepsFilesModesAndSymlinks(t *testing.T) {
	for _, tarName := range guestTars {
		t.Run(tarName, func(t *testing.T) {
			g, s := newFakeGuest(t, tarName)
			sampleTree(t, filepath.Join(g.home, "data"))
			want := listTree(t, filepath.Join(g.home, "data"))
			for _, src := range []string{"data", "~/data", filepath.Join(g.home, "data") + "/"} {
				host := filepath.Join(t.TempDir(), "made", "here")
				if err := copyFromGuest(context.Background(), s, src, host); err != nil {
					t.Fatalf("%s: %v", src, err)
				}
				if diff := cmp.Diff(want, listTree(t, filepath.Join(host, "data"))); diff != "" {
					t.Errorf("%s: the host's tree differs (-guest +host):\n%s", src, diff)
				}
				if names := dirNames(t, host); !slices.Equal(names, []string{"data"}) {
					t.Errorf("%s: %s holds %q, want only data", src, host, names)
				}
				for _, p := range []string{"a.txt", "sub/deep"} {
					if got := mtime(t, filepath.Join(host, "data", p)); !got.Equal(oldTime) {
						t.Errorf("%s: %s's mtime is %v, want %v", src, p, got, oldTime)
					}
				}
			}
			// One file.
			host := t.TempDir()
			if err := copyFromGuest(context.Background(), s, "data/run.sh", host); err != nil {
				t.Fatal(err)
			}
			if got := listTree(t, host)["run.sh"]; got != want["run.sh"] {
				t.Errorf("run.sh: %s, want %s", got, want["run.sh"])
			}
		})
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// hostileNames are names the guest's shell would split, expand or run if
// they reached it unquoted; running any of them makes the file pwned in the
// shell's directory.
var hostileNames = []string{
	"with space", "it's", `"dq"`, "$(touch pwned)", "`touch pwned`", "; touch pwned", "a && touch pwned",
	"-rf", "--no-same-owner", "new\nline", "*", "~", "$HOME", "{a,b}", "tab\there", "back\\slash", "=ls",
}

// Names with spaces, quotes, $(), backticks, newlines and leading dashes
// survive both ways, in file names and in the guest directory, and nothing
// of them is run.
func TestCopyRoundTripsHostileNamesWithoutRunningThem(t *testing.T) {
	for _, tarName := range guestTars {
		t.Run(tarName, func(t *testing.T) {
			g, s := newFakeGuest(t, tarName)
			root := t.TempDir()
			src := filepath.Join(root, "-x $(touch pwned) 'q'\n")
			if err := os.Mkdir(src, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, n := range hostileNames {
				if err := os.WriteFile(filepath.Join(src, n), []byte(n), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			guestDir := "-d $(touch pwned)/it's `touch pwned`/\n;touch pwned"
			pwned := func() {
				t.Helper()
				for _, dir := range []string{g.home, root, "."} {
					if _, err := os.Lstat(filepath.Join(dir, "pwned")); err == nil {
						t.Fatalf("a name was run as a command: %s/pwned exists", dir)
					}
				}
			}
			err := copyToGuest(context.Background(), s, src, guestDir)
			pwned()
			if err != nil {
				t.Fatal(err)
			}
			landed := filepath.Join(g.home, guestDir, filepath.Base(src))
			if diff := cmp.Diff(listTree(t, src), listTree(t, landed)); diff != "" {
				t.Errorf("the guest's tree differs (-host +guest):\n%s", diff)
			}
			host := filepath.Join(t.TempDir(), "--out $(touch pwned)")
			err = copyFromGuest(context.Background(), s, filepath.Join(guestDir, filepath.Base(src)), host)
			pwned()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(listTree(t, src), listTree(t, filepath.Join(host, filepath.Base(src)))); diff != "" {
				t.Errorf("the tree back on the host differs (-host +back):\n%s", diff)
			}
		})
	}
}

// The guest's shell gets every path as one single-quoted word, and nothing
// else of the copy.
func TestCopyGuestCommandsQuoteEveryPath(t *testing.T) {
	g, s := newFakeGuest(t, "gnu")
	src := filepath.Join(t.TempDir(), "it's")
	os.WriteFile(src, nil, 0o644)
	ctx := context.Background()
	if err := copyToGuest(ctx, s, src, "~/a b/$x"); err != nil {
		t.Fatal(err)
	}
	if err := copyFromGuest(ctx, s, "a b/$x/it's", t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if err := syncToGuest(ctx, s, filepath.Dir(src), "/srv/-x"); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"mkdir", "-p", "--", `'a b/$x'`, "&&", "tar", "-x", "-p", "-f", "-", "-C", `'a b/$x'`, "--no-same-owner"},
		{"test", "-e", `'a b/$x/it'\''s'`, "||", "test", "-L", `'a b/$x/it'\''s'`, "||", "exit", "66", ";",
			"tar", "-c", "-f", "-", "-C", `'a b/$x'`, `'./it'\''s'`},
		{"mkdir", "-p", "--", `'/srv/-x'`, "&&", "tar", "-x", "-p", "-f", "-", "-C", `'/srv/-x'`, "--no-same-owner"},
	}
	if diff := cmp.Diff(want, g.calls()); diff != "" {
		t.Errorf("remote commands (-want +got):\n%s", diff)
	}
}

// singleQuote makes any string one word that sh reads back as it was.
func TestGuestQuoteSurvivesTheShell(t *testing.T) {
	for _, s := range append(hostileNames, "", "'", "''", "'\\''", "a'b'c") {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+singleQuote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("sh read %s as %q (%v), want %q", singleQuote(s), out, err, s)
		}
	}
}

// The stream vmup sends names no owner: uid and gid 0, no user or group name.
func TestTarStreamToTheGuestHasNoOwners(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	sampleTree(t, src)
	entries, err := planUpload(src, true)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeTar(&buf, entries); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d/%d %q/%q, want none", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if !strings.HasPrefix(h.Name, "proj") {
			t.Errorf("entry %q is not under proj", h.Name)
		}
	}
	if n != len(listTree(t, src)) {
		t.Errorf("%d entries, want %d", n, len(listTree(t, src)))
	}
}

// A symlink of the SRC that does not resolve inside it, and a special file,
// are refused (a usage error naming it) before any ssh runs.
func TestCopyToGuestRefusesBeforeSending(t *testing.T) {
	for _, c := range []struct {
		name  string
		make  func(dir string) error
		names string // the error names this
	}{
		{"absolute", func(d string) error { return os.Symlink("/etc/passwd", filepath.Join(d, "pw")) }, "pw"},
		{"up and out", func(d string) error { return os.Symlink("../outside", filepath.Join(d, "out")) }, "out"},
		{"deep up and out", func(d string) error {
			os.MkdirAll(filepath.Join(d, "a", "b"), 0o755)
			return os.Symlink("../../../x", filepath.Join(d, "a", "b", "l"))
		}, "l"},
		{"out through another link", func(d string) error {
			os.Mkdir(filepath.Join(d, "d"), 0o755)
			os.Symlink(".", filepath.Join(d, "d", "self"))
			return os.Symlink("d/self/../..", filepath.Join(d, "z"))
		}, "z"},
		{"loop", func(d string) error {
			os.Symlink("b", filepath.Join(d, "a"))
			return os.Symlink("a", filepath.Join(d, "b"))
		}, "symlink"},
		{"fifo", func(d string) error { return syscall.Mkfifo(filepath.Join(d, "fifo"), 0o644) }, "fifo"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g, s := newFakeGuest(t, "gnu")
			src := filepath.Join(t.TempDir(), "proj")
			os.Mkdir(src, 0o755)
			os.WriteFile(filepath.Join(src, "ok"), []byte("ok"), 0o644)
			if err := c.make(src); err != nil {
				t.Fatal(err)
			}
			for _, err := range []error{
				copyToGuest(context.Background(), s, src, "dest"),
				syncToGuest(context.Background(), s, src, "dest"),
			} {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.names) {
					t.Errorf("error %v, want a usage error naming %s", err, c.names)
				}
			}
			if _, _, err := syncSpec(src); err == nil {
				t.Errorf("syncSpec(%s) took it", src)
			}
			if calls := g.calls(); len(calls) != 0 {
				t.Errorf("ssh ran: %q", calls)
			}
		})
	}
	// A missing SRC is a usage error too.
	g, s := newFakeGuest(t, "gnu")
	err := copyToGuest(context.Background(), s, filepath.Join(t.TempDir(), "nope"), "dest")
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "no such file or directory") || len(g.calls()) != 0 {
		t.Errorf("missing SRC: %v, ssh %q", err, g.calls())
	}
}

// A SRC that is itself a symlink is followed: what it points to is sent
// under the link's name.
func TestCopyToGuestFollowsASrcThatIsASymlink(t *testing.T) {
	g, s := newFakeGuest(t, "gnu")
	dir := t.TempDir()
	sampleTree(t, filepath.Join(dir, "real"))
	os.Symlink("real", filepath.Join(dir, "named"))
	if err := copyToGuest(context.Background(), s, filepath.Join(dir, "named"), "."); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(listTree(t, filepath.Join(dir, "real")), listTree(t, filepath.Join(g.home, "named"))); diff != "" {
		t.Errorf("(-host +guest):\n%s", diff)
	}
}

// tarEntry is one entry of a stream a test makes a guest send.
type tarEntry struct {
	name string
	typ  byte
	link string // a symlink's or hard link's target
	body string
}

func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644, Size: int64(len(e.body)), ModTime: oldTime}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

// A hostile guest's stream is refused as a whole: nothing is written
// outside the host directory, nothing of it is left inside, and the files
// that were there stay as they were.
func TestCopyFromGuestRefusesAHostileStream(t *testing.T) {
	dir := func(n string) tarEntry { return tarEntry{name: n, typ: tar.TypeDir} }
	file := func(n string) tarEntry { return tarEntry{name: n, typ: tar.TypeReg, body: "evil"} }
	link := func(n, to string) tarEntry { return tarEntry{name: n, typ: tar.TypeSymlink, link: to} }
	root := t.TempDir()
	outside := filepath.Join(root, "outside")
	for _, c := range []struct {
		name    string
		entries []tarEntry
	}{
		{"dot-dot", []tarEntry{dir("data/"), file("../evil")}},
		{"dot-dot inside", []tarEntry{dir("data/"), file("data/../../evil")}},
		{"absolute", []tarEntry{dir("data/"), file(outside + "/abs")}},
		{"absolute symlink, then through it", []tarEntry{dir("data/"), link("data/l", outside), file("data/l/passwd")}},
		{"symlink in the tree, then through it", []tarEntry{dir("data/"), dir("data/d/"), link("data/l", "d"), file("data/l/passwd")}},
		{"symlink up and out", []tarEntry{dir("data/"), link("data/x", "../../out")}},
		{"symlink out through another", []tarEntry{dir("data/"), dir("data/d/"), link("data/d/self", "."), link("data/z", "d/self/../../..")}},
		{"symlink out through a later one", []tarEntry{dir("data/"), link("data/z", "d/self/../../.."), dir("data/d/"), link("data/d/self", ".")}},
		{"hard link", []tarEntry{dir("data/"), file("data/f"), {name: "data/h", typ: tar.TypeLink, link: "data/f"}}},
		{"hard link out", []tarEntry{dir("data/"), {name: "data/h", typ: tar.TypeLink, link: outside + "/x"}}},
		{"device", []tarEntry{dir("data/"), {name: "data/null", typ: tar.TypeChar}}},
		{"fifo", []tarEntry{dir("data/"), {name: "data/fifo", typ: tar.TypeFifo}}},
		{"another name", []tarEntry{dir("data/"), file("other")}},
		{"twice", []tarEntry{dir("data/"), file("data/f"), link("data/f", outside)}},
		{"file before its directory", []tarEntry{file("data/sub/f")}},
		{"under a file", []tarEntry{file("data"), file("data/f")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.RemoveAll(outside)
			os.Mkdir(outside, 0o755)
			host := filepath.Join(root, "host")
			os.MkdirAll(filepath.Join(host, "data"), 0o755)
			os.WriteFile(filepath.Join(host, "data", "f"), []byte("mine"), 0o644)
			before := listTree(t, root)
			g, s := newFakeGuest(t, "gnu")
			g.emit = tarOf(t, c.entries...)
			err := copyFromGuest(context.Background(), s, "data", host)
			var ue *unsafeError
			if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "cannot copy data out of VM web: VM web sent an unsafe entry: ") {
				t.Errorf("error %v, want one of an unsafe entry", err)
			}
			if diff := cmp.Diff(before, listTree(t, root)); diff != "" {
				t.Errorf("the refused stream changed files (-before +after):\n%s", diff)
			}
		})
	}
}

// A guest path that does not exist is an error that says so, and leaves
// nothing behind; so is one with no name of its own.
func TestCopyFromGuestOfAMissingPath(t *testing.T) {
	_, s := newFakeGuest(t, "gnu")
	host := t.TempDir()
	err := copyFromGuest(context.Background(), s, "no/such", host)
	if err == nil || err.Error() != "no/such: no such file or directory in VM web" {
		t.Errorf("copy: %v", err)
	}
	err = collectFromGuest(context.Background(), s, "/no/such", host)
	if err == nil || err.Error() != "nothing to collect: /no/such: no such file or directory in VM web" {
		t.Errorf("collect: %v", err)
	}
	if names := dirNames(t, host); len(names) != 0 {
		t.Errorf("left %q", names)
	}
	for _, p := range []string{"/", ".", "~", "~/", "..", "a/.."} {
		var ue *usageError
		if err := copyFromGuest(context.Background(), s, p, host); !errors.As(err, &ue) {
			t.Errorf("copy of %q: %v, want a usage error", p, err)
		}
	}
}

// A guest directory that cannot be made, a tar that fails in the guest and
// a stream that is no tar fail the copy with what the guest said, and leave
// nothing behind.
func TestCopyFailsWithWhatTheGuestSaid(t *testing.T) {
	g, s := newFakeGuest(t, "gnu")
	os.WriteFile(filepath.Join(g.home, "afile"), nil, 0o644)
	os.MkdirAll(filepath.Join(g.home, "data"), 0o755)
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, nil, 0o644)
	err := copyToGuest(context.Background(), s, src, "afile/sub")
	if err == nil || !strings.HasPrefix(err.Error(), "cannot copy into afile/sub of VM web: mkdir: ") {
		t.Errorf("into a file: %v", err)
	}

	// A tar that writes half a stream, complains and fails.
	g.tarPath = t.TempDir()
	script := "#!/bin/sh\nprintf 'partial' \necho 'tar: ./data/secret: Cannot open: Permission denied' >&2\n" +
		"echo 'tar: Exiting with failure status due to previous errors' >&2\nexit 2\n"
	os.WriteFile(filepath.Join(g.tarPath, "tar"), []byte(script), 0o755)
	host := t.TempDir()
	err = copyFromGuest(context.Background(), s, "data", host)
	want := "cannot copy data out of VM web: tar: ./data/secret: Cannot open: Permission denied; " +
		"tar: Exiting with failure status due to previous errors"
	if err == nil || err.Error() != want {
		t.Errorf("a failing tar: %v\nwant %s", err, want)
	}

	g.emit = []byte(strings.Repeat("not a tar stream ", 100))
	err = copyFromGuest(context.Background(), s, "data", host)
	if err == nil || !strings.HasPrefix(err.Error(), "cannot copy data out of VM web: archive/tar: ") {
		t.Errorf("garbage: %v", err)
	}
	if names := dirNames(t, host); len(names) != 0 {
		t.Errorf("left %q", names)
	}
}

// Onto what the host directory holds, directories merge as docker cp
// merges them: a file of the same name is replaced, the rest is kept; a
// directory and a file do not replace each other.
func TestCopyFromGuestMergesIntoAnExistingDirectory(t *testing.T) {
	g, s := newFakeGuest(t, "gnu")
	os.MkdirAll(filepath.Join(g.home, "data", "sub"), 0o755)
	os.WriteFile(filepath.Join(g.home, "data", "f"), []byte("new"), 0o644)
	os.WriteFile(filepath.Join(g.home, "data", "sub", "g"), []byte("g"), 0o600)
	os.Symlink("f", filepath.Join(g.home, "data", "l"))
	host := t.TempDir()
	os.MkdirAll(filepath.Join(host, "data", "sub"), 0o700)
	os.WriteFile(filepath.Join(host, "data", "f"), []byte("old"), 0o600)
	os.WriteFile(filepath.Join(host, "data", "keep"), []byte("keep"), 0o600)
	os.WriteFile(filepath.Join(host, "data", "sub", "mine"), []byte("mine"), 0o600)
	os.WriteFile(filepath.Join(host, "elsewhere"), []byte("x"), 0o600)
	os.Symlink("../elsewhere", filepath.Join(host, "data", "l")) // replaced, not written through
	if err := copyFromGuest(context.Background(), s, "data", host); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		".":             "dir 0755",
		"data":          "dir 0755",
		"data/f":        `file 0644 "new"`,
		"data/keep":     `file 0600 "keep"`,
		"data/l":        "symlink -> f",
		"data/sub":      "dir 0755",
		"data/sub/g":    `file 0600 "g"`,
		"data/sub/mine": `file 0600 "mine"`,
		"elsewhere":     `file 0600 "x"`,
	}
	got := listTree(t, host)
	got["."] = "dir 0755" // t.TempDir's own mode is not the copy's
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("merged tree (-want +got):\n%s", diff)
	}
	// A file where the guest has a directory, and the reverse.
	os.RemoveAll(filepath.Join(host, "data", "sub"))
	os.WriteFile(filepath.Join(host, "data", "sub"), nil, 0o644)
	if err := copyFromGuest(context.Background(), s, "data", host); err == nil || !strings.Contains(err.Error(), "exists and is not a directory") {
		t.Errorf("a directory onto a file: %v", err)
	}
	host2 := t.TempDir()
	os.MkdirAll(filepath.Join(host2, "f"), 0o755)
	if err := copyFromGuest(context.Background(), s, "data/f", host2); err == nil || !strings.Contains(err.Error(), "exists and is a directory") {
		t.Errorf("a file onto a directory: %v", err)
	}
	for _, h := range []string{host, host2} {
		for _, n := range dirNames(t, h) {
			if strings.HasPrefix(n, ".vmup-cp-") {
				t.Errorf("%s: left %s", h, n)
			}
		}
	}
}

// --sync's HOST_DIR[:GUEST_DIR]: GUEST_DIR is by default HOST_DIR's base
// name in the home; a missing or bad HOST_DIR is a usage error.
func TestSyncSpec(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "proj")
	sampleTree(t, dir)
	file := filepath.Join(dir, "a.txt")
	for _, c := range []struct {
		spec, host, guest string
		bad               bool
	}{
		{spec: dir, host: dir, guest: "proj"},
		{spec: dir + ":/srv/app", host: dir, guest: "/srv/app"},
		{spec: dir + ":~/app/", host: dir, guest: "app"},
		{spec: dir + ":~", host: dir, guest: "."},
		{spec: dir + ":a:b", host: dir, guest: "a:b"},
		{spec: ":x", bad: true},
		{spec: dir + ":", bad: true},
		{spec: dir + "/nope", bad: true},
		{spec: file, bad: true},
	} {
		h, g, err := syncSpec(c.spec)
		var ue *usageError
		switch {
		case c.bad && !errors.As(err, &ue):
			t.Errorf("syncSpec(%q) = %q, %q, %v; want a usage error", c.spec, h, g, err)
		case !c.bad && (err != nil || h != c.host || g != c.guest):
			t.Errorf("syncSpec(%q) = %q, %q, %v; want %q, %q", c.spec, h, g, err, c.host, c.guest)
		}
	}
}

// Syncing sends HOST_DIR's contents into GUEST_DIR, made if missing; what
// the guest has there already stays, and GUEST_DIR keeps its own mode.
func TestSyncToGuestSendsTheContents(t *testing.T) {
	for _, tarName := range guestTars {
		t.Run(tarName, func(t *testing.T) {
			g, s := newFakeGuest(t, tarName)
			dir := filepath.Join(t.TempDir(), "proj")
			sampleTree(t, dir)
			os.Chmod(dir, 0o700)
			if err := syncToGuest(context.Background(), s, dir, "work"); err != nil {
				t.Fatal(err)
			}
			want := listTree(t, dir)
			want["."] = "dir 0755"
			if diff := cmp.Diff(want, listTree(t, filepath.Join(g.home, "work"))); diff != "" {
				t.Errorf("(-host +guest):\n%s", diff)
			}
			os.WriteFile(filepath.Join(g.home, "work", "guest-only"), []byte("g"), 0o644)
			os.WriteFile(filepath.Join(dir, "a.txt"), []byte("changed"), 0o640)
			if err := syncToGuest(context.Background(), s, dir, "work"); err != nil {
				t.Fatal(err)
			}
			got := listTree(t, filepath.Join(g.home, "work"))
			if got["guest-only"] != `file 0644 "g"` || got["a.txt"] != `file 0640 "changed"` {
				t.Errorf("second sync: guest-only %s, a.txt %s", got["guest-only"], got["a.txt"])
			}
			// An empty directory sends nothing, and makes GUEST_DIR.
			empty := t.TempDir()
			if err := syncToGuest(context.Background(), s, empty, "/"+g.home[1:]+"/made"); err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(filepath.Join(g.home, "made")); err != nil || !st.IsDir() {
				t.Errorf("GUEST_DIR not made: %v", err)
			}
		})
	}
}

// staysInside follows the links of the copy as the kernel would.
func TestStaysInside(t *testing.T) {
	links := map[string]string{"d/self": ".", "up": "..", "a": "b", "b": "a", "abs": "/etc", "deep": "d/e/f"}
	for _, c := range []struct {
		at, target string
		in         bool
	}{
		{"l", "x", true},
		{"l", ".", true},
		{"l", "..", false},
		{"d/l", "../x", true},
		{"d/l", "../../x", false},
		{"d/l", "/etc", false},
		{"l", "d/self/..", true},
		{"l", "d/self/../..", false},
		{"l", "up", false},
		{"l", "up/x", false},
		{"l", "a", false},
		{"l", "abs/x", false},
		{"l", "deep/../../..", true},
		{"l", "deep/../../../..", false},
		{"l", "", true},
	} {
		if got := staysInside(links, c.at, c.target); got != c.in {
			t.Errorf("%s -> %s: inside %v, want %v", c.at, c.target, got, c.in)
		}
	}
}

// An ssh that fails says so with a hint; what the guest says reaches the
// terminal without its control characters.
func TestGuestFailedSaysWhatSSHOrTarSaid(t *testing.T) {
	_, s := newFakeGuest(t, "gnu")
	err := guestFailed(s, &ExitError{Args: []string{"ssh"}, ExitCode: 255,
		Stderr: "ssh: connect to host 127.0.0.1 port 2222: Connection refused\r\n"}, "cannot copy x out of VM web")
	var he *hintedError
	if !errors.As(err, &he) || he.msg != "cannot copy x out of VM web: ssh failed: ssh: connect to host 127.0.0.1 port 2222: Connection refused" ||
		he.hint != "run `vmup status web` to check that it runs" {
		t.Errorf("ssh failed: %#v", err)
	}
	err = guestFailed(s, &ExitError{Args: []string{"ssh"}, ExitCode: 2, Stderr: "tar: \x1b]0;owned\x07bad\n\n"}, "cannot copy x")
	if err == nil || err.Error() != "cannot copy x: tar: ?]0;owned?bad" {
		t.Errorf("tar failed: %q", err)
	}
	err = guestFailed(s, &ExitError{Args: []string{"ssh"}, ExitCode: 3}, "cannot copy x")
	if err == nil || err.Error() != "cannot copy x: exit status 3" {
		t.Errorf("silent failure: %q", err)
	}
}
