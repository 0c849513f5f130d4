package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// distroFixture is where a distributor keeps one named image and the
// checksum file that vouches for it, as paths under VMUP_IMAGE_MIRROR: /debian
// stands for https://cloud.debian.org/images/cloud, /ubuntu for
// https://cloud-images.ubuntu.com/releases, /fedora for
// https://download.fedoraproject.org/pub/fedora/linux/releases.
type distroFixture struct {
	name, image, sums string
}

var distroFixtures = []distroFixture{
	{"debian-12", "/debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2", "/debian/bookworm/latest/SHA512SUMS"},
	{"debian-13", "/debian/trixie/latest/debian-13-genericcloud-amd64.qcow2", "/debian/trixie/latest/SHA512SUMS"},
	{"ubuntu-22.04", "/ubuntu/22.04/release/ubuntu-22.04-server-cloudimg-amd64.img", "/ubuntu/22.04/release/SHA256SUMS"},
	{"ubuntu-24.04", "/ubuntu/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img", "/ubuntu/24.04/release/SHA256SUMS"},
	{"ubuntu-26.04", "/ubuntu/26.04/release/ubuntu-26.04-server-cloudimg-amd64.img", "/ubuntu/26.04/release/SHA256SUMS"},
	{"fedora-44", "/fedora/44/Cloud/x86_64/images/Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2",
		"/fedora/44/Cloud/x86_64/images/Fedora-Cloud-44-1.7-x86_64-CHECKSUM"},
}

func fixture(name string) distroFixture {
	for _, f := range distroFixtures {
		if f.name == name {
			return f
		}
	}
	panic("no fixture " + name)
}

// distroMirror is a loopback HTTP server laid out as the distributors' sites
// are, with their checksum files in their own formats. It answers Range and
// If-Range requests as a real server does (http.ServeContent).
type distroMirror struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	files    map[string][]byte
	modTime  time.Time
	requests []mirrorRequest
	cutAt    map[string]int // serve this many bytes of the path, then drop the connection (once)
	chunk    int            // with delay: serve bodies in chunks of this size, delay apart
	delay    time.Duration
	served   map[string]int    // body bytes written, by path
	plain    map[string]string // checksum files before signing, by path
	signKey  *testKey          // signs the checksum files (image_faults_test.go)
}

type mirrorRequest struct{ Path, Range string }

func newDistroMirror(t *testing.T) *distroMirror {
	m := &distroMirror{t: t, files: map[string][]byte{}, cutAt: map[string]int{}, served: map[string]int{}, plain: map[string]string{},
		modTime: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)}
	m.srv = httptest.NewServer(m)
	t.Cleanup(m.srv.Close)
	t.Setenv("VMUP_IMAGE_MIRROR", m.srv.URL)
	return m
}

// imageBody is the content a fixture's image has, distinct per name.
func imageBody(name string, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*31) ^ name[i%len(name)]
	}
	return b
}

