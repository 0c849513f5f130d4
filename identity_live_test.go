package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeCommands are what the script's live steps run, each logging its
// argv to $FAKE_LOG. The fake sshd, run with a pid file, is a listener that
// writes it, and again a moment after a HUP (as sshd once it re-exec'd).
var fakeCommands = map[string]string{
	"date":      `echo "date $*" >>"$FAKE_LOG"`,
	"hostname":  `echo "hostname $*" >>"$FAKE_LOG"`,
	"systemctl": `echo "systemctl $*" >>"$FAKE_LOG"; exit "${FAKE_SYSTEMCTL:-1}"`,
	"service":   `echo "service $*" >>"$FAKE_LOG"; exit 1`,
	"sshd": `if [ "$1" = -t ]; then echo "sshd -t" >>"$FAKE_LOG"; exit "${FAKE_SSHD_T:-0}"; fi
if [ "$1" = -T ]; then
	echo "sshd -T $2 $3" >>"$FAKE_LOG"
	printf 'port 22
authorizedkeysfile %s
passwordauthentication no
' "${FAKE_AKF:-.ssh/authorized_keys .ssh/authorized_keys2}"
	exit 0
fi
trap 'echo "sshd HUP" >>"$FAKE_LOG"; sleep 0.3; echo $$ >"$1"' HUP
echo $$ >"$1"
while :; do sleep 0.05; done`,
}

// TestIdentityScriptLive runs the steps vmup takes on a real guest, with
// LIVE=1 and fake commands: the clock, the hostname, and sshd's reload.
func TestIdentityScriptLive(t *testing.T) {
	fakes := t.TempDir()
	for name, body := range fakeCommands {
		writeKeyFile(t, filepath.Join(fakes, name), "#!/bin/sh\n"+body+"\n", 0o755)
	}
	// listener starts a fake sshd (or, not named sshd, a sleep) whose pid is
	// in root's run/sshd.pid.
	listener := func(t *testing.T, root, log string, sshd bool) *os.Process {
		pf := filepath.Join(root, "run/sshd.pid")
		os.MkdirAll(filepath.Dir(pf), 0o755)
		cmd := exec.Command(filepath.Join(fakes, "sshd"), pf)
		if !sshd {
			cmd = exec.Command("sleep", "60")
		}
		cmd.Env = []string{"FAKE_LOG=" + log, "PATH=" + os.Getenv("PATH")}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if !sshd {
			writeKeyFile(t, pf, fmt.Sprintln(cmd.Process.Pid), 0o644)
		}
		for deadline := time.Now().Add(5 * time.Second); !exists(pf, ""); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the fake sshd wrote no pid file")
			}
		}
		return cmd.Process
	}
	cases := []struct {
		name     string
		listener string // "sshd", "other" (a pid not sshd's) or none
		split    bool   // OpenSSH 9.8 and later: sshd-session beside sshd
		env      []string
		code     int
		calls    string // between date and hostname
	}{
		{"pid file, sshd before 9.8", "sshd", false, nil, 0, ""},
		{"pid file, sshd-session", "sshd", true, nil, 0, "sshd -t\nsshd HUP\n"},
		{"sshd -t fails", "sshd", true, []string{"FAKE_SSHD_T=1"}, 3, "sshd -t\n"},
		{"systemctl", "", false, []string{"FAKE_SYSTEMCTL=0"}, 0, "sshd -t\nsystemctl reload ssh\n"},
		{"pid not sshd's", "other", false, []string{"FAKE_SYSTEMCTL=0"}, 0, "sshd -t\nsystemctl reload ssh\n"},
		{"no way", "", false, nil, 3, "sshd -t\nsystemctl reload ssh\nsystemctl reload sshd\nservice ssh reload\n"},
		{"keys file by path", "sshd", false, []string{"FAKE_AKF=/home/%u/.ssh/authorized_keys"}, 0, ""},
		{"keys file by %h", "sshd", false, []string{"FAKE_AKF=/x %h/.ssh/authorized_keys"}, 0, ""},
	}
	for _, sh := range guestShells(t, false) {
		for _, c := range cases {
			t.Run(sh.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				root := identityGuest(t, guestOpts{})
				if c.split {
					writeKeyFile(t, filepath.Join(root, "usr/lib/openssh/sshd-session"), "", 0o755)
				}
				log := filepath.Join(t.TempDir(), "log")
				var p *os.Process
				if c.listener != "" {
					p = listener(t, root, log, c.listener == "sshd")
				}
				in := testIdentity(t, "b")
				live := sh
				live.path = fakes + ":" + sh.path
				out, code := runIdentity(t, live, root, in, append([]string{"LIVE=1", "FAKE_LOG=" + log}, c.env...)...)
				reloaded, err := identityOutcome([]byte(out), code)
				if code != c.code || err != nil || reloaded != (code == 0) {
					t.Fatalf("exit %d (reloaded %v, %v):\n%s", code, reloaded, err, out)
				}
				calls, _ := os.ReadFile(log)
				want := fmt.Sprintf("date -u -s @%d\n%ssshd -T -C user=vmup,host=localhost,addr=127.0.0.1\nhostname b\n", in.Time.Unix(), c.calls)
				if diff := cmp.Diff(want, string(calls)); diff != "" {
					t.Errorf("calls:\n%s", diff)
				}
				if p != nil && readGuest(t, root, "run/sshd.pid") != fmt.Sprintln(p.Pid) {
					t.Errorf("run/sshd.pid holds %q, want %d", readGuest(t, root, "run/sshd.pid"), p.Pid)
				}
				if p != nil && p.Signal(syscall.Signal(0)) != nil {
					t.Error("the listener is gone")
				}
				checkIdentity(t, root, in, guestOpts{}, "127.0.0.1 localhost\n127.0.1.1 b.localdomain b\n10.0.0.1\tab a-b b.a\n\n::1 localhost ip6-localhost ip6-loopback\n")
			})
		}
	}
}

// A guest whose sshd reads login keys from elsewhere is no clone vmup can
// log in to with its own key: the identity fails (the clone is wiped).
func TestIdentityScriptKeysFileElsewhere(t *testing.T) {
	fakes := t.TempDir()
	for name, body := range fakeCommands {
		writeKeyFile(t, filepath.Join(fakes, name), "#!/bin/sh\n"+body+"\n", 0o755)
	}
	for _, sh := range guestShells(t, false) {
		t.Run(sh.name, func(t *testing.T) {
			root := identityGuest(t, guestOpts{})
			live := sh
			live.path = fakes + ":" + sh.path
			log := filepath.Join(t.TempDir(), "log")
			out, code := runIdentity(t, live, root, testIdentity(t, "b"), "LIVE=1", "FAKE_LOG="+log,
				"FAKE_SYSTEMCTL=0", "FAKE_AKF=/etc/ssh/keys/%u")
			if _, err := identityOutcome([]byte(out), code); code != 2 || err == nil ||
				!strings.Contains(out, "sshd reads login keys from /etc/ssh/keys/%u") {
				t.Errorf("exit %d (%v):\n%s", code, err, out)
			}
		})
	}
}
