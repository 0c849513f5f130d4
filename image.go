package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// BaseImage is a local image file with its content hash and format.
type BaseImage struct {
	Path, SHA256, Format string
	VirtualSize          int64
}

// fetchImage returns a local path for --image, downloading a URL once into
// the cache (as NAME.part, renamed when complete and verified). One download
// per URL runs at a time: its .part is written only under the URL's lock.
func fetchImage(ctx context.Context, home, image, wantSHA string) (string, error) {
	if !isURL(image) {
		return image, nil
	}
	cache := filepath.Join(home, "cache")
	if err := ensureDir(cache); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(image))
	key := hex.EncodeToString(sum[:8])
	base := filepath.Base(strings.SplitN(image, "?", 2)[0])
	dest := filepath.Join(cache, key+"-"+base)
	lock, err := waitLock(ctx, filepath.Join(home, "locks", "download-"+key+".lock"), "up")
	if errors.Is(err, errLocked) {
		return "", ctx.Err()
	}
	if err != nil {
		return "", err
	}
	defer lock.Unlock()
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, image, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", image, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download %s: %s", image, resp.Status)
	}
	part := dest + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(f, ctxReader{ctx, resp.Body})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(part)
		return "", fmt.Errorf("download %s: %w", image, err)
	}
	if wantSHA != "" {
		// The bytes on disk are checked, not the stream: they are what is used.
		got, err := hashPath(ctx, part)
		if err != nil {
			os.Remove(part)
			return "", err
		}
		if !strings.EqualFold(got, wantSHA) {
			os.Remove(part)
			return "", &usageError{msg: fmt.Sprintf("%s has sha256 %s, not %s", image, got, wantSHA),
				hint: "check --image-sha256; the image behind the URL may have changed"}
		}
	}
	return dest, os.Rename(part, dest)
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
	known[key] = sum
	if ensureDir(filepath.Dir(memo)) == nil {
		if data, err := json.Marshal(known); err == nil {
			writeFileAtomic(memo, data, 0o600)
		}
	}
	return sum, nil
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

func baseVolumeName(b BaseImage) string { return "vmup-base-" + b.SHA256[:16] + "." + b.Format }