func hexSHA256(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
func hexSHA512(b []byte) string { s := sha512.Sum512(b); return hex.EncodeToString(s[:]) }

// publish puts body at the fixture's image path and a checksum file beside it
// that vouches for vouched (body itself, unless a test wants it corrupt),
// among the other files the real directory lists.
func (m *distroMirror) publish(f distroFixture, body, vouched []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, file := path.Split(f.image)
	m.files[f.image] = body
	other := func(s string) []byte { return []byte("other " + s) }
	var sums strings.Builder
	switch {
	case strings.HasPrefix(f.image, "/debian/"):
		// Debian: GNU sha512sum lines, two spaces, every build of the directory.
		stem := strings.TrimSuffix(file, "-genericcloud-amd64.qcow2")
		for _, name := range []string{stem + "-generic-amd64.json", stem + "-generic-amd64.qcow2", stem + "-generic-amd64.raw",
			stem + "-genericcloud-amd64.json", file, stem + "-genericcloud-amd64.raw", stem + "-genericcloud-amd64.tar.xz",
			stem + "-nocloud-amd64.qcow2"} {
			sum := hexSHA512(other(name))
			if name == file {
				sum = hexSHA512(vouched)
			}
			fmt.Fprintf(&sums, "%s  %s\n", sum, name)
		}
	case strings.HasPrefix(f.image, "/ubuntu/"):
		// Ubuntu: GNU sha256sum lines in binary mode (" *NAME").
		stem := strings.TrimSuffix(file, "-amd64.img")
		for _, name := range []string{stem + "-amd64-azure.vhd.tar.gz", stem + "-amd64-disk-kvm.img", file,
			stem + "-amd64.manifest", stem + "-amd64.ova", stem + "-amd64.tar.gz", stem + "-arm64.img"} {
			sum := hexSHA256(other(name))
			if name == file {
				sum = hexSHA256(vouched)
			}
			fmt.Fprintf(&sums, "%s *%s\n", sum, name)
		}
	case strings.HasPrefix(f.image, "/fedora/"):
		// Fedora: BSD-style lines with a size comment each, clearsigned (putSums).
		for _, name := range []string{"Fedora-Cloud-Base-AmazonEC2-44-1.7.x86_64.raw.xz", "Fedora-Cloud-Base-Azure-44-1.7.x86_64.vhdfixed.xz",
			"Fedora-Cloud-Base-GCE-44-1.7.x86_64.tar.gz", file, "Fedora-Cloud-Base-UEFI-UKI-44-1.7.x86_64.qcow2",
			"Fedora-Cloud-Base-Vagrant-libvirt-44-1.7.x86_64.vagrant.libvirt.box"} {
			sum, size := hexSHA256(other(name)), len(other(name))
			if name == file {
				sum, size = hexSHA256(vouched), len(body)
			}
			fmt.Fprintf(&sums, "# %s: %d bytes\nSHA256 (%s) = %s\n", name, size, name, sum)
		}
	}
	m.putSums(f, sums.String())
}

// unlist removes name's line from the fixture's checksum file.
func (m *distroMirror) unlist(f distroFixture) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, file := path.Split(f.image)
	var kept []string
	for _, line := range strings.SplitAfter(m.plain[f.sums], "\n") {
		if !strings.Contains(line, file) {
			kept = append(kept, line)
		}
	}
	m.putSums(f, strings.Join(kept, ""))
}

