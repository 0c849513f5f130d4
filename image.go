package main

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// BaseImage is a local image file with its content hash and format.
type BaseImage struct {
	Path, SHA256, Format string
	VirtualSize          int64
}

// fetchImage is resolveImage without progress output.
func fetchImage(ctx context.Context, home, image, wantSHA string) (string, error) {
	return resolveImage(ctx, nil, execRunner{}, home, image, wantSHA)
}

// resolveImage returns a local path for --image: a file as it is; a name of
// the built-in table, or a URL, downloaded once into the cache.
func resolveImage(ctx context.Context, out *Output, run Runner, home, image, wantSHA string) (string, error) {
	if im, ok := distroImageNamed(image); ok {
		return fetchNamed(ctx, out, run, home, im, wantSHA)
	}
	if !isURL(image) {
		return image, nil
	}
	cache := filepath.Join(home, "cache")
	if err := ensureDir(cache); err != nil {
		return "", err
	}
	var want checksum
	if wantSHA != "" {
		want = checksum{Alg: "sha256", Hex: strings.ToLower(wantSHA), What: "--image-sha256"}
	}
	return fetchURL(ctx, out, home, image, filepath.Join(cache, urlKey(image)+"-"+urlBase(image)), want)
}

func urlKey(u string) string {
	sum := sha256.Sum256([]byte(u))
	return hex.EncodeToString(sum[:8])
}

func urlBase(u string) string { return filepath.Base(strings.SplitN(u, "?", 2)[0]) }

// partName is the file a download of u is written to until it is verified.
func partName(u string) string { return urlKey(u) + "-" + urlBase(u) + ".part" }

// fetchURL downloads u into dest once, verified against want. One download
// per URL runs at a time: its .part is written only under the URL's lock, and
// a .part left by an interrupted run is resumed.
func fetchURL(ctx context.Context, out *Output, home, u, dest string, want checksum) (string, error) {
	lock, err := waitLock(ctx, filepath.Join(home, "locks", "download-"+urlKey(u)+".lock"), "up")
	if errors.Is(err, errLocked) {
		return "", ctx.Err()
	}
	if err != nil {
		return "", err
	}
	defer lock.Unlock()
	stale := ""
	if _, err := os.Stat(dest); err == nil {
		// A pin decides: a cached copy of the URL that differs is fetched anew,
		// and kept until the new download verifies.
		if want.What != "--image-sha256" {
			return dest, nil
		}
		sum, err := hashFile(ctx, home, dest, true)
		if err != nil {
			return "", err
		}
		if sum == want.Hex {
			return dest, nil
		}
		stale = sum
	}
	part := filepath.Join(filepath.Dir(dest), partName(u))
	start := time.Now()
	err = download(ctx, out, u, part, want)
	if out != nil {
		out.EndProgress()
	}
	if err != nil {
		return "", err
	}
	// The bytes on disk are checked, not the stream: they are what is used.
	sum, err := verifyDownload(ctx, u, part, want)
	var ue *usageError
	if stale != "" && errors.As(err, &ue) {
		ue.hint = fmt.Sprintf("check --image-sha256 %s: the server's file has sha256 %s and the cached copy %s (kept)",
			want.Hex, sum, stale)
	}
	if err != nil {
		return "", err
	}
	if err := replaceHeld(ctx, out, part, dest); err != nil {
		return "", err
	}
	os.Remove(part + ".json")
	rememberHash(home, dest, sum)
	if out != nil {
		st, _ := os.Stat(dest)
		verified := ""
		if want.Hex != "" {
			verified = fmt.Sprintf("; its %s matches %s", want.Alg, want.What)
		}
		out.Say("downloaded", "Downloaded %s (%s in %s)%s", u, humanBytes(st.Size()), time.Since(start).Round(time.Second/10), verified)
	}
	return dest, nil
}

// verifyDownload hashes the finished part: its sha256 (for the memo, and
// the base volume's name) and want's algorithm. A mismatch deletes it (and
// returns a pin's mismatching sha256 with the error).
func verifyDownload(ctx context.Context, u, part string, want checksum) (string, error) {
	f, err := os.Open(part)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h256 := sha256.New()
	h, w := h256, io.Writer(h256)
	if want.Alg == "sha512" {
		h = sha512.New()
		w = io.MultiWriter(h256, h)
	}
	if _, err := io.Copy(w, ctxReader{ctx, f}); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); want.Hex != "" && got != want.Hex {
		os.Remove(part)
		os.Remove(part + ".json")
		if want.What == "--image-sha256" {
			return got, &usageError{msg: fmt.Sprintf("%s has sha256 %s, not %s", u, got, want.Hex),
				hint: "check --image-sha256; the image behind the URL may have changed"}
		}
		return "", &usageError{msg: fmt.Sprintf("%s has %s %s, but %s lists %s", u, want.Alg, got, want.What, want.Hex),
			hint: "run the same command again: a download damaged on its way, or made while the image was replaced, is fetched anew (nothing was kept)"}
	}
	return hex.EncodeToString(h256.Sum(nil)), nil
}

