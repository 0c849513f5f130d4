package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
	// The hash memo (hashes.json) is no download.
	if files := cacheFiles(t, home); len(files) != 1 {
		t.Errorf("cache holds %v after a bad download, want only the good one", files)
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

// slowServer serves body in small chunks, slowly, as a far mirror does;
// started is told of every request as it begins.
func slowServer(t *testing.T, body []byte, started chan<- struct{}) (*httptest.Server, *atomic.Int32) {
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		started <- struct{}{}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		for off := 0; off < len(body); off += 4096 {
			w.Write(body[off:min(off+4096, len(body))])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

// Two `up`s of one URL at once: one download at a time, and what is cached
// is exactly what the server sent.
func TestConcurrentDownloadsOfOneURL(t *testing.T) {
	body := make([]byte, 64*4096)
	for i := range body {
		body[i] = byte(i * 7)
	}
	sum := sha256.Sum256(body)
	want := hex.EncodeToString(sum[:])
	started := make(chan struct{}, 4)
	srv, gets := slowServer(t, body, started)
	home := t.TempDir()
	url := srv.URL + "/debian.qcow2"

	type result struct {
		path string
		err  error
	}
	results := make(chan result, 2)
	fetch := func() {
		p, err := fetchImage(context.Background(), home, url, want)
		results <- result{p, err}
	}
	go fetch()
	<-started // the first download runs
	go fetch()
	var paths []string
	for range 2 {
		select {
		case r := <-results:
			if r.err != nil {
				t.Errorf("fetch: %v", r.err)
				continue
			}
			paths = append(paths, r.path)
		case <-time.After(30 * time.Second):
			t.Fatal("a fetch did not end")
		}
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		got := sha256.Sum256(data)
		if err != nil || hex.EncodeToString(got[:]) != want {
			t.Errorf("%s: sha256 %x (%v), the server sent %s", p, got, err, want)
		}
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d downloads of one URL, want 1", n)
	}
	entries, _ := os.ReadDir(filepath.Join(home, "cache"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".part") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// Cancelling a download stops it at once, however slow the server.
func TestDownloadStopsOnCancel(t *testing.T) {
	started := make(chan struct{}, 1)
	srv, _ := slowServer(t, make([]byte, 1<<30), started)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := fetchImage(ctx, t.TempDir(), srv.URL+"/big.qcow2", "")
		done <- err
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the download went on after its context ended")
	}
}

// Ctrl+C while a huge image is hashed ends vmup at once: hashing checks for
// the interrupt between chunks.
func TestHashingStopsOnInterrupt(t *testing.T) {
	h := newHarness(t)
	// 1 TiB, sparse: minutes of reading, no disk space.
	if err := os.Truncate(h.image, 1<<40); err != nil {
		t.Skipf("no sparse file here: %v", err)
	}
	done := h.up(h.upArgs()...)
	h.events.waitFor(t, "step_started", "Preparing image")
	h.sigs <- syscall.SIGINT
	select {
	case code := <-done:
		if code != exitSIGINT {
			t.Errorf("exit %d, want 130\n%s", code, h.stderr)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("still hashing 3s after Ctrl+C; events %v", h.events.names())
	}
}

// The bytes uploaded into a base volume are the bytes hashed: neither a memo
// that lies (a file rewritten with its size and mtime kept) nor a file
// changed between hashing and upload gets another image under a hash's name.
func TestImageSHA256CheckedOnUploadedBytes(t *testing.T) {
	good := []byte("fake image")
	sum := sha256.Sum256(good)
	goodHash := hex.EncodeToString(sum[:])
	noVM := func(h *harness) {
		t.Helper()
		for v := range h.fake.world.Volumes {
			t.Errorf("volume %s left behind", v)
		}
		if len(h.fake.world.Domains) != 0 {
			t.Errorf("domains created: %v", h.fake.world.Domains)
		}
	}

	t.Run("memo", func(t *testing.T) {
		h := newHarness(t)
		st, _ := os.Stat(h.image)
		os.WriteFile(h.image, []byte("fake imagX"), 0o644)
		os.Chtimes(h.image, st.ModTime(), st.ModTime())
		memo := map[string]string{fmt.Sprintf("%s\x00%d\x00%d", h.image, st.Size(), st.ModTime().UnixNano()): goodHash}
		data, _ := json.Marshal(memo)
		os.MkdirAll(filepath.Join(h.env.Home, "cache"), 0o700)
		os.WriteFile(filepath.Join(h.env.Home, "cache", "hashes.json"), data, 0o600)

		if code := h.wait(h.up(h.upArgs("-d", "--image-sha256", goodHash)...)); code != exitUsage {
			t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
		}
		noVM(h)
	})
	t.Run("changed after hashing", func(t *testing.T) {
		for _, flags := range [][]string{nil, {"--image-sha256", goodHash}} {
			h := newHarness(t)
			h.fake.onInspect = func() { os.WriteFile(h.image, []byte("fake imagX"), 0o644) }
			if code := h.wait(h.up(h.upArgs(append(flags, "-d")...)...)); code != exitUsage {
				t.Fatalf("%v: exit %d, want 2\n%s", flags, code, h.stderr)
			}
			if !strings.Contains(h.stderr.String(), "vmup: error: ") || !strings.Contains(h.stderr.String(), "sha256") {
				t.Errorf("no clear error:\n%s", h.stderr)
			}
			noVM(h)
		}
	})
	t.Run("uploaded", func(t *testing.T) {
		h := newHarness(t)
		h.createDetached()
		base := "vmup/vmup-base-" + h.imgHash + ".qcow2"
		if got := h.fake.world.Content[base]; string(got) != string(good) {
			t.Errorf("the base volume holds %q, want %q", got, good)
		}
	})
}
