package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// logs runs `vmup logs ARGS…` with wait as its poll and returns its exit code.
func logs(ctx context.Context, home string, stdout, stderr *lockedWriter, wait func(context.Context) error, args ...string) int {
	o, _, err := parseCommand("logs", args)
	env := Env{Home: home, Out: newOutput(stderr, nil, "")}
	if err != nil {
		return reportError(env.Out, err)
	}
	return showLogs(ctx, stdout, env, o, wait)
}

func noWait(context.Context) error { panic("waited without -f") }

type brokenPipe struct{}

func (brokenPipe) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// Item 5: `vmup logs NAME` shows the last playbook log and then the console
// log, each under its path.
func TestLogsShowsTheLastPlaybookLogAndTheConsole(t *testing.T) {
	home := t.TempDir()
	p := addVM(t, home, "web", "127.0.0.1", 2222)
	os.WriteFile(p.Console(), []byte("[    0.000000] Linux version 6.1\nweb login:\n"), 0o600)
	os.Mkdir(p.Logs(), 0o700)
	os.WriteFile(filepath.Join(p.Logs(), "playbook-20240101T100000Z.log"), []byte("PLAY old\n"), 0o600)
	os.WriteFile(filepath.Join(p.Logs(), "playbook-20240301T100000Z.log"), []byte("PLAY [all]\nok: [web]\n"), 0o600)
	os.WriteFile(filepath.Join(p.Logs(), "playbook-20240201T100000Z.log"), []byte("PLAY middle\n"), 0o600)
	os.WriteFile(filepath.Join(p.Logs(), "zzz-not-a-playbook.log"), []byte("other\n"), 0o600)

	stdout, stderr := &lockedWriter{w: &bytes.Buffer{}}, &lockedWriter{w: &bytes.Buffer{}}
	if code := logs(context.Background(), home, stdout, stderr, noWait, "web"); code != exitOK {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	want := "==> " + filepath.Join(p.Logs(), "playbook-20240301T100000Z.log") + " <==\nPLAY [all]\nok: [web]\n\n" +
		"==> " + p.Console() + " <==\n[    0.000000] Linux version 6.1\nweb login:\n"
	if got := stdout.String(); got != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", got, want)
	}
	if stderr.String() != "" {
		t.Errorf("stderr: %s", stderr)
	}
	// A reader that had enough (`vmup logs web | head`) ends it quietly.
	stderr = &lockedWriter{w: &bytes.Buffer{}}
	if code := logs(context.Background(), home, &lockedWriter{w: brokenPipe{}}, stderr, noWait, "web"); code != exitOK || stderr.String() != "" {
		t.Errorf("into a closed pipe: exit %d\n%s", code, stderr)
	}

	// A VM that never booted nor ran a playbook: said on stderr, exit 0.
	addVM(t, home, "new", "", 0)
	stdout, stderr = &lockedWriter{w: &bytes.Buffer{}}, &lockedWriter{w: &bytes.Buffer{}}
	if code := logs(context.Background(), home, stdout, stderr, noWait, "new"); code != exitOK || stdout.String() != "" ||
		!strings.Contains(stderr.String(), "vmup: warning: VM new has no console log yet") ||
		!strings.Contains(stderr.String(), "vmup: warning: VM new has run no playbook") {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"nope"}, exitFailed, "vmup: error: no VM named nope"},
		{[]string{"Bad_Name"}, exitUsage, `vmup: error: invalid VM name "Bad_Name"`},
		{[]string{"web", "new"}, exitUsage, "vmup: error: too many arguments: web new"},
	} {
		stdout, stderr = &lockedWriter{w: &bytes.Buffer{}}, &lockedWriter{w: &bytes.Buffer{}}
		if code := logs(context.Background(), home, stdout, stderr, noWait, c.args...); code != c.code || !strings.Contains(stderr.String(), c.err) {
			t.Errorf("vmup logs %s: exit %d, stderr %s; want %d and %q", strings.Join(c.args, " "), code, stderr, c.code, c.err)
		}
	}
}

// Item 5: vmup reads only regular files of the VM's own state dir: a
// console.log or a logs/ that is a symlink is not followed out of it, and a
// FIFO is never opened for a read that would not end.
func TestLogsReadOnlyRegularFilesInTheStateDir(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("SECRET\n"), 0o600)
	for _, c := range []struct {
		name  string
		plant func(p Paths)
		err   string
	}{
		{"console symlink", func(p Paths) { os.Symlink(secret, p.Console()) }, "console.log is not a regular file"},
		{"console fifo", func(p Paths) { unix.Mkfifo(p.Console(), 0o600) }, "console.log is not a regular file"},
		{"console dir", func(p Paths) { os.Mkdir(p.Console(), 0o700) }, "console.log is not a regular file"},
		{"logs symlink", func(p Paths) {
			dir := filepath.Dir(secret)
			os.Rename(secret, filepath.Join(dir, "playbook-20240101T100000Z.log"))
			os.Symlink(dir, p.Logs())
		}, "logs is not a directory"},
		{"playbook log symlink", func(p Paths) {
			os.Mkdir(p.Logs(), 0o700)
			os.Symlink(secret, filepath.Join(p.Logs(), "playbook-20240101T100000Z.log"))
		}, "logs/playbook-20240101T100000Z.log is not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			home := t.TempDir()
			p := addVM(t, home, "web", "127.0.0.1", 2222)
			c.plant(p)
			stdout, stderr := &lockedWriter{w: &bytes.Buffer{}}, &lockedWriter{w: &bytes.Buffer{}}
			done := make(chan int, 1)
			go func() { done <- logs(context.Background(), home, stdout, stderr, noWait, "web") }()
			select {
			case code := <-done:
				if code != exitFailed || !strings.Contains(stderr.String(), "vmup: error: VM web: "+c.err) {
					t.Errorf("exit %d, stderr:\n%s\nwant 1 and %q", code, stderr, c.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("vmup logs hangs")
			}
			if strings.Contains(stdout.String(), "SECRET") {
				t.Errorf("printed what is outside the state dir:\n%s", stdout)
			}
		})
	}
}