// partRecord, beside a .part, says what it is a part of: a later run resumes
// it only for the same URL and checksum, and with a validator (If-Range) or
// a checksum to catch a file that changed on the server meanwhile.
type partRecord struct {
	URL       string `json:"url"`
	Validator string `json:"validator,omitempty"`
	Want      string `json:"want,omitempty"`
}

var (
	errStalled = errors.New("no data for a minute")
	errRestart = errors.New("the server cannot resume the download; starting it over")
)

// downloadStall is how long a download may receive nothing before it is
// broken off and resumed.
var downloadStall = time.Minute

// download fetches u into part, resuming what it holds. A broken connection
// is resumed at once while it made progress, and after a growing pause while
// it made none, up to a few times.
func download(ctx context.Context, out *Output, u, part string, want checksum) error {
	p := &progress{out: out, file: urlBase(u)}
	for failures := 0; ; {
		got, err := downloadOnce(ctx, u, part, want, p)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fe *fetchError
		if err == nil || !errors.Is(err, errRestart) && !(errors.As(err, &fe) && fe.Status == 0) {
			return err
		}
		if got > 0 || errors.Is(err, errRestart) {
			failures = 0 // a restart leaves no part: it cannot repeat
			continue
		}
		if failures++; failures == 4 {
			return &hintedError{msg: err.Error(), hint: "run the same command again once the server is reachable: the download resumes where it stopped"}
		}
		if err := sleepCtx(ctx, time.Duration(failures)*time.Second); err != nil {
			return err
		}
	}
}

// downloadOnce is one request: the rest of part if the server can send it,
// else the whole file. It returns the bytes it received.
func downloadOnce(ctx context.Context, u, part string, want checksum, p *progress) (int64, error) {
	var rec partRecord
	if data, err := os.ReadFile(part + ".json"); err == nil {
		json.Unmarshal(data, &rec)
	}
	var offset int64
	if st, err := os.Stat(part); err == nil && rec.URL == u && rec.Want == want.String() && (rec.Validator != "" || want.Hex != "") {
		offset = st.Size()
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(actx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	// The bytes as the server stores them: what Range counts and checksums cover.
	req.Header.Set("Accept-Encoding", "identity")
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
		if rec.Validator != "" {
			req.Header.Set("If-Range", rec.Validator)
		}
	}
	stall := time.AfterFunc(downloadStall, func() { cancel(errStalled) })
	defer stall.Stop()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, &fetchError{URL: u, Err: stalled(actx, err)}
	}
	defer resp.Body.Close()
	total, flags := int64(-1), os.O_WRONLY|os.O_CREATE
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		start, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			removePart(part)
			return 0, errRestart
		}
		total, flags = size, flags|os.O_APPEND
	case resp.StatusCode == http.StatusOK:
		offset, total, flags = 0, resp.ContentLength, flags|os.O_TRUNC
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		if _, size, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && size == offset {
			return 0, nil // the part was complete
		}
		removePart(part)
		return 0, errRestart
	default:
		return 0, &fetchError{URL: u, Status: resp.StatusCode}
	}
	if offset == 0 {
		// Recorded before the first byte: a part without its record is never resumed.
		data, _ := json.Marshal(partRecord{URL: u, Validator: validator(resp), Want: want.String()})
		if err := writeFileAtomic(part+".json", data, 0o600); err != nil {
			return 0, err
		}
	}
	f, err := os.OpenFile(part, flags, 0o600)
	if err != nil {
		return 0, err
	}
	p.begin(offset, total)
	buf := make([]byte, 256<<10)
	var got int64
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			stall.Reset(downloadStall)
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return got, err
			}
			got += int64(n)
			p.update(offset + got)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.Close()
			return got, &fetchError{URL: u, Err: stalled(actx, rerr)}
		}
	}
	if err := f.Close(); err != nil {
		return got, err
	}
	if total >= 0 && offset+got != total {
		return got, &fetchError{URL: u, Err: io.ErrUnexpectedEOF}
	}
	return got, nil
}

func stalled(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return errStalled
	}
	return err
}

func removePart(part string) {
	os.Remove(part)
	os.Remove(part + ".json")
}

