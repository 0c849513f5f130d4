package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"net/http"
	"net/http/httptest"
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

// testKey is an OpenPGP key made for the tests in testGPG's GNUPGHOME.
type testKey struct {
	FPR string
	Pub []byte // gpg --export: a binary keyring holding this key alone
}

var gpgOnce struct {
	sync.Once
	home        string
	main, other *testKey
	err         string
}

// testGPG makes two signing keys once per test binary, in a GNUPGHOME that
// stopTestGPG removes; without gpg and gpgv the test is skipped.
func testGPG(t *testing.T) (main, other *testKey) {
	t.Helper()
	for _, p := range []string{"gpg", "gpgv"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is not installed: the checksum files' signatures cannot be made or checked (apt install gpg gpgv)", p)
		}
	}
	gpgOnce.Do(func() {
		home, err := os.MkdirTemp("", "vmup-gpg-")
		if err != nil {
			gpgOnce.err = err.Error()
			return
		}
		gpgOnce.home = home
		gen := func(uid string) *testKey {
			if out, err := gpgCmd("--quick-gen-key", uid, "ed25519", "sign", "never").CombinedOutput(); err != nil {
				gpgOnce.err = fmt.Sprintf("gpg --quick-gen-key: %v\n%s", err, out)
				return nil
			}
			out, _ := gpgCmd("--with-colons", "--list-keys", uid).Output()
			var fpr string
			for _, l := range strings.Split(string(out), "\n") {
				if f := strings.Split(l, ":"); f[0] == "fpr" && fpr == "" {
					fpr = f[9]
				}
			}
			pub, err := gpgCmd("--export", fpr).Output()
			if err != nil || fpr == "" || len(pub) == 0 {
				gpgOnce.err = fmt.Sprintf("exporting %s: %v", uid, err)
				return nil
			}
			return &testKey{FPR: fpr, Pub: pub}
		}
		if gpgOnce.main = gen("vmup test <test@vmup.invalid>"); gpgOnce.main != nil {
			gpgOnce.other = gen("vmup other <other@vmup.invalid>")
		}
	})
	if gpgOnce.err != "" {
		t.Fatal(gpgOnce.err)
	}
	return gpgOnce.main, gpgOnce.other
}

func gpgCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("gpg", append([]string{"--homedir", gpgOnce.home, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+gpgOnce.home)
	return cmd
}

// stopTestGPG ends the gpg-agent testGPG started and removes its home.
func stopTestGPG() {
	if gpgOnce.home != "" {
		exec.Command("gpgconf", "--homedir", gpgOnce.home, "--kill", "gpg-agent").Run()
		os.RemoveAll(gpgOnce.home)
	}
}

// gpgSign signs text with k: detached and armored, or clearsigned.
func gpgSign(t *testing.T, k *testKey, text string, clear bool) []byte {
	t.Helper()
	mode := "--detach-sign"
	if clear {
		mode = "--clearsign"
	}
	cmd := gpgCmd("--local-user", k.FPR, "--armor", mode, "--output", "-")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpg %s: %v", mode, err)
	}
	return out
}

// useTestSigners pins, for the test's duration, every signed name of the
// table to keyring and fpr in place of the distributor's key.
func useTestSigners(t *testing.T, keyring []byte, fpr string) {
	saved := distroImages
	t.Cleanup(func() { distroImages = saved })
	distroImages = slices.Clone(saved)
	for i, im := range distroImages {
		if im.Signed != nil {
			distroImages[i].Signed = &signer{Detached: im.Signed.Detached, Key: keyring, FPR: fpr}
		}
	}
}

// putSums serves a fixture's checksum file as its distributor does: Ubuntu's
// with SHA256SUMS.gpg beside it, Fedora's clearsigned, Debian's unsigned.
// Called with m.mu held.
func (m *distroMirror) putSums(f distroFixture, text string) {
	m.plain[f.sums] = text
	dir, _ := path.Split(f.sums)
	switch {
	case strings.HasPrefix(f.sums, "/ubuntu/"):
		m.files[f.sums] = []byte(text)
		m.files[dir+"SHA256SUMS.gpg"] = gpgSign(m.t, m.signer(), text, false)
	case strings.HasPrefix(f.sums, "/fedora/"):
		m.files[f.sums] = gpgSign(m.t, m.signer(), text, true)
	default:
		m.files[f.sums] = []byte(text)
	}
}

// signer is the key that signs the mirror's checksum files; the first call
// pins the test key in vmup's table.
func (m *distroMirror) signer() *testKey {
	if m.signKey == nil {
		main, _ := testGPG(m.t)
		useTestSigners(m.t, main.Pub, main.FPR)
		m.signKey = main
	}
	return m.signKey
}