// Item 5: -f follows the console log: what is appended shows up; a log made
// anew (the VM made again) or cut short is read from its start; it waits for
// one that is not there yet, also in a state dir made anew; it ends, exit 0, when its context does. Each
// poll is a step the test takes, so nothing here sleeps.
func TestLogsFollowShowsWhatIsAppendedUntilCancelled(t *testing.T) {
	home := t.TempDir()
	p := addVM(t, home, "web", "127.0.0.1", 2222)
	polls := make(chan struct{})
	wait := func(ctx context.Context) error {
		select {
		case <-polls:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// poll lets one poll happen and returns once it was handled: the second
	// send is taken only when the follower waits again.
	poll := func() {
		t.Helper()
		for range 2 {
			select {
			case polls <- struct{}{}:
			case <-time.After(10 * time.Second):
				t.Fatal("the follower does not poll")
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &lockedWriter{w: &bytes.Buffer{}}, &lockedWriter{w: &bytes.Buffer{}}
	done := make(chan int, 1)
	go func() { done <- logs(ctx, home, stdout, stderr, wait, "web", "-f") }()
	expect := func(want string) {
		t.Helper()
		if got := stdout.String(); got != want {
			t.Fatalf("stdout:\n%q\nwant:\n%q", got, want)
		}
	}
	header := "==> " + p.Console() + " <==\n"

	poll()
	expect("")
	f, _ := os.OpenFile(p.Console(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	f.WriteString("boot 1\n")
	poll()
	expect(header + "boot 1\n")
	f.WriteString("login: ")
	poll()
	expect(header + "boot 1\nlogin: ")
	f.Close()

	os.Remove(p.Console())
	os.WriteFile(p.Console(), []byte("made anew\n"), 0o600)
	poll()
	expect(header + "boot 1\nlogin: made anew\n")

	os.WriteFile(p.Console(), []byte("cut\n"), 0o600) // truncated in place
	poll()
	expect(header + "boot 1\nlogin: made anew\ncut\n")

	// The VM destroyed and made again: its state dir is new too.
	os.RemoveAll(p.Dir)
	poll()
	expect(header + "boot 1\nlogin: made anew\ncut\n")
	os.Mkdir(p.Dir, 0o700)
	os.WriteFile(p.Console(), []byte("new VM\n"), 0o600)
	poll()
	expect(header + "boot 1\nlogin: made anew\ncut\nnew VM\n")

	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit %d\n%s", code, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("vmup logs -f did not end with its context")
	}
	if !strings.Contains(stderr.String(), "vmup: warning: VM web has run no playbook") {
		t.Errorf("stderr: %s", stderr)
	}
}

// Item 5: the built binary follows the console log until Ctrl+C, and ends
// 0; SIGTERM ends it as a shell reports that signal.
func TestBinaryLogsFollowEndsOnCtrlC(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	console := pathsFor(r.home, "v1").Console()
	os.WriteFile(console, []byte("boot 1\n"), 0o600)
	for _, c := range []struct {
		sig  syscall.Signal
		code int
	}{{syscall.SIGINT, 0}, {syscall.SIGTERM, 143}} {
		cmd := exec.Command(vmupBinary, "logs", "v1", "-f")
		cmd.Env = r.env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = &testLogWriter{t: t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
		lines := make(chan string, 10)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		waitLine := func(want string) {
			t.Helper()
			timeout := time.After(30 * time.Second)
			for {
				select {
				case l := <-lines:
					if l == want {
						return
					}
				case <-timeout:
					t.Fatalf("no line %q", want)
				}
			}
		}
		waitLine("boot 1")
		line := fmt.Sprintf("more before %v", c.sig)
		appendFile(console, line+"\n")
		waitLine(line)
		if err := unix.Kill(-cmd.Process.Pid, c.sig); err != nil {
			t.Fatal(err)
		}
		for range lines {
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
			if code := cmd.ProcessState.ExitCode(); code != c.code {
				t.Errorf("vmup logs -f after %v: exit %d, want %d", c.sig, code, c.code)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("vmup logs -f did not end on %v", c.sig)
		}
	}
}
