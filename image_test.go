package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A URL image is downloaded once into the cache, verified, and never left half-written.
func TestFetchImageFromURL(t *testing.T) {
	body := []byte("qcow2 bytes")
	sum := sha256.Sum256(body)
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		w.Write(body)
	}))
	defer srv.Close()
	home := t.TempDir()
	url := srv.URL + "/debian.qcow2"

	path, err := fetchImage(context.Background(), home, url, hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(body) || filepath.Dir(path) != filepath.Join(home, "cache") {
		t.Errorf("cached %s = %q", path, got)
	}
	if again, err := fetchImage(context.Background(), home, url, ""); err != nil || again != path || hits != 1 {
		t.Errorf("second fetch: %s %v, %d downloads; want the cached file and one download", again, err, hits)
	}

	_, err = fetchImage(context.Background(), home, srv.URL+"/other.qcow2", hex.EncodeToString(make([]byte, 32)))
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Fatalf("checksum mismatch: err %v, want a usage error", err)
	}
	entries, _ := os.ReadDir(filepath.Join(home, "cache"))
	if len(entries) != 1 {
		t.Errorf("cache holds %d files after a bad download, want only the good one", len(entries))
	}
}

// A device or FIFO as --image (or --kernel, --initrd, --playbook) is refused
// before anything runs: hashing /dev/zero would never end.
func TestNonRegularImageRefused(t *testing.T) {
	for _, flag := range []string{"--image", "--kernel", "--initrd", "--playbook"} {
		t.Run(flag, func(t *testing.T) {
			h := newHarness(t)
			args := h.upArgs(flag, "/dev/zero")
			if flag == "--initrd" {
				args = append(args, "--kernel", h.image)
			}
			if code := h.wait(h.up(args...)); code != exitUsage {
				t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
			}
			if !strings.Contains(h.stderr.String(), "vmup: error: "+flag+" /dev/zero: not a regular file") {
				t.Errorf("stderr:\n%s", h.stderr)
			}
			if calls := h.calls(); len(calls) != 0 {
				t.Errorf("ran %v before refusing", calls)
			}
			if _, err := os.Stat(h.env.Home); !os.IsNotExist(err) {
				t.Errorf("created %s: %v", h.env.Home, err)
			}
		})
	}
}
