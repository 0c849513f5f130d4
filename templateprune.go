// Templates listed, half-made and half-removed ones cleaned, unused ones pruned.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// templateInfo is one entry of templates/: a complete template (Record), a
// damaged one (Err), or the leftover of a vmup gone while it made or
// removed one (Garbage, for cleanHalfMade).
type templateInfo struct {
	Key      string
	Dir      string
	Record   *TemplateRecord
	Err      error
	LastUsed time.Time // zero: no clone made of it yet
	Garbage  bool
}

var leftoverRE = lazyRE(`^\.(?:making|removing)-([0-9a-f]{64})-[0-9a-z-]+$`)

// leftoverKey names the key of a making or removing dir.
func leftoverKey(name string) (string, bool) {
	m := leftoverRE.FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// listTemplates lists every template, a damaged one too, and the leftovers
// whose vmup is gone; a making dir whose maker still works is not listed.
func listTemplates(home string) ([]templateInfo, error) {
	if err := checkTemplatesDir(home); err != nil {
		return nil, err
	}
	dir := templatesDir(home)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var infos []templateInfo
	now := time.Now()
	for _, e := range entries {
		name, path := e.Name(), filepath.Join(dir, e.Name())
		if sha256HexRE.MatchString(name) {
			rec, err := readTemplateAt(path, name, now)
			if errors.Is(err, errNoTemplate) {
				continue // pruned meanwhile
			}
			infos = append(infos, templateInfo{Key: name, Dir: path, Record: rec, Err: err, LastUsed: templateLastUsed(path)})
			continue
		}
		key, ok := leftoverKey(name)
		if !ok || templateLockHeld(home, key) {
			continue
		}
		if _, err := os.Lstat(path); err == nil { // not completed or cleaned since
			infos = append(infos, templateInfo{Key: key, Dir: path, Garbage: true})
		}
	}
	return infos, nil
}

// cleanHalfMade removes what a vmup gone while making or removing a
// template left: the making or removing dir, and first the volume its
// note names (deleteVol must take a volume already gone for deleted). A
// leftover whose vmup is at work is left alone; one whose volume cannot be
// deleted stays, so that its note is not forgotten. Lock files guarding no
// template go too.
func cleanHalfMade(home string, deleteVol func(connect, pool, vol string) error) error {
	if err := checkTemplatesDir(home); err != nil {
		return err
	}
	dir := templatesDir(home)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if key, ok := leftoverKey(e.Name()); ok {
			errs = append(errs, cleanLeftover(home, key, filepath.Join(dir, e.Name()), deleteVol))
		}
	}
	// After the leftovers (a lock file is taken anew by whoever needs it).
	for _, e := range entries {
		if key, ok := strings.CutSuffix(e.Name(), ".lock"); ok && sha256HexRE.MatchString(key) {
			if lock, err := lockTemplateFile(home, key, unix.LOCK_EX, 0); err == nil {
				unlockTemplate(lock, home, key)
			}
		}
	}
	return errors.Join(errs...)
}

func cleanLeftover(home, key, path string, deleteVol func(connect, pool, vol string) error) error {
	lock, err := lockTemplateFile(home, key, unix.LOCK_EX, 0)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil // its vmup (or another cleaner, or a clone) is at work
	}
	if err != nil {
		return err
	}
	defer unlockTemplate(lock, home, key)
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // completed or cleaned before the lock was had
	}
	if err != nil {
		return err
	}
	if p := fileProblem(st, true, false); p != "" {
		return &dirError{path, p + ": not cleaned"}
	}
	note, err := readVolumeNote(path, key)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// No volume was made (or it was deleted before its note went).
	case err != nil:
		return &templateError{msg: fmt.Sprintf("%s is not cleaned: %v", path, err),
			hint: "check it, then remove it (`rm -r`) and the volume its disk-volume names, if any (`virsh vol-delete`)"}
	default:
		rec, err := readTemplate(home, key)
		if err == nil && rec.DiskVolume == note.Volume {
			break // the complete template's own disk: never a leftover's
		}
		if err := deleteVol(note.Connect, note.Pool, note.Volume); err != nil {
			return fmt.Errorf("cannot delete volume %s of pool %s, the disk of a half-made or half-removed template %s: %w",
				note.Volume, note.Pool, shortKey(key), err)
		}
	}
	return os.RemoveAll(path)
}

// pruneTemplates removes each template that no VM is backed by, no vmup
// holds, and whose last use (or making, if none) is older than keepFor,
// with its volume; it returns their keys. backed is asked while the
// template is held exclusively: read the journals then, as a clone holds
// its template until its journal names it. A damaged template is kept (its
// record is not trusted to name the volume); the listing shows it.
//
// A template is renamed to a removing dir, durably, before its volume is
// deleted: after a crash it is whole or a leftover for cleanHalfMade.
func pruneTemplates(home string, keepFor time.Duration, backed func(key string) bool,
	deleteVol func(connect, pool, vol string) error, now time.Time) (removed []string, err error) {
	if err := checkTemplatesDir(home); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(templatesDir(home))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, e := range entries {
		key := e.Name()
		if !sha256HexRE.MatchString(key) {
			continue
		}
		lock, err := lockTemplateFile(home, key, unix.LOCK_EX, 0)
		if errors.Is(err, unix.EWOULDBLOCK) {
			continue // being cloned, or pruned by another vmup
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		gone, err := pruneTemplate(home, key, keepFor, backed, deleteVol, now)
		unlockTemplate(lock, home, key)
		if gone {
			removed = append(removed, key)
		}
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

// pruneTemplate removes the template of key, held exclusively, if the rules allow.
func pruneTemplate(home, key string, keepFor time.Duration, backed func(key string) bool,
	deleteVol func(connect, pool, vol string) error, now time.Time) (bool, error) {
	dir := templateDir(home, key)
	rec, err := readTemplateAt(dir, key, now)
	if errors.Is(err, errNoTemplate) || errors.Is(err, errTemplateDamaged) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	last := rec.Made
	if used := templateLastUsed(dir); used.After(last) {
		last = used
	}
	if now.Sub(last) < keepFor || backed(key) {
		return false, nil
	}
	removing := filepath.Join(templatesDir(home), ".removing-"+key+"-"+randomHex(4))
	if err := os.Rename(dir, removing); err != nil {
		return false, err
	}
	// Durable before the volume goes: else a crash could bring back a
	// complete template without its disk.
	// The removing dir stays on an error, for cleanHalfMade.
	if err := syncDir(templatesDir(home)); err != nil {
		return false, err
	}
	if err := deleteVol(rec.Connect, rec.Pool, rec.DiskVolume); err != nil {
		return false, fmt.Errorf("template %s: cannot delete its disk, volume %s of pool %s (left for the next clean): %w",
			shortKey(key), rec.DiskVolume, rec.Pool, err)
	}
	return true, os.RemoveAll(removing)
}
