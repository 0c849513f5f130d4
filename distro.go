package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// distributor is a site that publishes cloud images, and the path its tree
// has under $VMUP_IMAGE_MIRROR (tests, and local mirrors laid out the same way).
type distributor struct{ prefix, base string }

var (
	debian = distributor{"debian", "https://cloud.debian.org/images/cloud/"}
	ubuntu = distributor{"ubuntu", "https://cloud-images.ubuntu.com/releases/"}
	fedora = distributor{"fedora", "https://download.fedoraproject.org/pub/fedora/linux/releases/"}
)

// distroImage is a name --image takes: the distributor's official x86_64
// cloud image in Dir, vouched for by the checksum file Sums beside it, itself
// signed as Signed says (nil: the distributor signs none). In File and Sums a
// "*" stands for a compose number (digits and dots): Sums is found in the
// directory's listing, File in the checksum file.
type distroImage struct {
	Name            string
	From            distributor
	Dir, File, Sums string
	Signed          *signer
}

// distroImages is every name --image knows: the one place to add a release.
// Debian publishes no signature of its cloud images' SHA512SUMS.
var distroImages = []distroImage{
	{"debian-12", debian, "bookworm/latest/", "debian-12-genericcloud-amd64.qcow2", "SHA512SUMS", nil},
	{"debian-13", debian, "trixie/latest/", "debian-13-genericcloud-amd64.qcow2", "SHA512SUMS", nil},
	{"ubuntu-22.04", ubuntu, "22.04/release/", "ubuntu-22.04-server-cloudimg-amd64.img", "SHA256SUMS", ubuntuSigner},
	{"ubuntu-24.04", ubuntu, "24.04/release/", "ubuntu-24.04-server-cloudimg-amd64.img", "SHA256SUMS", ubuntuSigner},
	{"ubuntu-26.04", ubuntu, "26.04/release/", "ubuntu-26.04-server-cloudimg-amd64.img", "SHA256SUMS", ubuntuSigner},
	{"fedora-44", fedora, "44/Cloud/x86_64/images/", "Fedora-Cloud-Base-Generic-44-*.x86_64.qcow2", "Fedora-Cloud-44-*-x86_64-CHECKSUM", fedora44Signer},
}

func distroImageNamed(name string) (distroImage, bool) {
	for _, im := range distroImages {
		if im.Name == name {
			return im, true
		}
	}
	return distroImage{}, false
}

// imageNames lists the names --image takes.
func imageNames() []string {
	var names []string
	for _, im := range distroImages {
		names = append(names, im.Name)
	}
	return names
}

// baseURL is the distributor's site, or its tree under $VMUP_IMAGE_MIRROR.
func (d distributor) baseURL() (string, error) {
	m := os.Getenv("VMUP_IMAGE_MIRROR")
	if m == "" {
		return d.base, nil
	}
	u, err := url.Parse(m)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", usagef("set it to an http or https URL such as http://127.0.0.1:8080, or unset it",
			"VMUP_IMAGE_MIRROR=%q is not an http(s) URL", m)
	}
	return strings.TrimRight(m, "/") + "/" + d.prefix + "/", nil
}

func (im distroImage) dirURL() (string, error) {
	base, err := im.From.baseURL()
	return base + im.Dir, err
}

// checksum is what a download must hash to: Alg's hex digest Hex, as What
// (the checksum file's URL, or --image-sha256) says.
type checksum struct{ Alg, Hex, What string }

func (c checksum) String() string {
	if c.Hex == "" {
		return ""
	}
	return c.Alg + ":" + c.Hex
}

// resolvedImage is a name made concrete: the image's URL and what vouches for it.
type resolvedImage struct {
	URL, File, SumsURL string
	Sum                checksum // empty when the checksum file was not read
}

