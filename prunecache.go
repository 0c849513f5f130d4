// prune of the download cache: downloads no base or journal refers to, partials of a killed download.
package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// pruneCache removes the downloads whose sha256 names none of the kept bases,
// and the parts no vmup is downloading.
func (p *pruner) pruneCache(kept map[string]bool, making, bad []string) error {
	out, dir := p.env.Out, filepath.Join(p.env.Home, "cache")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var gone []string
	parts := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if !e.Type().IsRegular() || name == "hashes.json" {
			continue
		}
		if part, ok := partialOf(dir, name); ok {
			if !parts[part] {
				parts[part] = true
				if err := p.prunePart(dir, part); err != nil {
					return err
				}
			}
			continue
		}
		if !namedCacheRE.MatchString(name) && !urlCacheRE.MatchString(name) {
			continue // not a download of vmup's
		}
		switch {
		case len(bad) > 0:
			out.Say("not_pruned", "Keeping download %s: the journal of VM %s cannot be read, so what it uses is unknown", name, strings.Join(bad, ", "))
			continue
		case len(making) > 0:
			out.Say("not_pruned", "Keeping download %s: VM %s is being made, and may be about to use it", name, strings.Join(making, ", "))
			continue
		}
		used, err := p.cacheUsed(path, kept)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if used {
			continue
		}
		st, err := os.Stat(path)
		if err != nil {
			continue
		}
		err = removeUnused(path, p.o.DryRun)
		switch {
		case errors.Is(err, errInUse):
			out.Say("not_pruned", "Keeping download %s: it is in use (a vmup is making a base volume of it)", name)
			continue
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			return err
		case p.o.DryRun:
			out.Say("pruned", "Would remove download %s (%s)", name, humanBytes(st.Size()))
		default:
			gone = append(gone, path)
			out.Say("pruned", "Removed download %s (%s)", name, humanBytes(st.Size()))
		}
		p.removed++
		p.freed += st.Size()
	}
	forgetHashes(p.env.Home, gone)
	return nil
}

// cacheUsed says whether a base volume that stays, or a journal, is made of
// the file. The memo may keep a file; only the file's own bytes remove it.
func (p *pruner) cacheUsed(path string, kept map[string]bool) (bool, error) {
	for _, fresh := range []bool{false, true} {
		sum, err := hashFile(p.ctx, p.env.Home, path, !fresh)
		if err != nil {
			return false, err
		}
		if kept["vmup-base-"+sum[:16]] {
			return true, nil
		}
	}
	return false, nil
}

// partialOf says whether name is a partial download or its record, and
// names the part. Only the record tells: a finished download's name may end
// in .part too (its URL's does), but no record beside it names a URL whose
// part it would be.
func partialOf(dir, name string) (string, bool) {
	part := strings.TrimSuffix(name, ".json")
	if !strings.HasSuffix(part, ".part") || !urlCacheRE.MatchString(part) {
		return "", false
	}
	data, err := os.ReadFile(filepath.Join(dir, part+".json"))
	if err != nil {
		return "", false
	}
	var rec partRecord
	if json.Unmarshal(data, &rec) != nil || rec.URL == "" || partName(rec.URL)[16:] != part[16:] {
		return "", false
	}
	return part, true
}

// prunePart removes a download's part and its record, unless a vmup holds
// the URL's lock: it is downloading it now.
func (p *pruner) prunePart(dir, part string) error {
	out := p.env.Out
	key := part[:16]
	lock, holder, err := tryLock(filepath.Join(p.env.Home, "locks", "download-"+key+".lock"), "prune")
	if errors.Is(err, errLocked) {
		out.Say("not_pruned", "Keeping partial download %s: vmup pid %d is downloading it", part, holder)
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	var size int64
	var files []string
	for _, f := range []string{part, part + ".json"} {
		if st, err := os.Lstat(filepath.Join(dir, f)); err == nil && st.Mode().IsRegular() {
			size += st.Size()
			files = append(files, filepath.Join(dir, f))
		}
	}
	if len(files) == 0 {
		return nil
	}
	verb := "Would remove"
	if !p.o.DryRun {
		verb = "Removed"
		for _, f := range files {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	out.Say("pruned", "%s partial download %s (%s)", verb, part, humanBytes(size))
	p.removed++
	p.freed += size
	return nil
}

// forgetHashes drops the memo's entries of removed files.
func forgetHashes(home string, removed []string) {
	if len(removed) == 0 {
		return
	}
	memo := filepath.Join(home, "cache", "hashes.json")
	known := map[string]string{}
	data, err := os.ReadFile(memo)
	if err != nil || json.Unmarshal(data, &known) != nil {
		return
	}
	for key := range known {
		path, _, _ := strings.Cut(key, "\x00")
		if slices.ContainsFunc(removed, func(r string) bool { abs, _ := filepath.Abs(r); return abs == path }) {
			delete(known, key)
		}
	}
	if data, err := json.Marshal(known); err == nil {
		writeFileAtomic(memo, data, 0o600)
	}
}
