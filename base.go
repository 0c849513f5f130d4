package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// A shared base volume counts as complete only once its mark, an empty
// volume BASE.complete beside it, exists: libvirt cannot rename a volume, and
// a mark in the pool is seen by every user of the pool (root and a
// libvirt-group user share it, each with a home and global lock of its own).
func baseMark(base string) string { return base + ".complete" }

// basePrefix begins every base volume's name, and no VM's.
const basePrefix = "vmup-base-"

var baseVolumeRE = lazyRE(`^vmup-base-[0-9a-f]{16}\.(qcow2|raw)$`)

// baseState says whether base and its mark are in the pool.
func baseState(ctx context.Context, v *Virsh, pool, base string) (exists, complete bool, err error) {
	if exists, err = v.VolExists(ctx, pool, base); err != nil {
		return false, false, err
	}
	complete, err = v.VolExists(ctx, pool, baseMark(base))
	return exists, complete, err
}

// backedBy names the volumes of the pool whose backing store is base. Only
// the pool tells: other users' journals are out of reach.
func backedBy(ctx context.Context, v *Virsh, pool, base string) ([]string, error) {
	path, err := v.VolPath(ctx, pool, base)
	if err != nil {
		return nil, err
	}
	vols, err := v.VolList(ctx, pool)
	if err != nil {
		return nil, err
	}
	var users []string
	for _, vol := range vols {
		if vol == base || vol == baseMark(base) {
			continue
		}
		backing, err := v.VolBacking(ctx, pool, vol)
		if errors.Is(err, errNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("cannot tell whether volume %s is backed by %s: %w", vol, base, err)
		}
		if backing != "" && (backing == path || filepath.Base(backing) == base) {
			users = append(users, vol)
		}
	}
	return users, nil
}

// removePartialBase deletes base if its upload never completed (no mark) and
// no volume of the pool is backed by it. Call it under the global lock.
func removePartialBase(ctx context.Context, v *Virsh, pool, base string) error {
	if !baseVolumeRE.MatchString(base) {
		return fmt.Errorf("%q is no base volume vmup makes; not deleting it", base)
	}
	exists, complete, err := baseState(ctx, v, pool, base)
	if err != nil || !exists || complete {
		return err
	}
	users, err := backedBy(ctx, v, pool, base)
	if err != nil || len(users) > 0 {
		return err
	}
	return deletePartialBase(ctx, v, pool, base)
}

func deletePartialBase(ctx context.Context, v *Virsh, pool, base string) error {
	err := v.VolDelete(ctx, pool, base)
	if errors.Is(err, errBusy) {
		// libvirt holds a volume while a stream writes it.
		return &hintedError{
			msg:  fmt.Sprintf("base volume %s is being written, maybe by another vmup: %v", base, err),
			hint: "wait for that upload to finish, then run the command again",
		}
	}
	return err
}

// ensureBase makes base a complete base volume of img in the pool: cached,
// verified, or uploaded, as its result says. Call it under the global lock.
func (u *vmRun) ensureBase(ctx context.Context, img BaseImage, base string) (string, error) {
	v, pool := u.virsh, u.o.Pool
	if err := u.waitForPrune(ctx, base); err != nil {
		return "", err
	}
	exists, complete, err := baseState(ctx, v, pool, base)
	if err != nil {
		return "", err
	}
	if exists && complete {
		return "cached " + base, nil
	}
	detail := ""
	switch {
	case exists:
		// No mark: an upload was cut off, or a vmup that made no marks yet uploaded it.
		users, err := backedBy(ctx, v, pool, base)
		if err != nil {
			return "", err
		}
		if len(users) > 0 {
			if err := u.verifyBase(ctx, img, base, users); err != nil {
				return "", err
			}
			if err := v.VolCreate(ctx, pool, baseMark(base), 0, "raw", "", ""); err != nil {
				return "", err
			}
			return "verified " + base, nil
		}
		if err := deletePartialBase(ctx, v, pool, base); err != nil {
			return "", err
		}
		detail = " (an earlier upload was cut off)"
	case complete:
		// A mark whose base is gone would vouch for the next, partial, upload.
		if err := v.VolDelete(ctx, pool, baseMark(base)); err != nil {
			return "", err
		}
	}
	// Journalled while it uploads: a killed run leaves a partial base volume
	// that a later `up` or `destroy` deletes rather than use.
	u.created.add(base)
	u.updateJournal(func(j *Journal) { j.UploadingBase = base })
	if err := u.uploadBase(ctx, img, base); err != nil {
		return "", err
	}
	if err := v.VolCreate(ctx, pool, baseMark(base), 0, "raw", "", ""); err != nil {
		return "", err
	}
	u.created.drop(base) // complete: it is the shared cache now
	u.updateJournal(func(j *Journal) { j.UploadingBase = "" })
	return "uploaded " + base + detail, nil
}

