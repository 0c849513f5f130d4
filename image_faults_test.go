package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// pinnedURLServer serves one image body, which a test may change, and counts requests.
type pinnedURLServer struct {
	mu   sync.Mutex
	body []byte
	hits int
	srv  *httptest.Server
}

func newPinnedURLServer(t *testing.T, body []byte) *pinnedURLServer {
	s := &pinnedURLServer{body: body}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits++
		b := s.body
		s.mu.Unlock()
		w.Write(b)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// Issue 14 item 15: with --image URL --image-sha256, a cached copy of that
// URL whose sha256 differs (the server's file changed since) is fetched
// again, and replaced once the new download verifies.
func TestPinnedURLRefetchesAStaleCachedCopy(t *testing.T) {
	h := newHarness(t)
	s := newPinnedURLServer(t, []byte("new image"))
	u := s.srv.URL + "/img.qcow2"
	cached := filepath.Join(h.env.Home, "cache", urlKey(u)+"-img.qcow2")
	ensureDir(filepath.Dir(cached))
	os.WriteFile(cached, []byte("old image"), 0o600) // an earlier `vmup up --image URL`
	for i, name := range []string{"v1", "v2"} {
		code := h.wait(h.up(name, "--image", u, "--image-sha256", hexSHA256([]byte("new image")),
			"--domain-type", "qemu", "--network", "user", "--no-provision", "-d"))
		if code != 0 {
			t.Fatalf("run %d: exit %d, the server (which has the pinned image) asked %d times\n%s", i+1, code, s.hits, h.stderr)
		}
	}
	if s.hits != 1 {
		t.Errorf("the server was asked %d times, want once (the second run uses the fresh copy)", s.hits)
	}
	if got, _ := os.ReadFile(cached); string(got) != "new image" {
		t.Errorf("the cache holds %q, want the verified new download", got)
	}
}

// ...and when the server's file does not match the pin either, the run stops
// (exit 2) with a hint naming both hashes, and the cached copy stays as it was.
func TestPinnedURLServerStillDiffersKeepsCacheAndNamesBothHashes(t *testing.T) {
	h := newHarness(t)
	s := newPinnedURLServer(t, []byte("server image"))
	u := s.srv.URL + "/img.qcow2"
	cached := filepath.Join(h.env.Home, "cache", urlKey(u)+"-img.qcow2")
	ensureDir(filepath.Dir(cached))
	os.WriteFile(cached, []byte("old image"), 0o600)
	pin := hexSHA256([]byte("pinned image"))
	code := h.wait(h.up("v1", "--image", u, "--image-sha256", pin, "--domain-type", "qemu", "--network", "user", "--no-provision", "-d"))
	if code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	hint := lineOf(h.stderr.String(), "vmup: hint: ")
	if !strings.Contains(hint, pin) || !strings.Contains(hint, hexSHA256([]byte("server image"))) {
		t.Errorf("the hint does not name both the pin and the server's sha256:\n%s", h.stderr)
	}
	if got, _ := os.ReadFile(cached); !bytes.Equal(got, []byte("old image")) {
		t.Errorf("the cached copy changed to %q", got)
	}
	if s.hits != 1 {
		t.Errorf("the server was asked %d times, want once", s.hits)
	}
	if files := cacheFiles(t, h.env.Home); len(files) != 1 {
		t.Errorf("cache holds %v, want only the old copy", files)
	}
	h.noVMCreated()
}
