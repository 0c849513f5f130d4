// The templates' part of `vmup prune`: leftovers of makers and removers
// gone, then templates no VM is backed by that were replaced or not used.
package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

func (p *pruner) pruneTemplates() error {
	out, home := p.env.Out, p.env.Home
	del := func(connect, pool, vol string) error {
		err := newVirsh(p.env.Runner, connect).VolDelete(p.ctx, pool, vol)
		if errors.Is(classify(err), errNotFound) {
			return nil
		}
		return err
	}
	if !p.o.DryRun {
		if err := cleanHalfMade(home, del); err != nil {
			out.Warn("leftovers of an interrupted template remain: %v", err)
		}
	}
	infos, err := listTemplates(home)
	if err != nil || len(infos) == 0 {
		return err
	}
	users, err := p.templateUsers(infos)
	if err != nil {
		return err
	}
	superseded := supersededTemplates(infos)
	now := time.Now()
	byKey := map[string]templateInfo{}
	for _, info := range infos {
		byKey[info.Key] = info
		switch {
		case info.Garbage:
		case info.Err != nil:
			out.Say("not_pruned", "Keeping template %s: it is damaged (%v); remove %s and its volume by hand", shortKey(info.Key), info.Err, info.Dir)
		case len(users[info.Key]) > 0:
			out.Say("not_pruned", "Keeping template %s: VM %s is backed by it", shortKey(info.Key), strings.Join(users[info.Key], ", "))
		case p.o.DryRun && (superseded[info.Key] || now.Sub(lastUse(info)) >= p.o.KeepTemplates):
			p.countTemplate(info, "Would remove")
		}
	}
	if p.o.DryRun {
		return nil
	}
	// Asked while the template is held (pruneTemplates): the journals are
	// read again then. A clone made since users was read held the template,
	// and named it in its journal before it made its disk and let go. (The
	// pool is not scanned again: a clone of another home is of a template
	// of that home, and the scan holds the template for seconds.)
	backed := func(key string) bool {
		return len(users[key]) > 0 || p.journalNames(key)
	}
	replaced, err1 := pruneTemplates(home, 0, func(k string) bool { return backed(k) || !superseded[k] }, del, now)
	unused, err2 := pruneTemplates(home, p.o.KeepTemplates, backed, del, now)
	for _, key := range append(replaced, unused...) {
		p.countTemplate(byKey[key], "Removed")
	}
	return errors.Join(err1, err2)
}

func lastUse(info templateInfo) time.Time {
	if info.Record != nil && info.Record.Made.After(info.LastUsed) {
		return info.Record.Made
	}
	return info.LastUsed
}

func (p *pruner) countTemplate(info templateInfo, verb string) {
	var bytes int64
	what := "template " + shortKey(info.Key)
	if r := info.Record; r != nil {
		bytes = r.MemoryBytes + r.DiskBytes
		what += fmt.Sprintf(" (of %s, made by VM %s %s ago)", filepath.Base(r.Image), r.SourceVM, ageWords(time.Since(r.Made)))
	}
	p.env.Out.Say("pruned", "%s %s (%s)", verb, what, humanBytes(bytes))
	p.removed++
	p.freed += bytes
}

// templateUsers names, per template, the VMs backed by it: this home's
// whose journal names it, and any volume of its pool whose backing file is
// its disk (a VM of another home).
func (p *pruner) templateUsers(infos []templateInfo) (map[string][]string, error) {
	users := map[string][]string{}
	names, err := listVMs(p.env.Home)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		j, err := readJournal(pathsFor(p.env.Home, name))
		if j != nil && j.Template != "" {
			users[j.Template] = append(users[j.Template], name)
		} else if err != nil {
			// Unreadable: it may be backed by any template, so none goes.
			for _, info := range infos {
				users[info.Key] = append(users[info.Key], name+" (its journal is unreadable)")
			}
		}
	}
	disks := map[string]string{} // "pool/volume" of a template's disk -> key
	pools := map[[2]string]bool{}
	for _, info := range infos {
		if r := info.Record; r != nil {
			disks[r.Pool+"/"+r.DiskVolume] = info.Key
			pools[[2]string{r.Connect, r.Pool}] = true
		}
	}
	for cp := range pools {
		v := newVirsh(p.env.Runner, cp[0])
		vols, err := v.VolList(p.ctx, cp[1])
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, vol := range vols {
			backing, err := v.VolBacking(p.ctx, cp[1], vol)
			if err != nil || backing == "" {
				continue
			}
			if key, ok := disks[cp[1]+"/"+filepath.Base(backing)]; ok && !isTemplateVolume(vol) {
				users[key] = append(users[key], "volume "+vol)
			}
		}
	}
	for key := range users {
		sort.Strings(users[key])
		users[key] = compactStrings(users[key])
	}
	return users, nil
}

// journalNames says whether a journal of this home names the template of
// key; one that cannot be read may, and counts as naming it.
func (p *pruner) journalNames(key string) bool {
	names, err := listVMs(p.env.Home)
	if err != nil {
		return true
	}
	for _, name := range names {
		j, err := readJournal(pathsFor(p.env.Home, name))
		if err != nil || j != nil && j.Template == key {
			return true
		}
	}
	return false
}

func compactStrings(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// supersededTemplates are the templates a newer one of the same image and
// playbook (as the user named them) replaced: a changed playbook or image.
func supersededTemplates(infos []templateInfo) map[string]bool {
	newest := map[[2]string]*TemplateRecord{}
	for _, info := range infos {
		r := info.Record
		if r == nil {
			continue
		}
		id := [2]string{r.Image, r.Playbook}
		if n := newest[id]; n == nil || r.Made.After(n.Made) {
			newest[id] = r
		}
	}
	out := map[string]bool{}
	for _, info := range infos {
		if r := info.Record; r != nil && newest[[2]string{r.Image, r.Playbook}] != r {
			out[info.Key] = true
		}
	}
	return out
}