// Issue 14 item 18: a checksum file whose signature is bad, missing, or made
// by a key other than the pinned one stops the run (exit 2, a hint) before
// the image is requested: nothing is downloaded or created.
func TestNamedImageChecksumSignatureFaultsRefusedBeforeDownload(t *testing.T) {
	faults := map[string]func(m *distroMirror, f distroFixture, body []byte){
		// The image and its checksum file replaced together; the signature stays.
		"bad signature": func(m *distroMirror, f distroFixture, body []byte) {
			evil := append(slices.Clone(body), "evil"...)
			m.mu.Lock()
			defer m.mu.Unlock()
			signed := string(m.files[f.sums])
			m.files[f.image] = evil
			m.files[f.sums] = []byte(strings.Replace(signed, hexSHA256(body), hexSHA256(evil), 1))
		},
		"missing signature": func(m *distroMirror, f distroFixture, body []byte) {
			m.mu.Lock()
			defer m.mu.Unlock()
			dir, _ := path.Split(f.sums)
			delete(m.files, dir+"SHA256SUMS.gpg")
			m.files[f.sums] = []byte(m.plain[f.sums]) // Fedora's, unsigned
		},
		"another key": func(m *distroMirror, f distroFixture, body []byte) {
			_, other := testGPG(m.t)
			m.signKey = other
			m.publish(f, body, body)
		},
		// gpgv accepts any key of its keyring: the fingerprint is checked too.
		"another key of the keyring": func(m *distroMirror, f distroFixture, body []byte) {
			main, other := testGPG(m.t)
			m.signKey = other
			m.publish(f, body, body)
			useTestSigners(m.t, append(slices.Clone(main.Pub), other.Pub...), main.FPR)
		},
	}
	for _, name := range []string{"ubuntu-24.04", "fedora-44"} {
		for fault, apply := range faults {
			t.Run(name+"/"+fault, func(t *testing.T) {
				f := fixture(name)
				m := newDistroMirror(t)
				body := imageBody(name, 16<<10)
				m.publish(f, body, body)
				apply(m, f, body)
				h := newHarness(t)
				if code := h.wait(h.up(h.upArgs("--image", name, "-d")...)); code != exitUsage {
					t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
				}
				_, sums := path.Split(f.sums)
				if s := h.stderr.String(); !strings.Contains(lineOf(s, "vmup: error: "), sums) || lineOf(s, "vmup: hint: ") == "" {
					t.Errorf("no error naming %s with a hint:\n%s", sums, s)
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
}

// A good signature: the image is used, and the signature was checked before
// the image was requested.
func TestNamedImageSignatureCheckedBeforeTheImage(t *testing.T) {
	f := fixture("ubuntu-24.04")
	m := newDistroMirror(t)
	body := imageBody(f.name, 16<<10)
	m.publish(f, body, body)
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("--image", f.name, "-d")...)); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	var paths []string
	for _, r := range m.requests {
		paths = append(paths, r.Path)
	}
	dir, _ := path.Split(f.sums)
	if want := []string{f.sums, dir + "SHA256SUMS.gpg", f.image}; !slices.Equal(paths, want) {
		t.Errorf("requests %v, want %v", paths, want)
	}
	if got := h.fake.world.Content["vmup/vmup-base-"+hexSHA256(body)[:16]+".qcow2"]; !bytes.Equal(got, body) {
		t.Errorf("base volume holds %d bytes, not the image", len(got))
	}
}

// Fedora's CHECKSUM is clearsigned: only the signed text counts. A newer
// compose listed outside the signature is never fetched.
func TestFedoraUsesOnlyTheSignedTextOfItsChecksum(t *testing.T) {
	f := fixture("fedora-44")
	m := newDistroMirror(t)
	body := imageBody(f.name, 16<<10)
	m.publish(f, body, body)
	evil := []byte("an image nobody signed")
	dir, _ := path.Split(f.image)
	evilFile := "Fedora-Cloud-Base-Generic-44-1.9.x86_64.qcow2"
	m.mu.Lock()
	m.files[dir+evilFile] = evil
	m.files[f.sums] = append([]byte(fmt.Sprintf("SHA256 (%s) = %s\n", evilFile, hexSHA256(evil))), m.files[f.sums]...)
	m.mu.Unlock()
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("--image", f.name, "-d")...)); code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
	}
	if r := m.requestsFor(dir + evilFile); len(r) != 0 {
		t.Errorf("the image listed outside the signature was requested: %v", r)
	}
	if got := h.fake.world.Content["vmup/vmup-base-"+hexSHA256(body)[:16]+".qcow2"]; !bytes.Equal(got, body) {
		t.Errorf("base volume holds %d bytes, not the signed image", len(got))
	}
}

// --image-sha256 stays the way to pin an image by hand: it needs no signature.
func TestPinnedNameNeedsNoSignature(t *testing.T) {
	for _, name := range []string{"ubuntu-24.04", "fedora-44"} {
		t.Run(name, func(t *testing.T) {
			f := fixture(name)
			m := newDistroMirror(t)
			body := imageBody(name, 16<<10)
			m.publish(f, body, body)
			m.mu.Lock()
			dir, _ := path.Split(f.sums)
			delete(m.files, dir+"SHA256SUMS.gpg")
			m.files[f.sums] = []byte(m.plain[f.sums])
			m.mu.Unlock()
			h := newHarness(t)
			if code := h.wait(h.up(h.upArgs("--image", name, "--image-sha256", hexSHA256(body), "-d")...)); code != 0 {
				t.Fatalf("exit %d, want 0\n%s", code, h.stderr)
			}
		})
	}
}

// Without gpgv a signed name cannot be checked: exit 1 (the environment),
// saying what to install, before the image is requested.
func TestNamedImageWithoutGpgvSaysInstallIt(t *testing.T) {
	f := fixture("ubuntu-24.04")
	m := newDistroMirror(t)
	body := imageBody(f.name, 4096)
	m.publish(f, body, body)
	t.Setenv("PATH", t.TempDir())
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("--image", f.name, "-d")...)); code != exitFailed {
		t.Fatalf("exit %d, want 1\n%s", code, h.stderr)
	}
	if s := h.stderr.String(); !strings.Contains(lineOf(s, "vmup: error: "), "gpgv") || !strings.Contains(lineOf(s, "vmup: hint: "), "install") {
		t.Errorf("no error naming gpgv with a hint to install it:\n%s", s)
	}
	if r := m.requestsFor(f.image); len(r) != 0 {
		t.Errorf("the image was requested: %v", r)
	}
	h.noVMCreated()
}
