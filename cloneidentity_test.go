package main

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// masterRunner fails every ssh master with stderr once vmup asked it (-O
// check) whether it is up, as a master does that is still connecting.
type masterRunner struct {
	stderr  string
	masters atomic.Int32
	checked chan struct{}
}

func (r *masterRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	fail := &ExitError{Args: c.Args, ExitCode: 255, Stderr: r.stderr}
	if c.Started == nil { // -O check
		select {
		case r.checked <- struct{}{}:
		default:
		}
		return Result{ExitCode: 255}, fail
	}
	c.Started(1)
	r.masters.Add(1)
	select {
	case <-r.checked:
	case <-ctx.Done():
	}
	return Result{ExitCode: 255}, fail
}

// A clone's sshd serves its pinned key already: another key ends the wait
// at once, where a booting VM's waits on (its first host key may be the
// image's own, until cloud-init writes vmup's).
func TestWaitMasterHostKeyRefused(t *testing.T) {
	for _, final := range []bool{true, false} {
		r := &masterRunner{checked: make(chan struct{}), stderr: "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n"}
		s := newSSH(r, "v1", "vmup", pathsFor(t.TempDir(), "v1"), Endpoint{Host: "127.0.0.1", Port: 2222})
		s.keyFinal = final
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := s.WaitMaster(ctx, ctx, 10*time.Millisecond, func(context.Context) error { return nil })
		cancel()
		switch {
		case final && (err == nil || !strings.Contains(err.Error(), "another host key")):
			t.Errorf("keyFinal: %v, want the host key named", err)
		case final && r.masters.Load() != 1:
			t.Errorf("keyFinal: %d masters started, want 1", r.masters.Load())
		case !final && err != context.DeadlineExceeded:
			t.Errorf("booting: %v, want waiting until the deadline", err)
		}
	}
}

// markerWriter closes its channel once, on the marker as a whole line, in
// whatever pieces it comes, and keeps every byte.
func TestMarkerWriter(t *testing.T) {
	for _, c := range []struct {
		pieces []string
		seen   bool
	}{
		{[]string{"motd\nvmup-identity ke", "ys\nvmup-identity done sshd=rexec\n"}, true},
		{[]string{"vmup-identity keys\n"}, true},
		{[]string{"xvmup-identity keys\n"}, false},
		{[]string{"vmup-identity keys"}, false},
	} {
		seen := make(chan struct{})
		w := &markerWriter{marker: "vmup-identity keys\n", seen: seen}
		for _, p := range c.pieces {
			w.Write([]byte(p))
			w.Write([]byte("")) // closes nothing twice
		}
		select {
		case <-seen:
			if !c.seen {
				t.Errorf("%q: seen", c.pieces)
			}
		default:
			if c.seen {
				t.Errorf("%q: not seen", c.pieces)
			}
		}
		if got := w.buf.String(); got != strings.Join(c.pieces, "") {
			t.Errorf("kept %q", got)
		}
	}
}

// The clone's SSH forward replaces the template's: a saved definition
// without vmup's user netdev is refused, never restored with the
// template VM's forward.
func TestTemplateNetdev(t *testing.T) {
	got, err := templateNetdev(`<qemu:arg value='user,id=vmupnet,restrict=on,hostfwd=tcp:127.0.0.1:4022-:22'/>`)
	if err != nil || got != "user,id=vmupnet,restrict=on,hostfwd=tcp:127.0.0.1:4022-:22" {
		t.Errorf("got %q, %v", got, err)
	}
	if got, err := templateNetdev(`<interface type='network'><source network='default'/></interface>`); err == nil {
		t.Errorf("no user netdev: got %q, want an error", got)
	}
}

// A clone costs one login: the template's, kept as the clone's ssh master,
// with the identity script run through it; the new host key is proved by a
// connection that authenticates nothing, pinned to the clone's known_hosts.
func TestCloneOneLoginProvesHostKey(t *testing.T) {
	h := templateHarness(t)
	h.makeTemplateVM()
	before := len(h.fake.rawCalls())
	if code := h.wait(h.up(h.cloneArgs("c1", "-d")...)); code != 0 {
		t.Fatalf("clone: exit %d\n%s", code, h.stderr)
	}
	dir := filepath.Join(h.env.Home, "vms", "c1")
	var masters, scripts, proofs []string
	for _, args := range h.fake.rawCalls()[before:] {
		line := strings.Join(args, " ")
		switch {
		case filepath.Base(args[0]) != "ssh":
		case strings.Contains(line, "ControlMaster=yes"):
			masters = append(masters, line)
		case strings.Contains(line, "vmup-identity done"):
			scripts = append(scripts, line)
		case strings.Contains(line, "PubkeyAuthentication=no"):
			proofs = append(proofs, line)
		}
	}
	login := "IdentityFile=" + filepath.Join(dir, "template-login", "id_ed25519")
	if len(masters) != 1 || !strings.Contains(masters[0], login) {
		t.Errorf("masters %q; want one, with the template's login key", masters)
	}
	sock := "ControlPath=" + filepath.Join(dir, "ssh.sock")
	if len(scripts) != 1 || !strings.Contains(scripts[0], sock) || !strings.Contains(scripts[0], "ControlMaster=no") {
		t.Errorf("identity scripts %q; want one, through the master at %s", scripts, sock)
	}
	if len(proofs) != 1 || !strings.Contains(proofs[0], "UserKnownHostsFile="+filepath.Join(dir, "known_hosts")) ||
		!strings.Contains(proofs[0], "StrictHostKeyChecking=yes") || !strings.Contains(proofs[0], "ControlPath=none") {
		t.Errorf("host key proofs %q; want one, on the clone's known_hosts and no master", proofs)
	}
	// The master's known_hosts lived as long as the master: gone with it.
	if _, err := os.Stat(filepath.Join(dir, "template-login")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("template-login left after the master ended: %v", err)
	}
}