// resolve finds the image's URL and, with needSum, its published checksum,
// from a checksum file whose signature verifies where the distributor signs
// it. A checksum file that does not list the image is an error: nothing
// unverified is ever downloaded under a name. Without needSum (a pin decides)
// the checksum file, if read for the image's name, is not verified.
func (im distroImage) resolve(ctx context.Context, run Runner, needSum bool) (resolvedImage, error) {
	dir, err := im.dirURL()
	if err != nil {
		return resolvedImage{}, err
	}
	sums := im.Sums
	if strings.Contains(sums, "*") {
		listing, err := fetchSmall(ctx, dir)
		if err != nil {
			return resolvedImage{}, err
		}
		if sums = newestMatch(composePattern(im.Sums).FindAllString(string(listing), -1), im.Sums); sums == "" {
			return resolvedImage{}, &hintedError{
				msg:  fmt.Sprintf("the listing of %s names no checksum file %s", dir, im.Sums),
				hint: fmt.Sprintf("check %s in a browser; meanwhile give the image's URL and --image-sha256", dir),
			}
		}
	}
	r := resolvedImage{File: im.File, SumsURL: dir + sums}
	if strings.Contains(im.File, "*") || needSum {
		text, err := fetchSmall(ctx, r.SumsURL)
		if err != nil {
			return resolvedImage{}, err
		}
		if needSum && im.Signed != nil {
			if text, err = verifySigned(ctx, run, im.Signed, r.SumsURL, text); err != nil {
				return resolvedImage{}, err
			}
		}
		listed := parseChecksums(text)
		var names []string
		for name := range listed {
			names = append(names, name)
		}
		if r.File = newestMatch(names, im.File); r.File == "" {
			return resolvedImage{}, &hintedError{
				msg:  fmt.Sprintf("%s does not list %s", r.SumsURL, im.File),
				hint: fmt.Sprintf("check %s in a browser; meanwhile give the image's URL and --image-sha256", dir),
			}
		}
		r.Sum = listed[r.File]
		r.Sum.What = r.SumsURL
	}
	r.URL = dir + r.File
	return r, nil
}

// composePattern turns a name with "*" into a regexp that finds it in text.
func composePattern(name string) *regexp.Regexp {
	parts := strings.Split(name, "*")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile(strings.Join(parts, `([0-9]+(?:\.[0-9]+)*)`))
}

// newestMatch picks, of names matching pattern, the one with the highest
// compose number ("1.10" after "1.9"); a pattern without "*" is itself.
func newestMatch(names []string, pattern string) string {
	if !strings.Contains(pattern, "*") {
		if slices.Contains(names, pattern) {
			return pattern
		}
		return ""
	}
	re := regexp.MustCompile("^" + composePattern(pattern).String() + "$")
	best, bestN := "", []int(nil)
	for _, name := range names {
		m := re.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		var n []int
		for f := range strings.SplitSeq(m[1], ".") {
			v, _ := strconv.Atoi(f)
			n = append(n, v)
		}
		if best == "" || slices.Compare(n, bestN) > 0 {
			best, bestN = name, n
		}
	}
	return best
}

var (
	// GNU coreutils: "HEX  NAME" or "HEX *NAME" (Debian, Ubuntu).
	gnuSumLine = lazyRE(`^([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](\S.*)$`)
	// BSD, as Fedora writes it: "SHA256 (NAME) = HEX".
	bsdSumLine = lazyRE(`^(SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]+)$`)
)

// parseChecksums reads a checksum file in GNU or BSD style, also inside a
// PGP clearsigned wrapper (for a pinned image's name only: a verified one is
// the text gpgv output), into the sums by file name. A name listed twice with different sums is left out.
func parseChecksums(text []byte) map[string]checksum {
	body := strings.ReplaceAll(string(text), "\r\n", "\n")
	if _, signed, ok := strings.Cut(body, "-----BEGIN PGP SIGNED MESSAGE-----\n"); ok {
		_, signed, _ = strings.Cut(signed, "\n\n") // the armor headers end at a blank line
		body, _, _ = strings.Cut(signed, "-----BEGIN PGP SIGNATURE-----")
	}
	sums := map[string]checksum{}
	bad := map[string]bool{}
	for line := range strings.SplitSeq(body, "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "- ") // clearsigning's dash escape
		var name string
		var c checksum
		if m := bsdSumLine.FindStringSubmatch(line); m != nil {
			name, c = m[2], checksum{Alg: strings.ToLower(m[1]), Hex: strings.ToLower(m[3])}
			if len(c.Hex) != map[string]int{"sha256": 64, "sha512": 128}[c.Alg] {
				continue
			}
		} else if m := gnuSumLine.FindStringSubmatch(line); m != nil {
			name, c = m[2], checksum{Alg: "sha256", Hex: strings.ToLower(m[1])}
			if len(c.Hex) == 128 {
				c.Alg = "sha512"
			}
		} else {
			continue
		}
		name = strings.TrimPrefix(name, "./")
		if old, ok := sums[name]; ok && old != c {
			bad[name] = true
		}
		sums[name] = c
	}
	for name := range bad {
		delete(sums, name)
	}
	return sums
}

// maxSmall bounds what is read of a listing or checksum file: a few KiB in
// practice; a server that sends more is not one of these.
const maxSmall = 4 << 20

// fetchError is a failed fetch of a small file; Status is 0 when the server
// was not reached at all.
type fetchError struct {
	URL    string
	Status int
	Err    error
}

func (e *fetchError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("cannot fetch %s: %s", e.URL, http.StatusText(e.Status))
	}
	err := e.Err
	if ue, ok := err.(*url.Error); ok {
		err = ue.Err // it names the URL again
	}
	return fmt.Sprintf("cannot fetch %s: %v", e.URL, err)
}
func (e *fetchError) Unwrap() error { return e.Err }

