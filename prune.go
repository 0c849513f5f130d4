package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// pruneGrace keeps a base volume written (or marked complete) less than this
// ago: a vmup of another home, whose locks this one cannot see, may be
// uploading it or about to build an overlay on it.
var pruneGrace = time.Hour

var (
	// What the cache holds: NAME@ALG-HEX16-FILE (an image by name) and
	// KEY-FILE (by URL); a download under way adds .part and .part.json.
	namedCacheRE = lazyRE(`^[a-z0-9][a-z0-9.-]*@(sha256|sha512)-[0-9a-f]{16}-.+$`)
	urlCacheRE   = lazyRE(`^[0-9a-f]{16}-.+$`)
)

// baseHash is the part of a base volume's name that its image's sha256 gives.
func baseHash(vol string) string {
	return strings.TrimSuffix(strings.TrimSuffix(vol, ".qcow2"), ".raw")
}

type pruner struct {
	env     Env
	o       *Options
	ctx     context.Context
	v       *Virsh
	removed int
	freed   int64
	vms     []string // this home's VMs, whose volumes are never a base
}

// runPrune removes the base volumes no volume of the pool is backed by, and
// the cached downloads no base volume and no journal refers to.
func runPrune(env Env, o *Options) int {
	out := env.Out
	switch {
	case o.Name != "":
		return reportError(out, usagef("run `vmup prune` alone, or `vmup prune --dry-run`", "vmup prune takes no arguments"))
	case !validConnect(o.Connect):
		return reportError(out, usagef("", "--connect %q is not a libvirt URI", o.Connect))
	case !validPool(o.Pool):
		return reportError(out, usagef("choose a pool name of letters, digits, '_', '.' and '-'", "--pool %q is not a storage pool name", o.Pool))
	}
	ctx := env.ctx()
	p := &pruner{env: env, o: o, ctx: ctx, v: newVirsh(env.Runner, o.Connect)}
	if err := checkLibvirt(ctx, p.v); err != nil {
		return reportError(out, err)
	}
	// As `up` takes it to make a base: no base of this home is half made meanwhile.
	lockPath := filepath.Join(env.Home, "locks", "_global.lock")
	lock, holder, err := tryLock(lockPath, "prune")
	if errors.Is(err, errLocked) {
		out.Say("waiting", "Waiting for vmup pid %d, which is working on the pool", holder)
		lock, err = waitLock(ctx, lockPath, "prune")
	}
	if err != nil {
		return reportError(out, err)
	}
	defer lock.Unlock()
	err = p.run()
	p.summary()
	if err != nil {
		return reportError(out, err)
	}
	return exitOK
}

func (p *pruner) run() error {
	refs, making, bad, err := p.journals()
	if err != nil {
		return err
	}
	if p.vms, err = listVMs(p.env.Home); err != nil {
		return err
	}
	// Templates first: a base the removed ones were made on may go too.
	if err := p.pruneTemplates(); err != nil {
		return err
	}
	// A template's disk is an overlay on its base, which libvirt may not
	// know yet (it learns a volume's backing when it refreshes the pool):
	// the templates left keep theirs by their records. A damaged one's
	// record is not read: it keeps none.
	infos, err := listTemplates(p.env.Home)
	if err != nil {
		return err
	}
	for _, info := range infos {
		if r := info.Record; r != nil && r.Pool == p.o.Pool && refs[r.BaseVolume] == "" {
			refs[r.BaseVolume] = "template " + shortKey(info.Key)
		}
	}
	kept, err := p.pruneBases(refs, making)
	if err != nil {
		return err
	}
	for vol := range refs {
		kept[baseHash(vol)] = true
	}
	return p.pruneCache(kept, making, bad)
}

// journals reads this home's VMs: the base volumes their journals name, the
// VMs an `up` is making now (their base is not known yet), and the VMs whose
// journal cannot be read.
func (p *pruner) journals() (refs map[string]string, making, bad []string, err error) {
	names, err := listVMs(p.env.Home)
	if err != nil {
		return nil, nil, nil, err
	}
	refs = map[string]string{}
	for _, name := range names {
		paths := pathsFor(p.env.Home, name)
		j, err := readJournal(paths)
		if err != nil {
			bad = append(bad, name)
		}
		if j != nil {
			for _, b := range []string{j.BaseVolume, j.UploadingBase} {
				if b != "" {
					refs[b] = name
				}
			}
		}
		if _, held := lockHolder(paths.Lock); held && (j == nil || j.BaseVolume == "" || j.Phase == Preparing) {
			making = append(making, name)
		}
	}
	return refs, making, bad, nil
}

