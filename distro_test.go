package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The three distributors' checksum files, as they write them, give the sum
// of exactly the named file; lines that are not sums (comments, the PGP
// armor and signature) are skipped, and a name listed twice with different
// sums is not trusted at all.
func TestParseChecksumsOfEachDistributor(t *testing.T) {
	a64, b64 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	a128 := strings.Repeat("c", 128)
	text := "-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\n" +
		"# Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2: 583729152 bytes\r\n" +
		"SHA256 (Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2) = " + strings.ToUpper(a64) + "\r\n" +
		"- -----not a sum, dash-escaped\r\n" +
		"SHA256 (short.qcow2) = abcd\r\n" +
		"-----BEGIN PGP SIGNATURE-----\r\n\r\nSHA256 (signature.qcow2) = " + a64 + "\r\n-----END PGP SIGNATURE-----\r\n"
	got := parseChecksums([]byte(text))
	want := map[string]checksum{"Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2": {Alg: "sha256", Hex: a64}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Fedora CHECKSUM (-want +got):\n%s", diff)
	}

	text = a128 + "  debian-12-genericcloud-amd64.qcow2\n" + b64 + " *ubuntu-24.04-server-cloudimg-amd64.img\n" +
		a64 + "  ./dup.img\n" + b64 + "  dup.img\n" + a64 + "  same.img\n" + a64 + "  same.img\n"
	got = parseChecksums([]byte(text))
	want = map[string]checksum{
		"debian-12-genericcloud-amd64.qcow2":     {Alg: "sha512", Hex: a128},
		"ubuntu-24.04-server-cloudimg-amd64.img": {Alg: "sha256", Hex: b64},
		"same.img":                               {Alg: "sha256", Hex: a64},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GNU sums (-want +got):\n%s", diff)
	}
}

// Of several composes the highest is taken, compared as numbers.
func TestNewestCompose(t *testing.T) {
	names := []string{"Fedora-Cloud-44-1.9-x86_64-CHECKSUM", "Fedora-Cloud-44-1.10-x86_64-CHECKSUM",
		"Fedora-Cloud-44-1.2-aarch64-CHECKSUM", "Fedora-Cloud-440-2.0-x86_64-CHECKSUM", "Fedora-Cloud-44--x86_64-CHECKSUM"}
	if got := newestMatch(names, "Fedora-Cloud-44-*-x86_64-CHECKSUM"); got != "Fedora-Cloud-44-1.10-x86_64-CHECKSUM" {
		t.Errorf("newest = %q", got)
	}
	if got := newestMatch(names, "Fedora-Cloud-45-*-x86_64-CHECKSUM"); got != "" {
		t.Errorf("a release not listed matched %q", got)
	}
}

// A mirror that is no http(s) URL is a usage error before anything runs.
func TestBadImageMirrorRefused(t *testing.T) {
	for _, m := range []string{"ftp://mirror", "127.0.0.1:8080", "http://"} {
		t.Setenv("VMUP_IMAGE_MIRROR", m)
		h := newHarness(t)
		if code := h.wait(h.up(h.upArgs("--image", "debian-12", "-d")...)); code != exitUsage {
			t.Fatalf("%s: exit %d, want 2\n%s", m, code, h.stderr)
		}
		if !strings.Contains(h.stderr.String(), "VMUP_IMAGE_MIRROR") || len(h.calls()) != 0 {
			t.Errorf("%s: calls %v\n%s", m, h.calls(), h.stderr)
		}
	}
}

// A server that stops sending without closing the connection is broken off
// after downloadStall and the download resumed where it stopped.
func TestStalledDownloadIsResumed(t *testing.T) {
	old := downloadStall
	downloadStall = 300 * time.Millisecond
	defer func() { downloadStall = old }()
	body := imageBody("stalled", 128<<10)
	var ranges []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ranges = append(ranges, r.Header.Get("Range"))
		w.Header().Set("ETag", `"v1"`)
		if len(ranges) == 1 {
			w.Header().Set("Content-Length", "131072")
			w.Write(body[:50000])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // silent, connection open
			return
		}
		http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(body))
	}))
	defer srv.Close()
	home := t.TempDir()
	p, err := fetchImage(context.Background(), home, srv.URL+"/img.qcow2", hexSHA256(body))
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(p); !bytes.Equal(data, body) {
		t.Error("cached file is not the image")
	}
	if diff := cmp.Diff([]string{"", "bytes=50000-"}, ranges); diff != "" {
		t.Errorf("requests' Range (-want +got):\n%s", diff)
	}
	if parts, _ := filepath.Glob(filepath.Join(home, "cache", "*.part*")); len(parts) != 0 {
		t.Errorf("left behind: %v", parts)
	}
}