// unreachable says whether err is a server not reached (offline, DNS, refused).
func unreachable(err error) bool {
	var fe *fetchError
	return errors.As(err, &fe) && fe.Status == 0 && !errors.Is(err, context.Canceled)
}

// smallTimeout bounds the fetch of a listing or checksum file: a server that
// hangs counts as one not reached.
const smallTimeout = time.Minute

// fetchSmall reads a listing or checksum file whole.
func fetchSmall(ctx context.Context, u string) ([]byte, error) {
	tctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(tctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &fetchError{URL: u, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &fetchError{URL: u, Status: resp.StatusCode}
	}
	data, err := io.ReadAll(io.LimitReader(ctxReader{tctx, resp.Body}, maxSmall+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &fetchError{URL: u, Err: err}
	}
	if len(data) > maxSmall {
		return nil, fmt.Errorf("%s is larger than %d MiB: not a listing or checksum file", u, maxSmall>>20)
	}
	return data, nil
}

// cachedImage is a verified download of a name in the cache.
type cachedImage struct {
	Path  string    `json:"path"`
	Bytes int64     `json:"bytes"`
	Time  time.Time `json:"time"`
}

// cachedOf lists the cached downloads of a name, newest first. They are
// named NAME@ALG-HEX16-FILE: the digest they were verified against.
func cachedOf(home string, im distroImage) []cachedImage {
	matches, _ := filepath.Glob(filepath.Join(home, "cache", im.Name+"@*"))
	var out []cachedImage
	for _, p := range matches {
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() || strings.HasSuffix(p, ".part") || strings.HasSuffix(p, ".part.json") {
			continue
		}
		out = append(out, cachedImage{Path: p, Bytes: st.Size(), Time: st.ModTime()})
	}
	slices.SortFunc(out, func(a, b cachedImage) int { return b.Time.Compare(a.Time) })
	return out
}

// fetchNamed returns a local, verified copy of a named image: the cached one
// if the distributor's checksum file still vouches for it, else a fresh
// download checked against that file. A pin (--image-sha256) wins over the
// checksum file. When the distributor cannot be reached, the newest cached
// copy is used, with a warning.
func fetchNamed(ctx context.Context, out *Output, run Runner, home string, im distroImage, pin string) (string, error) {
	if pin != "" {
		for _, c := range cachedOf(home, im) {
			// prepare hashes the file again, not from the memo, before it is used.
			if sum, err := hashFile(ctx, home, c.Path, true); err == nil && strings.EqualFold(sum, pin) {
				return c.Path, nil
			}
		}
	}
	r, err := im.resolve(ctx, run, pin == "")
	if err != nil {
		if cached := cachedOf(home, im); pin == "" && unreachable(err) && len(cached) > 0 {
			out.Warn("%v; using %s as cached on %s (verified then)", err, im.Name, cached[0].Time.Format("2006-01-02 15:04"))
			return cached[0].Path, nil
		}
		return "", err
	}
	cache := filepath.Join(home, "cache")
	if err := ensureDir(cache); err != nil {
		return "", err
	}
	want := r.Sum
	if pin != "" {
		want = checksum{Alg: "sha256", Hex: strings.ToLower(pin), What: "--image-sha256"}
	}
	dest := filepath.Join(cache, fmt.Sprintf("%s@%s-%s-%s", im.Name, want.Alg, want.Hex[:16], r.File))
	return fetchURL(ctx, out, home, r.URL, dest, want)
}

// runImages lists the image names, what each resolves to, and what is cached.
func runImages(env Env, o *Options) int {
	out := env.Out
	if o.Name != "" {
		return reportError(out, usagef("run `vmup images` alone", "vmup images takes no arguments"))
	}
	if !o.JSON {
		fmt.Printf("%-14s %-28s %s\n", "NAME", "CACHED", "IMAGE (checked against the checksum file beside it)")
	}
	for _, im := range distroImages {
		dir, err := im.dirURL()
		if err != nil {
			return reportError(out, err)
		}
		cached := cachedOf(env.Home, im)
		if o.JSON {
			out.ImageEvent(jsonEvent{Event: "image", Name: im.Name, URL: dir + im.File, ChecksumURL: dir + im.Sums,
				Cached: cached, Message: im.Name + " -> " + dir + im.File})
			continue
		}
		state := "not cached"
		if len(cached) > 0 {
			state = fmt.Sprintf("%s, %s", humanBytes(cached[0].Bytes), cached[0].Time.Format("2006-01-02 15:04"))
		}
		fmt.Printf("%-14s %-28s %s\n", im.Name, state, dir+im.File)
	}
	return listTemplatesCmd(env, o)
}
