// Making a template: in a making dir under KEY.lock, its disk volume noted before it exists, complete by one rename.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// makerPatience is how long a maker waits out a holder of KEY.lock: a
// probe (listing, prune's look) holds it for a moment only.
var makerPatience = 100 * time.Millisecond

// templateMaking is a template being made in its making dir, under KEY.lock.
type templateMaking struct {
	home, key, dir string
	lock           *os.File
	note           *templateVolumeNote
}

// beginTemplate starts making the template of key. errTemplateBusy: another
// vmup makes it (this one makes none); errTemplateExists: it is complete.
func beginTemplate(home, key string) (*templateMaking, error) {
	if err := checkTemplateKey(key); err != nil {
		return nil, err
	}
	if err := checkTemplatesDir(home); err != nil {
		return nil, err
	}
	if err := ensureDir(templatesDir(home)); err != nil {
		return nil, err
	}
	lock, err := lockTemplateFile(home, key, unix.LOCK_EX, makerPatience)
	if errors.Is(err, unix.EWOULDBLOCK) {
		// Held shared, it is complete and being cloned.
		if _, err := readTemplate(home, key); err == nil {
			return nil, &templateError{msg: fmt.Sprintf("template %s exists", shortKey(key)), kind: errTemplateExists}
		}
		return nil, &templateError{msg: fmt.Sprintf("another vmup is making template %s", shortKey(key)), kind: errTemplateBusy}
	}
	if err != nil {
		return nil, err
	}
	_, err = readTemplate(home, key)
	switch {
	case err == nil:
		lock.Close()
		return nil, &templateError{msg: fmt.Sprintf("template %s exists", shortKey(key)), kind: errTemplateExists}
	case !errors.Is(err, errNoTemplate):
		lock.Close()
		return nil, err
	}
	dir := filepath.Join(templatesDir(home), fmt.Sprintf(".making-%s-%d-%s", key, os.Getpid(), randomHex(4)))
	err = os.Mkdir(dir, 0o700)
	if err == nil {
		err = os.Chmod(dir, 0o700) // whatever the umask
	}
	if err == nil {
		// The dir must outlive a crash: the volume note in it will.
		err = syncDir(templatesDir(home))
	}
	if err != nil {
		os.RemoveAll(dir)
		unlockTemplate(lock, home, key)
		return nil, err
	}
	return &templateMaking{home: home, key: key, dir: dir, lock: lock}, nil
}

// Dir is the making dir: memory.save goes there.
func (m *templateMaking) Dir() string { return m.dir }

// templateVolumeNote is disk-volume: the template's disk, named before it is
// created, so that a crashed maker's volume is found and deleted.
type templateVolumeNote struct {
	Connect string `json:"connect"`
	Pool    string `json:"pool"`
	Volume  string `json:"volume"`
}

// readVolumeNote reads the disk-volume of a template or leftover dir of
// key, as strictly as a record: a volume is deleted on its word.
func readVolumeNote(dir, key string) (*templateVolumeNote, error) {
	f, err := os.OpenFile(filepath.Join(dir, "disk-volume"), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, errors.New("disk-volume is a symbolic link")
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if p := fileProblem(st, false, false); p != "" {
		return nil, errors.New("disk-volume " + p)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, err
	}
	var n templateVolumeNote
	if err := decodeStrict(data, &n); err != nil {
		return nil, fmt.Errorf("disk-volume does not parse: %w", err)
	}
	if !validConnect(n.Connect) || !validPool(n.Pool) || !templateVolumeOf(key, n.Volume) {
		return nil, fmt.Errorf("disk-volume names %s %s %s, no disk volume of template %s", n.Connect, n.Pool, n.Volume, shortKey(key))
	}
	return &n, nil
}

// NoteDiskVolume writes the note of the disk volume; call it before the
// volume is created, and once: a volume noted over would be forgotten.
func (m *templateMaking) NoteDiskVolume(connect, pool, vol string) error {
	n := templateVolumeNote{Connect: connect, Pool: pool, Volume: vol}
	switch {
	case m.lock == nil:
		return errors.New("the template is no longer being made")
	case m.note != nil && *m.note != n:
		return fmt.Errorf("template %s: disk volume %s is noted already", shortKey(m.key), m.note.Volume)
	case !validConnect(connect) || !validPool(pool) || !templateVolumeOf(m.key, vol):
		return fmt.Errorf("template %s: %s %s %s is no disk volume of it", shortKey(m.key), connect, pool, vol)
	}
	data, err := json.Marshal(n)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(m.dir, "disk-volume"), append(data, '\n'), 0o600); err != nil {
		return err
	}
	m.note = &n
	return nil
}

// Commit completes the template: record.json is written, and the making dir
// becomes templates/KEY by one rename. It fills Format, Key, MemoryBytes
// (0 for a template of its disk alone) and Made, if zero, and refuses a record readTemplate would. KEY.lock is
// released; an Abort after it does nothing.
func (m *templateMaking) Commit(rec *TemplateRecord) error {
	if m.lock == nil {
		return errors.New("the template is no longer being made")
	}
	mem := filepath.Join(m.dir, "memory.save")
	rec.Format, rec.Key, rec.MemoryBytes = templateFormat, m.key, 0
	if !rec.diskOnly() {
		st, err := os.Lstat(mem)
		if err != nil {
			return fmt.Errorf("template %s: %w", shortKey(m.key), err)
		}
		if p := fileProblem(st, false, true); p != "" {
			return fmt.Errorf("template %s: memory.save %s", shortKey(m.key), p)
		}
		rec.MemoryBytes = st.Size()
	}
	if rec.Made.IsZero() {
		rec.Made = time.Now()
	}
	rec.Made = rec.Made.UTC()
	if n := m.note; n == nil || n.Connect != rec.Connect || n.Pool != rec.Pool || n.Volume != rec.DiskVolume {
		return fmt.Errorf("template %s: its disk volume %s was not noted before it was made", shortKey(m.key), rec.DiskVolume)
	}
	if err := validateTemplate(rec, m.key, time.Now()); err != nil {
		return fmt.Errorf("template %s: %w", shortKey(m.key), err)
	}
	if !rec.diskOnly() {
		if err := syncSaved(mem); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	// Synced, with the making dir, before the rename makes them a template.
	if err := writeFileAtomic(filepath.Join(m.dir, "record.json"), append(data, '\n'), 0o600); err != nil {
		return err
	}
	// What readTemplate would refuse is never made a template.
	if _, err := readTemplateAt(m.dir, m.key, time.Now()); err != nil {
		return err
	}
	final := templateDir(m.home, m.key)
	if err := os.Rename(m.dir, final); err != nil {
		return err
	}
	// Complete now: an error would have the caller delete its volume.
	syncDir(templatesDir(m.home))
	m.dir = final
	m.lock.Close()
	m.lock = nil
	return nil
}

// syncSaved makes memory.save durable. libvirt's root may have written it
// for the user to stat, not to open: then its whole filesystem is synced.
func syncSaved(path string) error {
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		return f.Sync()
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}

// Abort removes the making dir and releases KEY.lock. Delete the noted
// volume first: without its note, nothing would find it again.
func (m *templateMaking) Abort() {
	if m.lock == nil {
		return
	}
	os.RemoveAll(m.dir)
	unlockTemplate(m.lock, m.home, m.key)
	m.lock = nil
}

// Release lets go of KEY.lock and leaves the making dir, as a crash would,
// for cleanHalfMade: for a maker whose volume could not be deleted.
func (m *templateMaking) Release() {
	if m.lock != nil {
		m.lock.Close()
		m.lock = nil
	}
}
