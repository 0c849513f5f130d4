package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// controlPaths returns every ControlPath the fake ssh was given.
func (h *harness) controlPaths() map[string]bool {
	h.fake.mu.Lock()
	defer h.fake.mu.Unlock()
	paths := map[string]bool{}
	for _, c := range h.fake.raw {
		if filepath.Base(c[0]) != "ssh" {
			continue
		}
		for _, a := range c {
			if v, ok := strings.CutPrefix(a, "ControlPath="); ok {
				paths[v] = true
			}
		}
	}
	return paths
}

// With a state dir too deep for a socket path, the ControlMaster's socket
// lives in a private 0700 dir with a random name that vmup made, never at a
// predictable name in the world-writable temp dir, which another local user
// can take first.
func TestControlPathNeverPredictable(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	h := newHarness(t)
	h.env.Home = filepath.Join(h.dir, strings.Repeat("h", 100))
	paths := pathsFor(h.env.Home, "v1")
	// Another user's listening socket at the name a hash of the state dir gives.
	sum := sha256.Sum256([]byte(paths.Dir))
	predictable := filepath.Join(tmp, fmt.Sprintf("vmup-%x.sock", sum[:6]))
	squatter, err := net.Listen("unix", predictable)
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()

	done := h.up(h.upArgs()...)
	h.events.waitFor(t, "ready", "")
	used := h.controlPaths()
	if len(used) != 1 {
		t.Fatalf("ssh was given ControlPaths %v, want one", used)
	}
	var sock string
	for sock = range used {
	}
	if sock == predictable {
		t.Fatalf("ssh used the predictable ControlPath %s", sock)
	}
	dir := filepath.Dir(sock)
	if filepath.Dir(dir) != tmp || !strings.HasPrefix(filepath.Base(dir), "vmup-") {
		t.Fatalf("ControlPath %s is not in a vmup-* dir of its own in %s", sock, tmp)
	}
	st, err := os.Lstat(dir)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 || int(st.Sys().(*syscall.Stat_t).Uid) != os.Getuid() {
		t.Fatalf("socket dir %s: %v %v; want a 0700 dir owned by uid %d", dir, st.Mode(), err, os.Getuid())
	}
	if got := journalField(t, paths, "control_dir"); got != dir {
		t.Errorf("journal control_dir %q, want %q", got, dir)
	}
	// `vmup ssh` rides the same master meanwhile; `vmup ssh-config`, whose
	// output is kept, never names the temp dir (its name is free once the up ended).
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("ssh", []string{"v1"})
	if s, code := sshFor(env, o, "ssh"); s == nil || !slices.Contains(s.argv(), "ControlPath="+sock) {
		t.Errorf("vmup ssh (exit %d) does not use the journalled socket %s", code, sock)
	} else if strings.Contains(s.Config(), "\n  ControlPath ") {
		t.Errorf("ssh-config names the socket in the temp dir:\n%s", s.Config())
	}

	h.sigs <- syscall.SIGINT
	if code := h.wait(done); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("the socket dir outlived the up and its master: %v", err)
	}
	if got := journalField(t, paths, "control_dir"); got != "" {
		t.Errorf("journal still names control_dir %q after the up", got)
	}
	if _, err := os.Lstat(predictable); err != nil {
		t.Errorf("vmup touched the predictable path: %v", err)
	}
	if s, _ := sshFor(env, o, "ssh"); s == nil || slices.ContainsFunc(s.argv(), func(a string) bool {
		return strings.HasPrefix(a, "ControlPath=")
	}) {
		t.Errorf("vmup ssh names a ControlPath with no master running")
	}
}

func journalField(t *testing.T, p Paths, key string) string {
	t.Helper()
	data, err := os.ReadFile(p.Journal())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	s, _ := m[key].(string)
	return s
}

// A journal's control_dir is followed, by ssh or by a removal, only if it is
// what vmup makes: a 0700 vmup-* dir of this user's right in the temp dir.
func TestControlDirFromJournalValidated(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	mk := func(name string, mode os.FileMode) string {
		dir := filepath.Join(tmp, name)
		if err := os.Mkdir(dir, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, mode)
		return dir
	}
	good := mk("vmup-123", 0o700)
	elsewhere := filepath.Join(t.TempDir(), "vmup-456")
	os.Mkdir(elsewhere, 0o700)
	link := filepath.Join(tmp, "vmup-link")
	os.Symlink(good, link)
	file := filepath.Join(tmp, "vmup-file")
	os.WriteFile(file, nil, 0o700)
	nested := filepath.Join(mk("vmup-outer", 0o700), "vmup-inner")
	os.Mkdir(nested, 0o700)
	cases := map[string]bool{
		good:                            true,
		mk("vmup-open", 0o755):          false,
		mk("other-789", 0o700):          false,
		elsewhere:                       false,
		link:                            false,
		file:                            false,
		nested:                          false,
		good + "/../vmup-123":           false,
		"vmup-123":                      false,
		"":                              false,
		"/etc":                          false,
		filepath.Join(tmp, "vmup-gone"): false,
	}
	for dir, valid := range cases {
		if err := validControlDir(dir); (err == nil) != valid {
			t.Errorf("validControlDir(%q) = %v, want valid %v", dir, err, valid)
		}
	}

	// Neither ssh-config nor destroy follows a journal naming another's dir.
	h := newHarness(t)
	h.env.Home = filepath.Join(h.dir, strings.Repeat("h", 100))
	h.createDetached()
	paths := pathsFor(h.env.Home, "v1")
	open := filepath.Join(tmp, "vmup-open")
	j := h.journal()
	j.ControlDir = open
	writeJournal(paths, j)
	env := h.env
	env.Out = h.out()
	o, _, _ := parseCommand("ssh", []string{"v1"})
	if s, _ := sshFor(env, o, "ssh"); s == nil || s.control != "" {
		t.Errorf("vmup ssh follows a journalled dir of mode 0755")
	}
	o, _, _ = parseCommand("destroy", []string{"v1"})
	if code := runDestroy(env, o); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	if _, err := os.Stat(open); err != nil {
		t.Errorf("destroy removed a dir the journal named but vmup did not make: %v", err)
	}

	// The dir a killed up left, journalled, goes with the VM.
	h.createDetached()
	j = h.journal()
	j.ControlDir = good
	writeJournal(paths, j)
	if code := runDestroy(env, o); code != 0 {
		t.Fatalf("destroy: exit %d\n%s", code, h.stderr)
	}
	if _, err := os.Lstat(good); !os.IsNotExist(err) {
		t.Errorf("destroy left the VM's socket dir %s: %v", good, err)
	}
}

// ssh's master binds PATH.<16 random characters> before it renames that to
// PATH: a socket path of 91-99 bytes never works (seen with a real sshd), so
// vmup's paths leave room for it within the kernel's 108 bytes.
func TestControlPathLeavesRoomForSSHsTempName(t *testing.T) {
	for n := 60; n < 120; n++ {
		dir := "/" + strings.Repeat("d", n-len("/ssh.sock")-1)
		if sock := controlPath(Paths{Dir: dir}, nil); sock != "" && len(sock)+len(".0123456789abcdef") >= 108 {
			t.Errorf("a %d-byte socket path leaves ssh no room: %s", len(sock), sock)
		}
	}
}