// A clone's sshd that refuses the template's login key fails the clone at
// once, as a wrong host key does: nothing else would end the wait.
func TestWaitMasterLoginRefused(t *testing.T) {
	r := &masterRunner{checked: make(chan struct{}), stderr: "vmup@127.0.0.1: Permission denied (publickey).\n"}
	s := newSSH(r, "v1", "vmup", pathsFor(t.TempDir(), "v1"), Endpoint{Host: "127.0.0.1", Port: 2222})
	s.keyFinal = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := s.WaitMaster(ctx, ctx, 10*time.Millisecond, func(context.Context) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "refuses the login key") || r.masters.Load() != 1 {
		t.Errorf("%v after %d masters; want the login key named after one", err, r.masters.Load())
	}
}

// A guest whose sshd serves another key than the one pinned fails the
// clone: never a VM that `vmup ssh` cannot reach once its master is gone.
func TestCloneWrongHostKeyFails(t *testing.T) {
	h := templateHarness(t)
	h.makeTemplateVM()
	h.fake.mu.Lock()
	h.fake.world.WrongHostKey = true
	h.fake.mu.Unlock()
	code := h.wait(h.up(h.cloneArgs("c1", "-d")...))
	if code == 0 || !strings.Contains(h.stderr.String(), "serves another host key than the one vmup pinned") {
		t.Fatalf("exit %d; want a failure naming the host key\n%s", code, h.stderr)
	}
	if h.has("provisioned_from_template") || h.journalOf("c1").FirstBootDone {
		t.Errorf("c1 recorded provisioned; events %v", h.events.names())
	}
}

// ProveHostKey: refused after the key check passes, the host key refused
// fails at once, a connection not yet answered is tried again.
func TestProveHostKey(t *testing.T) {
	for _, c := range []struct {
		name    string
		answers []string // stderr of each try, exit 255; "ok": exit 0
		want    string   // "" or a part of the error
		tries   int
	}{
		{"refused after the key", []string{"vmup@127.0.0.1: Permission denied (publickey).\n"}, "", 1},
		{"no authentication asked", []string{"ok"}, "", 1},
		{"another key", []string{"@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n"}, "another host key", 1},
		{"sshd restarting", []string{"ssh: connect to host 127.0.0.1 port 2222: Connection refused\n", "x@h: Permission denied (publickey).\n"}, "", 2},
		{"never answers", []string{"kex_exchange_identification: read: Connection reset by peer\n"}, "is not known", 5},
		{"local connect refused", []string{"ssh: connect to host 127.0.0.1 port 2222: Permission denied\n"}, "is not known", 5},
	} {
		r := &answerRunner{answers: c.answers}
		s := newSSH(r, "v1", "vmup", pathsFor(t.TempDir(), "v1"), Endpoint{Host: "127.0.0.1", Port: 2222})
		err := s.ProveHostKey(context.Background())
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if r.n != c.tries {
			t.Errorf("%s: %d tries, want %d", c.name, r.n, c.tries)
		}
	}
}

// answerRunner answers the nth call with answers[n] (the last one again
// after): on stdout with exit 0 when asStdout; else "ok" is exit 0 and
// anything else ssh's stderr with exit 255.
type answerRunner struct {
	answers  []string
	asStdout bool
	n        int
}

func (r *answerRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	a := r.answers[min(r.n, len(r.answers)-1)]
	r.n++
	switch {
	case r.asStdout:
		return Result{Stdout: []byte(a)}, nil
	case a == "ok":
		return Result{}, nil
	}
	return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255, Stderr: a}
}

// The clock by guest-exec: date's exit is waited for; a date that failed,
// was killed, or an agent's odd answer is an error (guest-set-time follows).
func TestAgentSetClockByExec(t *testing.T) {
	for _, c := range []struct {
		name    string
		answers []string
		want    string
	}{
		{"exits 0", []string{`{"return":{"pid":7}}`, `{"return":{"exited":false}}`, `{"return":{"exited":true,"exitcode":0}}`}, ""},
		{"exits 1", []string{`{"return":{"pid":7}}`, `{"return":{"exited":true,"exitcode":1}}`}, "exit 1"},
		{"killed", []string{`{"return":{"pid":7}}`, `{"return":{"exited":true,"signal":9}}`}, "exit 0"},
		{"no pid", []string{`{"return":{}}`}, "unexpected answer"},
		{"not JSON", []string{`{"return":{"pid":7}}`, `x`}, "unexpected answer"},
	} {
		r := &answerRunner{answers: c.answers, asStdout: true}
		err := newVirsh(r, "qemu:///system").AgentSetClockByExec(context.Background(), "v1")
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if c.want == "" && r.n != len(c.answers) {
			t.Errorf("%s: %d calls, want %d", c.name, r.n, len(c.answers))
		}
	}
}