// validator is what If-Range can name to get the rest of this very file:
// a strong ETag, else its Last-Modified date.
func validator(resp *http.Response) string {
	if etag := resp.Header.Get("ETag"); etag != "" && !strings.HasPrefix(etag, "W/") {
		return etag
	}
	return resp.Header.Get("Last-Modified")
}

// parseContentRange reads "bytes START-END/SIZE" (SIZE -1 if "*"), or "bytes */SIZE".
func parseContentRange(s string) (start, size int64, ok bool) {
	rng, total, found := strings.Cut(strings.TrimPrefix(s, "bytes "), "/")
	if !found || !strings.HasPrefix(s, "bytes ") {
		return 0, 0, false
	}
	size = -1
	if total != "*" {
		n, err := strconv.ParseInt(total, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		size = n
	}
	if rng == "*" {
		return 0, size, true
	}
	first, _, found := strings.Cut(rng, "-")
	n, err := strconv.ParseInt(first, 10, 64)
	return n, size, found && err == nil
}

// progressInterval bounds how often a download's progress is shown: a few
// times a second on a terminal and in JSON, however fast chunks arrive.
const progressInterval = 250 * time.Millisecond

// progress measures one download for Output.Progress.
type progress struct {
	out               *Output
	file              string
	start, last       time.Time
	from, done, total int64
}

// begin starts an attempt at offset; one that starts over restarts the clock.
func (p *progress) begin(offset, total int64) {
	if p.start.IsZero() || offset < p.done {
		p.start, p.from = time.Now(), offset
		if p.last.IsZero() {
			p.last = p.start
		}
	}
	p.done, p.total = offset, total
}

func (p *progress) update(done int64) {
	p.done = done
	now := time.Now()
	if p.out == nil || now.Sub(p.last) < progressInterval {
		return
	}
	p.last = now
	rate := float64(done-p.from) / now.Sub(p.start).Seconds()
	eta := time.Duration(-1)
	if p.total > 0 && rate > 0 {
		eta = time.Duration(float64(p.total-done) / rate * float64(time.Second))
	}
	p.out.Progress(p.file, done, p.total, int64(rate), eta)
}

// humanBytes writes n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

// ctxReader ends a long read (hashing, a download, an upload) once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashPath reads the file through and returns its sha256.
func hashPath(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashFile returns the file's sha256, remembered by path, size and mtime so a
// re-up does not read a large image again; with useMemo false the file is read
// whatever the memo says. It stops when ctx ends.
func hashFile(ctx context.Context, home, path string, useMemo bool) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	memo := filepath.Join(home, "cache", "hashes.json")
	key := fmt.Sprintf("%s\x00%d\x00%d", abs, st.Size(), st.ModTime().UnixNano())
	known := map[string]string{}
	if data, err := os.ReadFile(memo); err == nil {
		json.Unmarshal(data, &known)
	}
	if h, ok := known[key]; ok && useMemo {
		return h, nil
	}
	sum, err := hashPath(ctx, abs)
	if err != nil {
		return "", err
	}
	rememberHash(home, abs, sum)
	return sum, nil
}

// rememberHash records path's sha256 in the memo hashFile reads.
func rememberHash(home, path, sum string) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return
	}
	st, err := os.Stat(abs)
	if err != nil {
		return
	}
	memo := filepath.Join(home, "cache", "hashes.json")
	known := map[string]string{}
	if data, err := os.ReadFile(memo); err == nil {
		json.Unmarshal(data, &known)
	}
	known[fmt.Sprintf("%s\x00%d\x00%d", abs, st.Size(), st.ModTime().UnixNano())] = sum
	if ensureDir(filepath.Dir(memo)) == nil {
		if data, err := json.Marshal(known); err == nil {
			writeFileAtomic(memo, data, 0o600)
		}
	}
}

// inspectImage asks qemu-img for the image's format and virtual size.
func inspectImage(ctx context.Context, r Runner, path string) (format string, virtualSize int64, err error) {
	res, err := r.Run(ctx, Cmd{Args: []string{programFor("VMUP_QEMU_IMG", "qemu-img"), "info", "--output=json", path}})
	if err != nil {
		return "", 0, fmt.Errorf("qemu-img cannot read %s: %w", path, err)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(res.Stdout, &info); err != nil {
		return "", 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	if info.Format != "qcow2" && info.Format != "raw" {
		return "", 0, &usageError{msg: fmt.Sprintf("%s is a %s image; vmup takes qcow2 or raw", path, info.Format)}
	}
	return info.Format, info.VirtualSize, nil
}

func baseVolumeName(b BaseImage) string { return basePrefix + b.SHA256[:16] + "." + b.Format }