// verifyBase reads an unmarked base volume that VMs are built on back and
// compares it with the image: only its content tells a complete upload by an
// older vmup from a cut-off one.
func (u *vmRun) verifyBase(ctx context.Context, img BaseImage, base string, users []string) error {
	h := sha256.New()
	if err := u.virsh.VolDownload(ctx, u.o.Pool, base, h); err != nil {
		return err
	}
	if hex.EncodeToString(h.Sum(nil)) == img.SHA256 {
		return nil
	}
	return &hintedError{
		msg: fmt.Sprintf("base volume %s in pool %s is incomplete (its upload was cut off), and volumes are backed by it: %s",
			base, u.o.Pool, strings.Join(users, ", ")),
		hint: "run `vmup destroy NAME` for each of those VMs (they were built on a partial image), then `vmup up` again",
	}
}

// A base is never deleted while a VM is being built on it, by any vmup of
// any home, user or host sharing the pool. libvirt orders the volume
// operations of a pool, and the two sides are:
//
//	prune: P0 create BASE.pruning (exclusive), P1 list every volume's backing,
//	       P2 delete BASE if nothing is backed by it, P3 its mark, P4 the token.
//	up:    O create its overlay, C1 no BASE.pruning, C2 the mark, C3 the base.
//
// If C1 comes before P0, O did too, so P1 sees the overlay and keeps BASE.
// If C1 comes after P4, P3 deleted the mark, so C2 fails (unless a new,
// complete upload of the same content marked it again). In between, C1
// fails. An up that fails a check deletes its overlay and makes the base
// again, and an up waits while a token is there before it reuses, deletes or
// uploads a base.

// basePruning is the token volume a prune holds while it decides on base.
func basePruning(base string) string { return base + ".pruning" }

var (
	pruneTokenPoll = 200 * time.Millisecond
	pruneTokenWait = time.Minute
)

// waitForPrune waits while a prune decides on base.
func (u *vmRun) waitForPrune(ctx context.Context, base string) error {
	deadline := time.Now().Add(pruneTokenWait)
	for {
		busy, err := u.virsh.VolExists(ctx, u.o.Pool, basePruning(base))
		if err != nil || !busy {
			return err
		}
		if time.Now().After(deadline) {
			return &hintedError{
				msg: fmt.Sprintf("a vmup prune has been deciding on base volume %s for %s: %s is in pool %s",
					base, pruneTokenWait, basePruning(base), u.o.Pool),
				hint: fmt.Sprintf("run `virsh -c %s vol-delete --pool %s %s` if no `vmup prune` runs (one was killed), then run the command again",
					u.o.Connect, u.o.Pool, basePruning(base)),
			}
		}
		if err := sleepCtx(ctx, pruneTokenPoll); err != nil {
			return err
		}
	}
}

// baseHeld says whether base may back the overlay just made on it: no
// prune is deciding on it, and it is there and complete (C1-C3 above).
func (u *vmRun) baseHeld(ctx context.Context, base string) (bool, error) {
	for i, vol := range []string{basePruning(base), baseMark(base), base} {
		there, err := u.virsh.VolExists(ctx, u.o.Pool, vol)
		if err != nil || there != (i > 0) {
			return false, err
		}
	}
	return true, nil
}
