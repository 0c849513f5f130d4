package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// R10: with a real sshd on 127.0.0.1:42222 (REVIEW_SSHD=1): vmup's own
// controlPath keeps the socket in the state dir up to 99 bytes, but ssh's
// master binds PATH.<16 random chars> first, which must fit in 108 bytes.
func TestReviewControlPathLengthWithRealSSH(t *testing.T) {
	if os.Getenv("REVIEW_SSHD") == "" {
		t.Skip("needs the review's sshd")
	}
	t.Setenv("VMUP_SSH", "/usr/bin/ssh")
	hostPub, _ := os.ReadFile("/tmp/rv/hostkey.pub")
	for _, sockLen := range []int{85, 90, 91, 95, 99} {
		base := "/tmp/rv/h"
		// Dir + "/ssh.sock" must be sockLen long.
		dir := base + "/" + strings.Repeat("d", sockLen-len(base)-1-len("/ssh.sock"))
		os.RemoveAll(dir)
		os.MkdirAll(dir, 0o700)
		p := Paths{Home: base, Dir: dir}
		key, _ := os.ReadFile("/tmp/rv/clientkey")
		os.WriteFile(p.Key(), key, 0o600)
		os.WriteFile(p.KnownHosts(), []byte(knownHostsLine("v1", string(hostPub))), 0o600)
		sock := controlPath(p, nil)
		s := newSSH(execRunner{}, "v1", "root", p, Endpoint{Host: "127.0.0.1", Port: 42222})
		s.control = sock
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		mctx, mcancel := context.WithCancel(context.Background())
		_, err := s.WaitMaster(ctx, mctx, 200*time.Millisecond, func(context.Context) error { return nil })
		mcancel()
		cancel()
		t.Logf("socket path %d bytes (%s): WaitMaster: %v", len(sock), filepath.Base(filepath.Dir(sock))[:5], err)
		if err != nil {
			t.Errorf("controlPath gave a %d-byte socket path that ssh cannot use as a master: %v", len(sock), err)
		}
	}
}