// pruneBases removes the unused base volumes and marks, and returns the
// hashes of the bases that stay.
func (p *pruner) pruneBases(refs map[string]string, making []string) (map[string]bool, error) {
	out, pool := p.env.Out, p.o.Pool
	vols, err := p.v.VolList(p.ctx, pool)
	if errors.Is(err, errNotFound) {
		return nil, &hintedError{
			msg:  fmt.Sprintf("pool %s is not on %s: nothing pruned (its bases decide which downloads are used)", pool, p.o.Connect),
			hint: "give the pool and connection your VMs use: --pool NAME --connect URI",
		}
	}
	if err != nil {
		return nil, err
	}
	details := map[string]volDetails{}
	backed := map[string]bool{} // backing files, by path and by file name
	for _, vol := range vols {
		d, err := p.v.VolDetails(p.ctx, pool, vol)
		if errors.Is(err, errNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("cannot read volume %s of pool %s: %w", vol, pool, err)
		}
		details[vol] = d
		if d.Backing != "" {
			backed[d.Backing], backed[filepath.Base(d.Backing)] = true, true
		}
	}
	kept := map[string]bool{}
	for _, vol := range vols {
		d, ok := details[vol]
		if !ok {
			continue
		}
		if base, isMark := strings.CutSuffix(vol, ".complete"); isMark && baseVolumeRE.MatchString(base) {
			if _, ok := details[base]; !ok && !backed[vol] {
				// A mark without its base vouches for nothing (an `up` deletes it too).
				if err := p.remove(vol, d.Allocation, "mark"); err != nil && !errors.Is(err, errBusy) {
					return nil, err
				}
			}
			continue
		}
		if base, isToken := strings.CutSuffix(vol, ".pruning"); isToken && baseVolumeRE.MatchString(base) {
			// A token outlives its prune only if that prune was killed.
			if !d.Modified.IsZero() && time.Since(d.Modified) > pruneGrace {
				if err := p.remove(vol, d.Allocation, "token of a killed prune"); err != nil && !errors.Is(err, errBusy) {
					return nil, err
				}
			}
			continue
		}
		if !baseVolumeRE.MatchString(vol) {
			continue // not vmup's: never touched
		}
		if vm := p.vmOf(vol); vm != "" || d.Backing != "" {
			// A VM's disk named like a base (made before such names were
			// refused, or in another home): a base is never an overlay.
			if vm != "" {
				out.Say("not_pruned", "Keeping volume %s: it is the disk of VM %s, not a base", vol, vm)
			}
			continue
		}
		mark, marked := details[baseMark(vol)]
		if backed[d.Path] || backed[vol] {
			kept[baseHash(vol)] = true
			continue
		}
		why := ""
		newest := d.Modified
		if mark.Modified.After(newest) {
			newest = mark.Modified
		}
		switch {
		case strings.HasPrefix(refs[vol], "template "):
			why = refs[vol] + "'s disk is an overlay on it"
		case refs[vol] != "":
			why = fmt.Sprintf("VM %s's journal names it", refs[vol])
		case len(making) > 0:
			why = fmt.Sprintf("VM %s is being made, and may be about to use it", strings.Join(making, ", "))
		case newest.IsZero() && !marked:
			why = "it is not marked complete, and libvirt does not say when it was written: its upload may be running"
		case !marked && time.Since(newest) < pruneGrace:
			why = fmt.Sprintf("it is not marked complete and was written %s ago: its upload may be running", ageWords(time.Since(newest)))
		case time.Since(newest) < pruneGrace:
			why = fmt.Sprintf("it was made %s ago: another vmup may be about to use it", ageWords(time.Since(newest)))
		}
		if why != "" {
			kept[baseHash(vol)] = true
			out.Say("not_pruned", "Keeping base volume %s: %s", vol, why)
			continue
		}
		gone, err := p.removeBase(vol, d, mark, marked)
		if err != nil {
			return nil, err
		}
		if !gone {
			kept[baseHash(vol)] = true
		}
	}
	return kept, nil
}