func (m *distroMirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	m.mu.Lock()
	m.requests = append(m.requests, mirrorRequest{p, r.Header.Get("Range")})
	body, ok := m.files[p]
	cut, cutNow := m.cutAt[p]
	delete(m.cutAt, p)
	chunk, delay, mod := m.chunk, m.delay, m.modTime
	var listing []string
	if strings.HasSuffix(p, "/") {
		for name := range m.files {
			if dir, file := path.Split(name); dir == p {
				listing = append(listing, file)
			}
		}
	}
	m.mu.Unlock()

	if listing != nil {
		// An Apache-style index, as Fedora's mirrors serve.
		sort.Strings(listing)
		fmt.Fprintf(w, "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of %s</title></head><body>\n<h1>Index of %s</h1>\n<pre><a href=\"../\">Parent Directory</a>\n", p, p)
		for _, f := range listing {
			fmt.Fprintf(w, "<a href=\"%s\">%s</a>  2026-04-14 12:00  1.2K\n", f, f)
		}
		fmt.Fprint(w, "</pre></body></html>\n")
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"`+hexSHA256(body)[:16]+`"`)
	if cutNow {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Header().Set("Last-Modified", mod.Format(http.TimeFormat))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:cut])
		m.count(p, cut)
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close() // the connection drops mid-body
		}
		return
	}
	var out io.Writer = w
	if delay > 0 {
		out = &slowWriter{w: w, chunk: chunk, delay: delay, ctx: r.Context()}
	}
	http.ServeContent(countingResponse{w, out, func(n int) { m.count(p, n) }}, r, path.Base(p), mod, bytes.NewReader(body))
}

func (m *distroMirror) count(p string, n int) {
	m.mu.Lock()
	m.served[p] += n
	m.mu.Unlock()
}

// countingResponse counts the body bytes written through out.
type countingResponse struct {
	http.ResponseWriter
	out   io.Writer
	count func(int)
}

func (c countingResponse) Write(p []byte) (int, error) {
	n, err := c.out.Write(p)
	c.count(n)
	return n, err
}

// slowWriter sends a body in small flushed chunks, a delay apart, as a far mirror does.
type slowWriter struct {
	w     http.ResponseWriter
	chunk int
	delay time.Duration
	ctx   context.Context
}

func (s *slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(s.chunk, len(p))
		k, err := s.w.Write(p[:c])
		n += k
		if err != nil {
			return n, err
		}
		s.w.(http.Flusher).Flush()
		p = p[c:]
		select {
		case <-s.ctx.Done():
			return n, s.ctx.Err()
		case <-time.After(s.delay):
		}
	}
	return n, nil
}

func (m *distroMirror) requestsFor(p string) []mirrorRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []mirrorRequest
	for _, r := range m.requests {
		if r.Path == p {
			out = append(out, r)
		}
	}
	return out
}

// cacheFiles lists what the cache holds besides the hash memo.
func cacheFiles(t *testing.T, home string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(home, "cache"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != "hashes.json" {
			names = append(names, e.Name())
		}
	}
	return names
}

func (h *harness) noVMCreated() {
	h.t.Helper()
	if len(h.fake.world.Volumes) != 0 || len(h.fake.world.Domains) != 0 {
		h.t.Errorf("created volumes %v, domains %v", h.fake.world.Volumes, h.fake.world.Domains)
	}
}

// Every name of the built-in table resolves to the distributor's image in
// its real place, checked against the distributor's checksum file: the base
// volume holds exactly the image's bytes.
func TestNamedImagesResolveToTheDistributorsImage(t *testing.T) {
	for _, f := range distroFixtures {
		t.Run(f.name, func(t *testing.T) {
			m := newDistroMirror(t)
			body := imageBody(f.name, 64<<10)
			m.publish(f, body, body)
			h := newHarness(t)
			if code := h.wait(h.up(h.upArgs("--image", f.name, "-d")...)); code != 0 {
				t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
			}
			base := "vmup/vmup-base-" + hexSHA256(body)[:16] + ".qcow2"
			if got := h.fake.world.Content[base]; !bytes.Equal(got, body) {
				t.Errorf("base volume %s holds %d bytes, not the image's %d (volumes %v)", base, len(got), len(body), h.fake.world.Volumes)
			}
			if len(m.requestsFor(f.sums)) != 1 || len(m.requestsFor(f.image)) != 1 {
				t.Errorf("requests %v; want the checksum file and the image once each", m.requests)
			}
			// A second VM of the same name uses the cached image: only the checksum file is fetched again.
			if code := h.wait(h.up("v2", "--image", f.name, "--domain-type", "qemu", "--network", "user", "--no-provision", "-d")); code != 0 {
				t.Fatalf("second up: exit %d\n%s", code, h.stderr)
			}
			if n := len(m.requestsFor(f.image)); n != 1 {
				t.Errorf("the image was downloaded %d times, want once", n)
			}
		})
	}
}

// A body that does not match the distributor's checksum is refused before
// anything is created (exit 2), and no byte of it stays in the cache.
func TestNamedImageCorruptBodyRefusedAndNotKept(t *testing.T) {
	for _, name := range []string{"debian-12", "ubuntu-24.04", "fedora-44"} {
		t.Run(name, func(t *testing.T) {
			f := fixture(name)
			m := newDistroMirror(t)
			body := imageBody(name, 64<<10)
			corrupt := slices.Clone(body)
			corrupt[len(corrupt)/2] ^= 1
			m.publish(f, corrupt, body)
			h := newHarness(t)
			if code := h.wait(h.up(h.upArgs("--image", name, "-d")...)); code != exitUsage {
				t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
			}
			_, sums := path.Split(f.sums)
			if s := h.stderr.String(); !strings.Contains(s, "vmup: error: ") || !strings.Contains(s, sums) {
				t.Errorf("the error does not name the checksum file %s:\n%s", sums, s)
			}
			if files := cacheFiles(t, h.env.Home); len(files) != 0 {
				t.Errorf("kept in the cache: %v", files)
			}
			h.noVMCreated()
		})
	}
}

// A checksum file that does not list the image stops the run before the
// image is fetched: nothing unverified is ever downloaded.
func TestNamedImageMissingFromChecksumFile(t *testing.T) {
	for _, name := range []string{"debian-13", "ubuntu-22.04", "fedora-44"} {
		t.Run(name, func(t *testing.T) {
			f := fixture(name)
			m := newDistroMirror(t)
			body := imageBody(name, 4096)
			m.publish(f, body, body)
			m.unlist(f)
			h := newHarness(t)
			if code := h.wait(h.up(h.upArgs("--image", name, "-d")...)); code != exitFailed {
				t.Fatalf("exit %d, want 1\n%s", code, h.stderr)
			}
			_, sums := path.Split(f.sums)
			if s := h.stderr.String(); !strings.Contains(s, "vmup: error: ") || !strings.Contains(s, sums) {
				t.Errorf("the error does not name the checksum file %s:\n%s", sums, s)
			}
			if r := m.requestsFor(f.image); len(r) != 0 {
				t.Errorf("the image was requested: %v", r)
			}
			if files := cacheFiles(t, h.env.Home); len(files) != 0 {
				t.Errorf("kept in the cache: %v", files)
			}
			h.noVMCreated()
		})
	}
}

// A connection dropped mid-body is resumed where it broke (Range), not
// started over, and what is cached is exactly the image.
func TestDownloadResumesAfterACut(t *testing.T) {
	f := fixture("debian-12")
	m := newDistroMirror(t)
	body := imageBody(f.name, 256<<10)
	m.publish(f, body, body)
	cut := 100 << 10
	m.cutAt[f.image] = cut
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("--image", f.name, "-d")...)); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	reqs := m.requestsFor(f.image)
	want := []mirrorRequest{{f.image, ""}, {f.image, fmt.Sprintf("bytes=%d-", cut)}}
	if !slices.Equal(reqs, want) {
		t.Errorf("image requests %v, want %v", reqs, want)
	}
	if n := m.served[f.image]; n != len(body) {
		t.Errorf("the mirror sent %d bytes of the image, want %d (each once)", n, len(body))
	}
	base := "vmup/vmup-base-" + hexSHA256(body)[:16] + ".qcow2"
	if got := h.fake.world.Content[base]; !bytes.Equal(got, body) {
		t.Errorf("base volume holds %d bytes, not the image", len(got))
	}
}

// A download cut short by Ctrl+C keeps its .part: the next run asks only for
// the rest, and a server whose file changed meanwhile (If-Range) sends it
// whole, so two versions are never spliced.
func TestInterruptedDownloadResumesInTheNextRun(t *testing.T) {
	for _, changed := range []bool{false, true} {
		t.Run(fmt.Sprintf("changed=%v", changed), func(t *testing.T) {
			m := newDistroMirror(t)
			body := imageBody("plain", 512<<10)
			m.files["/images/plain.qcow2"] = body
			m.chunk, m.delay = 16<<10, 20*time.Millisecond
			home := t.TempDir()
			url := m.srv.URL + "/images/plain.qcow2"
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := fetchImage(ctx, home, url, "")
				done <- err
			}()
			deadline := time.Now().Add(20 * time.Second)
			for m.servedOf("/images/plain.qcow2") < 64<<10 {
				if time.Now().After(deadline) {
					t.Fatal("the download did not start")
				}
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("err %v, want context.Canceled", err)
			}
			var part int64
			matches, _ := filepath.Glob(filepath.Join(home, "cache", "*.part"))
			if len(matches) == 1 {
				st, _ := os.Stat(matches[0])
				part = st.Size()
			}
			if part == 0 {
				t.Fatalf("no partial download kept in the cache: %v", cacheFiles(t, home))
			}

			m.mu.Lock()
			m.delay = 0
			if changed {
				body = imageBody("plain, rebuilt", len(body))
				m.files["/images/plain.qcow2"] = body
				m.modTime = m.modTime.Add(time.Hour)
			}
			m.mu.Unlock()
			got, err := fetchImage(context.Background(), home, url, "")
			if err != nil {
				t.Fatal(err)
			}
			reqs := m.requestsFor("/images/plain.qcow2")
			if r := reqs[len(reqs)-1].Range; r != fmt.Sprintf("bytes=%d-", part) {
				t.Errorf("the second run asked for %q, want the rest from byte %d", r, part)
			}
			if data, _ := os.ReadFile(got); !bytes.Equal(data, body) {
				t.Errorf("cached %d bytes that are not the server's current file", len(data))
			}
			if parts, _ := filepath.Glob(filepath.Join(home, "cache", "*.part*")); len(parts) != 0 {
				t.Errorf("left behind: %v", parts)
			}
		})
	}
}

func (m *distroMirror) servedOf(p string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.served[p]
}

// rawEvents keeps every JSON line of a run, with the fields jsonEvent may not name.
type rawEvents struct {
	mu    sync.Mutex
	lines []map[string]any
	buf   []byte
}

func (r *rawEvents) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, p...)
	for {
		i := bytes.IndexByte(r.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		var ev map[string]any
		if json.Unmarshal(r.buf[:i], &ev) == nil {
			r.lines = append(r.lines, ev)
		}
		r.buf = r.buf[i+1:]
	}
}

func (r *rawEvents) named(event string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, ev := range r.lines {
		if ev["event"] == event {
			out = append(out, ev)
		}
	}
	return out
}

// upRaw runs `vmup up` with its JSON events kept whole.
func (h *harness) upRaw(events io.Writer, args ...string) int {
	h.t.Helper()
	o, _, err := parseCommand("up", args)
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = newOutput(&lockedWriter{w: h.stderr}, events, "v1")
	done := make(chan int, 1)
	go func() { done <- runUp(env, o) }()
	return h.wait(done)
}

// A slow download reports its progress as JSON events, at most a few a
// second however many chunks arrive, each with bytes, total, rate and ETA.
func TestProgressEventsAreRateLimited(t *testing.T) {
	f := fixture("ubuntu-24.04")
	m := newDistroMirror(t)
	body := imageBody(f.name, 320<<10)
	m.publish(f, body, body)
	m.chunk, m.delay = 2<<10, 10*time.Millisecond // 160 chunks over about 1.6 s
	h := newHarness(t)
	events := &rawEvents{}
	start := time.Now()
	if code := h.upRaw(events, h.upArgs("--image", f.name, "-d")...); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	took := time.Since(start)
	progress := events.named("progress")
	if len(progress) < 2 {
		t.Fatalf("%d progress events in a download of %s, want several", len(progress), took)
	}
	const interval = 250 * time.Millisecond
	if max := int(took/interval) + 1; len(progress) > max {
		t.Errorf("%d progress events in %s: more than one per %s", len(progress), took, interval)
	}
	var last time.Time
	var lastBytes float64
	for _, ev := range progress {
		at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["time"]))
		if !last.IsZero() && at.Sub(last) < interval-20*time.Millisecond {
			t.Errorf("progress events %s apart, want at least %s", at.Sub(last), interval)
		}
		last = at
		b, _ := ev["bytes"].(float64)
		if b <= lastBytes || b > float64(len(body)) {
			t.Errorf("bytes %v after %v (of %d)", ev["bytes"], lastBytes, len(body))
		}
		lastBytes = b
		if ev["total_bytes"] != float64(len(body)) || ev["bytes_per_second"] == nil || ev["eta_seconds"] == nil ||
			ev["step"] != "1/6" || ev["phase"] != "preparing" {
			t.Errorf("progress event %v: want total_bytes %d, bytes_per_second, eta_seconds, step 1/6, phase preparing", ev, len(body))
		}
	}
}

// --image-sha256 wins over the distributor's checksum file: a pinned image is
// taken even when the published checksum disagrees, and refused when only
// the published one matches.
func TestImageSHA256OverridesPublishedChecksum(t *testing.T) {
	for _, name := range []string{"debian-12", "fedora-44"} {
		f := fixture(name)
		t.Run(name+"/pinned body, other published", func(t *testing.T) {
			m := newDistroMirror(t)
			body := imageBody(name, 32<<10)
			m.publish(f, body, []byte("what the distributor published"))
			h := newHarness(t)
			if code := h.wait(h.up(h.upArgs("--image", name, "--image-sha256", hexSHA256(body), "-d")...)); code != 0 {
				t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
			}
			if got := h.fake.world.Content["vmup/vmup-base-"+hexSHA256(body)[:16]+".qcow2"]; !bytes.Equal(got, body) {
				t.Errorf("base volume holds %d bytes, not the pinned image", len(got))
			}
		})
		t.Run(name+"/published body, other pinned", func(t *testing.T) {
			m := newDistroMirror(t)
			body := imageBody(name, 32<<10)
			m.publish(f, body, body)
			pin := hexSHA256([]byte("another image"))
			h := newHarness(t)
			if code := h.wait(h.up(h.upArgs("--image", name, "--image-sha256", pin, "-d")...)); code != exitUsage {
				t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
			}
			if !strings.Contains(h.stderr.String(), pin) {
				t.Errorf("the error does not name the pinned sha256:\n%s", h.stderr)
			}
			if files := cacheFiles(t, h.env.Home); len(files) != 0 {
				t.Errorf("kept in the cache: %v", files)
			}
			h.noVMCreated()
		})
	}
}

// A name that is no file and not in the table says where names come from.
func TestUnknownImageNameHints(t *testing.T) {
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("--image", "debian-99", "-d")...)); code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	if s := h.stderr.String(); !strings.Contains(s, "vmup: hint: ") || !strings.Contains(s, "`vmup images`") {
		t.Errorf("no hint naming `vmup images`:\n%s", s)
	}
}

// Offline, a name whose image was downloaded and verified before is used
// from the cache, with a warning that says so.
func TestNamedImageFromCacheWhenTheDistributorIsUnreachable(t *testing.T) {
	f := fixture("debian-12")
	m := newDistroMirror(t)
	body := imageBody(f.name, 16<<10)
	m.publish(f, body, body)
	h := newHarness(t)
	h.createDetachedWith("--image", f.name)
	m.srv.Close()

	h2 := newHarness(t)
	h2.env.Home = h.env.Home
	if code := h2.wait(h2.up("v2", "--image", f.name, "--domain-type", "qemu", "--network", "user", "--no-provision", "-d")); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h2.stderr)
	}
	if s := h2.stderr.String(); !strings.Contains(s, "vmup: warning: ") || !strings.Contains(s, "cached") {
		t.Errorf("no warning that the cached image is used:\n%s", s)
	}
	if got := h2.fake.world.Content["vmup/vmup-base-"+hexSHA256(body)[:16]+".qcow2"]; !bytes.Equal(got, body) {
		t.Errorf("base volume holds %d bytes, not the cached image", len(got))
	}
	// Pinned, the cached download with that sha256 needs no distributor at all.
	h3 := newHarness(t)
	h3.env.Home = h.env.Home
	if code := h3.wait(h3.up("v3", "--image", f.name, "--image-sha256", hexSHA256(body), "--domain-type", "qemu",
		"--network", "user", "--no-provision", "-d")); code != 0 {
		t.Fatalf("pinned: exit %d, want 0\n%s", code, h3.stderr)
	}
	if strings.Contains(h3.stderr.String(), "vmup: warning: ") {
		t.Errorf("pinned and cached, yet warned:\n%s", h3.stderr)
	}
}

func (h *harness) createDetachedWith(extra ...string) {
	h.t.Helper()
	if code := h.wait(h.up(h.upArgs(append(extra, "-d")...)...)); code != 0 {
		h.t.Fatalf("up: exit %d\n%s", code, h.stderr)
	}
}

// `vmup images` lists every name, what it resolves to and whether it is
// cached, as a table and as JSON image events.
func TestImagesListsNamesAndCached(t *testing.T) {
	f := fixture("ubuntu-24.04")
	m := newDistroMirror(t)
	body := imageBody(f.name, 16<<10)
	m.publish(f, body, body)
	h := newHarness(t)
	h.createDetachedWith("--image", f.name)

	run := func(env []string, args ...string) (string, int) {
		cmd := exec.Command(vmupBinary, args...)
		cmd.Env = append(os.Environ(), "VMUP_HOME="+h.env.Home)
		cmd.Env = append(cmd.Env, env...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Run()
		return out.String(), cmd.ProcessState.ExitCode()
	}
	out, code := run(nil, "images")
	if code != 0 {
		t.Fatalf("vmup images: exit %d\n%s", code, out)
	}
	for _, fx := range distroFixtures {
		line := lineOf(out, fx.name+" ")
		if line == "" {
			t.Errorf("vmup images does not list %s:\n%s", fx.name, out)
			continue
		}
		cached := fx.name == f.name
		if strings.Contains(line, "not cached") == cached {
			t.Errorf("%s: cached=%v, but its line says %q", fx.name, cached, line)
		}
	}
	if line := lineOf(out, "fedora-44 "); !strings.Contains(line, m.srv.URL+"/fedora/44/Cloud/x86_64/images/") {
		t.Errorf("fedora-44 does not resolve under the mirror: %q", line)
	}
	// Without the mirror, each name resolves to its distributor's own site.
	out, _ = run([]string{"VMUP_IMAGE_MIRROR="}, "images")
	for name, url := range map[string]string{
		"debian-12":    "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
		"ubuntu-24.04": "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img",
		"fedora-44":    "https://download.fedoraproject.org/pub/fedora/linux/releases/44/Cloud/x86_64/images/",
	} {
		if !strings.Contains(lineOf(out, name+" "), url) {
			t.Errorf("%s does not resolve to %s:\n%s", name, url, out)
		}
	}

	out, code = run(nil, "images", "--json")
	if code != 0 {
		t.Fatalf("vmup images --json: exit %d\n%s", code, out)
	}
	var names []string
	var last map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON event: %q", sc.Text())
		}
		last = ev
		if ev["event"] != "image" {
			continue
		}
		names = append(names, fmt.Sprint(ev["name"]))
		cached, _ := ev["cached"].([]any)
		if (len(cached) > 0) != (ev["name"] == f.name) || ev["url"] == nil || ev["checksum_url"] == nil {
			t.Errorf("image event %v", ev)
		}
	}
	if len(names) != len(distroFixtures) || last["event"] != "exit" || last["exit_code"] != float64(0) {
		t.Errorf("image events for %v, last event %v; want one per name, then exit 0", names, last)
	}
}

func lineOf(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// openPTY opens a pseudo-terminal pair: what vmup writes to the second is read from the first.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pts: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// On a terminal the download's line shows bytes, rate and ETA, rewritten in
// place, a few times a second at most.
func TestTTYProgressLine(t *testing.T) {
	f := fixture("debian-13")
	m := newDistroMirror(t)
	body := imageBody(f.name, 320<<10)
	m.publish(f, body, body)
	m.chunk, m.delay = 2<<10, 10*time.Millisecond
	master, tty := openPTY(t)
	r := newBinaryRunWith(t, nil, []string{"VMUP_IMAGE_MIRROR=" + m.srv.URL}, "", "--image", f.name, "-d")
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, tty
	var screen bytes.Buffer
	read := make(chan struct{})
	go func() {
		io.Copy(&screen, master) // ends with EIO once vmup closed the terminal
		close(read)
	}()
	start := time.Now()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	err := r.cmd.Wait()
	took := time.Since(start)
	tty.Close()
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal did not close")
	}
	if err != nil {
		t.Fatalf("vmup: %v\n%s", err, screen.String())
	}
	var lines []string
	for _, l := range strings.Split(screen.String(), "\r\x1b[K") {
		if strings.Contains(l, "ETA") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("no progress line with an ETA on the terminal:\n%q", screen.String())
	}
	for _, l := range lines {
		if !strings.Contains(l, "Preparing image") || !strings.Contains(l, "KiB/s") || !strings.Contains(l, "of 320.0 KiB") {
			t.Errorf("progress line %q lacks the step, bytes of the total or the rate", l)
		}
	}
	if max := int(took/(250*time.Millisecond)) + 2; len(lines) > max {
		t.Errorf("the progress line was drawn %d times in %s, more than a few a second", len(lines), took)
	}
}
