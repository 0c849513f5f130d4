// virsh for storage: the pool and its volumes.
package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// poolMu makes the VMs of an environment, prepared at once, ensure the pool
// one after another: the first defines and starts it, the others find it.
var poolMu sync.Mutex

// EnsurePool creates a dir pool at target unless pool exists, and starts it.
// Another vmup may be doing the same at the same moment: a step that failed
// is forgiven if the pool runs after all (looked at for up to 10 s).
func (v *Virsh) EnsurePool(ctx context.Context, pool, target string) error {
	poolMu.Lock()
	defer poolMu.Unlock()
	err := v.ensurePool(ctx, pool, target)
	for deadline := time.Now().Add(10 * time.Second); err != nil && ctx.Err() == nil && time.Now().Before(deadline); {
		if out, ierr := v.run(ctx, "pool-info", pool); ierr == nil && poolRunningRE.MatchString(out) {
			return nil
		}
		if sleepCtx(ctx, 200*time.Millisecond) != nil {
			break
		}
	}
	return err
}

var poolRunningRE = lazyRE(`(?m)^State:\s+running`)

func (v *Virsh) ensurePool(ctx context.Context, pool, target string) error {
	out, err := v.run(ctx, "pool-info", pool)
	if err == nil {
		if poolRunningRE.MatchString(out) {
			return nil
		}
		_, err = v.run(ctx, "pool-start", pool)
		return err
	}
	if err = classify(err); !errors.Is(err, errNotFound) {
		return err
	}
	for _, args := range [][]string{
		{"pool-define-as", pool, "dir", "--target", target},
		{"pool-build", pool},
		{"pool-start", pool},
		{"pool-autostart", pool},
	} {
		if _, err := v.run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func (v *Virsh) VolExists(ctx context.Context, pool, vol string) (bool, error) {
	_, err := v.run(ctx, "vol-info", "--pool", pool, vol)
	if err == nil {
		return true, nil
	}
	if err = classify(err); errors.Is(err, errNotFound) {
		return false, nil
	}
	return false, err
}

// errExists is a volume that is there already.
var errExists = errors.New("exists already")

var existsRE = lazyRE(`(?i)storage volume '[^']*' exists already|already in use|already exists`)

// VolCreate makes an empty volume, or with backing an overlay on that
// volume. It never replaces a volume: one of that name gives errExists.
func (v *Virsh) VolCreate(ctx context.Context, pool, vol string, bytes int64, format, backing, backingFormat string) error {
	args := []string{"vol-create-as", pool, vol, fmt.Sprint(bytes), "--format", format}
	if backing != "" {
		args = append(args, "--backing-vol", backing, "--backing-vol-format", backingFormat)
	}
	_, err := v.run(ctx, args...)
	var ee *ExitError
	if errors.As(err, &ee) && existsRE.MatchString(ee.Stderr) {
		return fmt.Errorf("%w: %v", errExists, err)
	}
	return err
}

// VolCreateSparse makes an empty volume of bytes that takes no space until
// written: without --allocation, libvirt allocates the whole capacity.
func (v *Virsh) VolCreateSparse(ctx context.Context, pool, vol string, bytes int64, format string) error {
	_, err := v.run(ctx, "vol-create-as", pool, vol, fmt.Sprint(bytes), "--allocation", "0", "--format", format)
	var ee *ExitError
	if errors.As(err, &ee) && existsRE.MatchString(ee.Stderr) {
		return fmt.Errorf("%w: %v", errExists, err)
	}
	return err
}

func (v *Virsh) VolResize(ctx context.Context, pool, vol string, bytes int64) error {
	_, err := v.run(ctx, "vol-resize", "--pool", pool, vol, fmt.Sprint(bytes))
	return err
}

func (v *Virsh) VolUpload(ctx context.Context, pool, vol, file string) error {
	_, err := v.r.Run(ctx, Cmd{Args: []string{v.prog, "-c", v.uri, "vol-upload", "--pool", pool, vol, file}, Grace: streamGrace})
	return err
}

// VolUploadFrom streams r into the volume through virsh's stdin, so that
// vmup sees (and can hash) every byte uploaded.
func (v *Virsh) VolUploadFrom(ctx context.Context, pool, vol string, r io.Reader) error {
	_, err := v.r.Run(ctx, Cmd{Args: []string{v.prog, "-c", v.uri, "vol-upload", "--pool", pool, vol, "/dev/stdin"},
		Stdin: r, Grace: streamGrace})
	return err
}

func (v *Virsh) VolPath(ctx context.Context, pool, vol string) (string, error) {
	v.pathMu.Lock()
	path, ok := v.paths[[2]string{pool, vol}]
	v.pathMu.Unlock()
	if ok {
		return path, nil
	}
	path, err := v.run(ctx, "vol-path", "--pool", pool, vol)
	if err == nil {
		v.pathMu.Lock()
		if v.paths == nil {
			v.paths = map[[2]string]string{}
		}
		v.paths[[2]string{pool, vol}] = path
		v.pathMu.Unlock()
	}
	return path, err
}

// errBusy is a volume libvirt holds, as while a stream uploads into it.
var errBusy = errors.New("volume busy")

var busyRE = lazyRE(`(?i)still in use|still being allocated|busy`)

// VolDelete deletes a volume; one already gone is not an error.
func (v *Virsh) VolDelete(ctx context.Context, pool, vol string) error {
	v.pathMu.Lock()
	delete(v.paths, [2]string{pool, vol})
	v.pathMu.Unlock()
	_, err := v.run(ctx, "vol-delete", "--pool", pool, vol)
	if err = classify(err); errors.Is(err, errNotFound) {
		return nil
	}
	var ee *ExitError
	if errors.As(err, &ee) && busyRE.MatchString(ee.Stderr) {
		return fmt.Errorf("%w: %v", errBusy, err)
	}
	return err
}

// VolDeleteWhenFree deletes a volume once libvirt lets go of it: the job of
// a virsh killed mid-upload can hold the volume for a moment.
func (v *Virsh) VolDeleteWhenFree(ctx context.Context, pool, vol string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := v.VolDelete(ctx, pool, vol)
		if !errors.Is(err, errBusy) || time.Now().After(deadline) {
			return err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// VolList names the volumes of a pool.
func (v *Virsh) VolList(ctx context.Context, pool string) ([]string, error) {
	rows, err := v.volRows(ctx, pool)
	var names []string
	for _, r := range rows {
		names = append(names, r[0])
	}
	return names, err
}

// VolPaths maps the pool's volumes to their files, from one call.
func (v *Virsh) VolPaths(ctx context.Context, pool string) (map[string]string, error) {
	rows, err := v.volRows(ctx, pool)
	paths := map[string]string{}
	for _, r := range rows {
		paths[r[0]] = r[1]
	}
	return paths, err
}

// volRows reads `virsh vol-list`: name and path of each volume. A name is
// one word (vmup's are); the path is the rest, spaces and all.
func (v *Virsh) volRows(ctx context.Context, pool string) ([][2]string, error) {
	out, err := v.run(ctx, "vol-list", "--pool", pool)
	if err != nil {
		return nil, classify(err)
	}
	// A header, a rule of dashes, then one "NAME PATH" row per volume.
	_, rows, ok := strings.Cut(out, "\n-")
	if !ok {
		return nil, nil
	}
	lines := strings.Split(rows, "\n")
	var list [][2]string
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 {
			path := strings.TrimPrefix(strings.TrimSpace(l), f[0])
			list = append(list, [2]string{f[0], strings.TrimSpace(path)})
		}
	}
	return list, nil
}

// VolBacking returns the path of the volume's backing store, "" for none.
func (v *Virsh) VolBacking(ctx context.Context, pool, vol string) (string, error) {
	out, err := v.run(ctx, "vol-dumpxml", "--pool", pool, vol)
	if err != nil {
		return "", classify(err)
	}
	var x struct {
		Backing struct {
			Path string `xml:"path"`
		} `xml:"backingStore"`
	}
	if err := xml.Unmarshal([]byte(out), &x); err != nil {
		return "", fmt.Errorf("vol-dumpxml %s: %w", vol, err)
	}
	return x.Backing.Path, nil
}

// volDetails is what prune needs of a volume: its file, its backing file,
// the bytes it takes, and when its file was last written (zero if unknown).
type volDetails struct {
	Path, Backing string
	Allocation    int64
	Modified      time.Time
}

func (v *Virsh) VolDetails(ctx context.Context, pool, vol string) (volDetails, error) {
	out, err := v.run(ctx, "vol-dumpxml", "--pool", pool, vol)
	if err != nil {
		return volDetails{}, classify(err)
	}
	var x struct {
		Allocation int64 `xml:"allocation"`
		Target     struct {
			Path  string `xml:"path"`
			MTime string `xml:"timestamps>mtime"`
		} `xml:"target"`
		Backing struct {
			Path string `xml:"path"`
		} `xml:"backingStore"`
	}
	if err := xml.Unmarshal([]byte(out), &x); err != nil {
		return volDetails{}, fmt.Errorf("vol-dumpxml %s: %w", vol, err)
	}
	d := volDetails{Path: x.Target.Path, Backing: x.Backing.Path, Allocation: x.Allocation}
	// libvirt writes "SECONDS.NANOSECONDS".
	secs, frac, _ := strings.Cut(x.Target.MTime, ".")
	if s, err := strconv.ParseInt(secs, 10, 64); err == nil && s > 0 {
		ns, _ := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
		d.Modified = time.Unix(s, ns)
	}
	return d, nil
}

// VolDownload streams the volume's content into w through virsh's stdout.
func (v *Virsh) VolDownload(ctx context.Context, pool, vol string, w io.Writer) error {
	_, err := v.r.Run(ctx, Cmd{Args: []string{v.prog, "-c", v.uri, "vol-download", "--pool", pool, vol, "/dev/stdout"},
		Stdout: w, Grace: streamGrace})
	return err
}

// VolCapacity is the volume's virtual size in bytes (0 when libvirt does not say).
func (v *Virsh) VolCapacity(ctx context.Context, pool, vol string) (int64, error) {
	out, err := v.run(ctx, "vol-dumpxml", "--pool", pool, vol)
	if err != nil {
		return 0, classify(err)
	}
	var x struct {
		Capacity int64 `xml:"capacity"`
	}
	if err := xml.Unmarshal([]byte(out), &x); err != nil {
		return 0, fmt.Errorf("vol-dumpxml %s: %w", vol, err)
	}
	return x.Capacity, nil
}