// removeBase deletes an unused base and its mark under the pool's token for
// it, after asking the pool once more what is backed by it: an `up` of any
// home that built on it meanwhile is seen, or sees the token (see baseHeld).
func (p *pruner) removeBase(vol string, d, mark volDetails, marked bool) (gone bool, err error) {
	out, v, pool := p.env.Out, p.v, p.o.Pool
	if p.o.DryRun {
		err := p.remove(vol, d.Allocation, "base volume")
		if err == nil && marked {
			err = p.remove(baseMark(vol), mark.Allocation, "mark")
		}
		return err == nil, err
	}
	token := basePruning(vol)
	// From the token's creation to its deletion, a signal does not make vmup
	// exit: a token left behind holds up every up of this base for an hour.
	release := p.env.hold()
	defer release()
	// Not cut off by a signal either: a virsh killed mid-way may leave a
	// token that this prune, not knowing it made it, would never delete.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 10*time.Second)
	err = v.VolCreate(tctx, pool, token, 0, "raw", "", "")
	cancel()
	if errors.Is(err, errExists) {
		out.Say("not_pruned", "Keeping base volume %s: another vmup prune is deciding on it (%s)", vol, token)
		return false, nil
	} else if err != nil {
		return false, err
	}
	defer func() {
		// Also after a signal: every up of this base waits while the token is there.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 10*time.Second)
		defer cancel()
		if derr := v.VolDelete(ctx, pool, token); derr != nil && err == nil {
			err = fmt.Errorf("cannot delete %s (every up of base %s waits while it is there): %w", token, vol, derr)
		}
	}()
	users, err := backedBy(p.ctx, v, pool, vol)
	if errors.Is(classify(err), errNotFound) {
		return false, nil // deleted meanwhile
	}
	if err != nil {
		return false, err
	}
	if len(users) > 0 {
		out.Say("not_pruned", "Keeping base volume %s: %s was just made on it", vol, strings.Join(users, ", "))
		return false, nil
	}
	// The base before its mark: a mark left alone is one an `up` deletes.
	if err := p.remove(vol, d.Allocation, "base volume"); errors.Is(err, errBusy) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if marked {
		err = p.remove(baseMark(vol), mark.Allocation, "mark")
	} else {
		err = v.VolDelete(p.ctx, pool, baseMark(vol)) // one an `up` made meanwhile vouches for nothing now
	}
	if errors.Is(err, errBusy) {
		err = nil
	}
	return true, err
}

// vmOf names this home's VM whose volume vol is.
func (p *pruner) vmOf(vol string) string {
	for _, name := range p.vms {
		if validVMVolume(name, vol) {
			return name
		}
	}
	return ""
}

// remove deletes a volume of the pool (not with --dry-run) and says so.
func (p *pruner) remove(vol string, bytes int64, what string) error {
	out := p.env.Out
	if p.o.DryRun {
		out.Say("pruned", "Would remove %s %s (%s)", what, vol, humanBytes(bytes))
	} else {
		err := p.v.VolDelete(p.ctx, p.o.Pool, vol)
		if errors.Is(err, errBusy) {
			out.Say("not_pruned", "Keeping %s %s: libvirt says it is in use (an upload or download of it is running)", what, vol)
			return err
		}
		if err != nil {
			return err
		}
		out.Say("pruned", "Removed %s %s (%s)", what, vol, humanBytes(bytes))
	}
	p.removed++
	p.freed += bytes
	return nil
}

func (p *pruner) summary() {
	out := p.env.Out
	switch {
	case p.removed == 0:
		out.Say("pruned_total", "Nothing to prune in pool %s or the download cache", p.o.Pool)
	case p.o.DryRun:
		out.Say("pruned_total", "Would remove %d items, freeing %s (nothing was removed: --dry-run)", p.removed, humanBytes(p.freed))
	default:
		out.Say("pruned_total", "Removed %d items, freed %s", p.removed, humanBytes(p.freed))
	}
}