// sshBanner: an SSH identification line, after other lines or not; not
// anything else, nor silence past the deadline.
func TestSSHBanner(t *testing.T) {
	for _, c := range []struct {
		name, send string
		want       bool
	}{
		{"banner", "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", true},
		{"lines first", "hello\r\nwait\r\nSSH-2.0-x\r\n", true},
		{"not ssh", "HTTP/1.1 400 Bad Request\r\n\r\n", false},
		{"silent", "", false},
	} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, c.send)
			if c.send != "" {
				conn.Close()
			}
		}()
		start := time.Now()
		got := sshBanner(context.Background(), l.Addr().String(), 300*time.Millisecond)
		if got != c.want || time.Since(start) > 2*time.Second {
			t.Errorf("%s: %v after %s, want %v", c.name, got, time.Since(start), c.want)
		}
		l.Close()
	}
}

// WaitMaster's tries are short until an sshd's banner was seen; then they
// wait the whole ConnectTimeout, for a guest too busy to answer in two.
func TestWaitMasterLongTriesOnlyOnceSSHDAnswers(t *testing.T) {
	for _, serve := range []bool{false, true} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if serve {
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					io.WriteString(conn, "SSH-2.0-slow\r\n")
					conn.Close()
				}
			}()
		} else {
			l.Close() // refused, as before a guest's network is up
		}
		r := &triesRunner{}
		port := l.Addr().(*net.TCPAddr).Port
		s := newSSH(r, "v1", "vmup", pathsFor(t.TempDir(), "v1"), Endpoint{Host: "127.0.0.1", Port: port})
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		s.WaitMaster(ctx, ctx, 10*time.Millisecond, func(context.Context) error { return nil })
		cancel()
		l.Close()
		short, long := r.counts()
		if short == 0 || serve != (long > 0) {
			t.Errorf("banner served %v: %d short tries, %d long ones", serve, short, long)
		}
	}
}

// triesRunner fails every master at once, counting the short (ConnectTimeout=2) and long tries.
type triesRunner struct {
	mu          sync.Mutex
	short, long int
}

func (r *triesRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	if c.Started == nil { // -O check
		return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255}
	}
	c.Started(1)
	r.mu.Lock()
	if slices.Contains(c.Args, "ConnectTimeout=2") {
		r.short++
	} else {
		r.long++
	}
	r.mu.Unlock()
	return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255, Stderr: "Connection timed out during banner exchange"}
}

func (r *triesRunner) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.short, r.long
}

// While a master's try connects, WaitMaster looks for its socket: an `ssh
// -O check` is a process taking host CPU from the booting guest (a re-up's
// 35 s boot ran 74 when each try asked at its start and every 0.5 s).
func TestWaitMasterLooksForTheSocketNotAProcess(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // refused: no banner, short tries
	r := &socketRunner{loginOnTry: 5, tryFor: 150 * time.Millisecond}
	s := newSSH(r, "v1", "vmup", pathsFor(t.TempDir(), "v1"), Endpoint{Host: "127.0.0.1", Port: l.Addr().(*net.TCPAddr).Port})
	s.control = filepath.Join(t.TempDir(), "ctl")
	r.control = s.control
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.WaitMaster(ctx, ctx, 10*time.Millisecond, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tries != 5 || r.checks > 2 {
		t.Errorf("%d tries and %d runs of `ssh -O check`; want 5 tries and at most 2 (the first try's, the socket's)", r.tries, r.checks)
	}
}

// socketRunner's masters fail after tryFor, until the loginOnTry'th, which
// makes its socket (as ssh does once logged in) and holds on.
type socketRunner struct {
	mu            sync.Mutex
	control       string
	loginOnTry    int
	tryFor        time.Duration
	tries, checks int
}

func (r *socketRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	r.mu.Lock()
	if c.Started == nil { // -O check
		r.checks++
		r.mu.Unlock()
		if socketMade(r.control) {
			return Result{}, nil
		}
		return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255}
	}
	r.tries++
	login := r.tries == r.loginOnTry
	r.mu.Unlock()
	c.Started(1)
	if login {
		time.Sleep(r.tryFor) // logging in
		l, err := net.Listen("unix", r.control)
		if err != nil {
			return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255, Stderr: err.Error()}
		}
		defer l.Close()
		<-ctx.Done()
		return Result{}, ctx.Err()
	}
	select {
	case <-time.After(r.tryFor):
	case <-ctx.Done():
	}
	return Result{ExitCode: 255}, &ExitError{Args: c.Args, ExitCode: 255, Stderr: "Connection timed out during banner exchange"}
}
