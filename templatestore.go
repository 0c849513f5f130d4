// Provisioned templates on disk (issue 17): made whole by one rename, read strictly, held while cloned.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Layout, under the vmup home:
//
//	templates/                        0700
//	templates/KEY/                    a complete template, 0700
//	templates/KEY/record.json         its TemplateRecord, 0600 (it holds a login key)
//	templates/KEY/memory.save         the guest's memory (`virsh save`)
//	templates/KEY/disk-volume         the volume note its maker wrote (templateVolumeNote)
//	templates/KEY/last-used           its mtime is the last clone's time
//	templates/KEY.lock                flocked: exclusively by its maker and by
//	                                  prune, shared by each clone being made
//	templates/.making-KEY-PID-RAND/   a template being made
//	templates/.removing-KEY-RAND/     a template being removed
//
// A template's disk is a volume of the pool (templateDiskVolume). A dir of
// the two dot-names whose KEY.lock nobody holds is a crashed vmup's:
// cleanHalfMade deletes it and the volume its note names.

// templateFormat is the record's format this vmup writes and reads.
const templateFormat = 1

// TemplateRecord is record.json: what a clone needs to know of its template.
type TemplateRecord struct {
	Format int       `json:"format"`
	Key    string    `json:"key"`
	Made   time.Time `json:"made"`
	// Image is as the user named it, for display; ImageSHA256 its content.
	Image       string `json:"image"`
	ImageSHA256 string `json:"image_sha256"`
	Playbook    string `json:"playbook,omitempty"` // for display
	Connect     string `json:"connect"`
	Pool        string `json:"pool"`
	DiskVolume  string `json:"disk_volume"`
	DiskBytes   int64  `json:"disk_bytes"`   // the disk file's size when made
	MemoryBytes int64  `json:"memory_bytes"` // memory.save's size
	Network     string `json:"network"`
	SourceVM    string `json:"source_vm"`
	SourceUUID  string `json:"source_uuid"`
	// SourceXML is the saved domain's definition (`virsh save-image-dumpxml`).
	SourceXML string `json:"source_xml"`
	User      string `json:"user"`
	// LoginKey is the OpenSSH private key the guest authorizes: a secret.
	LoginKey string `json:"login_key"`
	// HostPublicKey is the guest's host key line, pinned until a clone has its own.
	HostPublicKey string `json:"host_public_key"`
	InstanceID    string `json:"instance_id"` // the template guest's cloud-init instance-id
	MemoryMiB     int    `json:"memory"`
	CPUs          int    `json:"cpus"`
	// BaseVolume is the base the template's disk is an overlay on; DomainType
	// the clone's (in the key).
	BaseVolume string `json:"base_volume"`
	DomainType string `json:"domain_type"`
	// The save image's header as libvirt wrote it (saveimage.go): each clone
	// writes its own XML into it, in this length, with this cookie.
	SaveDataLen    uint32 `json:"save_data_len"`
	SaveWasRunning uint32 `json:"save_was_running"`
	SaveCookie     string `json:"save_cookie"`
}

// diskOnly: the template is its disk alone, and a clone boots from it. A
// memory state keeps the guest's NIC and DHCP lease, so a clone on a shared
// network (nat) would have its template's MAC and address.
func (r *TemplateRecord) diskOnly() bool { return r.Network != "user" }

var (
	// errNoTemplate: no template of the key (a half-made one is none).
	errNoTemplate = errors.New("no template of this key")
	// errTemplateDamaged: one is there but is not to be trusted.
	errTemplateDamaged = errors.New("template damaged")
	// errTemplateBusy: another vmup is making (or removing) it.
	errTemplateBusy = errors.New("template busy")
	// errTemplateExists: beginTemplate found it complete.
	errTemplateExists = errors.New("template exists")
)

// templateError is a message with a hint, told apart by its sentinel.
type templateError struct {
	msg, hint string
	kind      error
}

func (e *templateError) Error() string { return e.msg }
func (e *templateError) Hint() string  { return e.hint }
func (e *templateError) Unwrap() error { return e.kind }

func templatesDir(home string) string          { return filepath.Join(home, "templates") }
func templateDir(home, key string) string      { return filepath.Join(templatesDir(home), key) }
func templateLockPath(home, key string) string { return filepath.Join(templatesDir(home), key+".lock") }

// templateVolumePrefix begins every template disk's name; `up` refuses VM
// names that begin so, whose disks would look like one.
const templateVolumePrefix = "vmup-tmpl-"

var templateVolumeRE = lazyRE(`^vmup-tmpl-[0-9a-f]{16}-[0-9a-f]{8}\.qcow2$`)

// templateDiskVolume names a new template disk of key: random, so that a
// half-made one never has the name of a complete one.
func templateDiskVolume(key string) string {
	return templateVolumePrefix + key[:16] + "-" + randomHex(4) + ".qcow2"
}

func isTemplateVolume(name string) bool { return templateVolumeRE.MatchString(name) }

// templateVolumeOf says whether vol is a disk name templateDiskVolume gives
// key: no record or note read from disk makes vmup delete another volume.
func templateVolumeOf(key, vol string) bool {
	return isTemplateVolume(vol) && len(key) >= 16 && vol[len(templateVolumePrefix):][:16] == key[:16]
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func shortKey(key string) string { return key[:min(12, len(key))] }

// damaged is the error of a template that is not to be trusted.
func damaged(dir, key, problem string) error {
	return &templateError{
		msg: fmt.Sprintf("template %s is damaged: %s", shortKey(key), problem),
		hint: fmt.Sprintf("check %s, then remove it (`rm -r`) and its disk, if any, a volume %s%s-*.qcow2 of the pool (`virsh vol-delete`): vmup neither uses nor prunes it",
			dir, templateVolumePrefix, key[:min(16, len(key))]),
		kind: errTemplateDamaged,
	}
}

// fileProblem says what makes st no file of vmup's: not of the kind wanted,
// not the user's (libvirt's root writes memory.save under qemu:///system:
// rootToo), or writable by others; "" if none.
func fileProblem(st os.FileInfo, dir, rootToo bool) string {
	uid := int(st.Sys().(*syscall.Stat_t).Uid)
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		return "is a symbolic link"
	case dir && !st.IsDir():
		return "is not a directory"
	case !dir && !st.Mode().IsRegular():
		return "is not a regular file"
	case uid != os.Getuid() && !(rootToo && uid == 0):
		return fmt.Sprintf("belongs to uid %d, not to you (uid %d)", uid, os.Getuid())
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Sprintf("is writable by group or others (mode %04o)", st.Mode().Perm())
	}
	return ""
}

// checkTemplatesDir refuses a templates/ that is a link, another's, or
// writable by others: what is planted there could name volumes to delete.
func checkTemplatesDir(home string) error {
	dir := templatesDir(home)
	if err := checkOwnDir(dir); err != nil {
		return err
	}
	if st, err := os.Lstat(dir); err == nil && st.Mode().Perm()&0o022 != 0 {
		return &dirError{dir, fmt.Sprintf("is writable by group or others (mode %04o)", st.Mode().Perm())}
	}
	return nil
}

// checkTemplateKey refuses a key that is no path component vmup makes.
func checkTemplateKey(key string) error {
	if !sha256HexRE.MatchString(key) {
		return fmt.Errorf("template key %q is not 64 lowercase hex digits", key)
	}
	return nil
}

// readTemplate returns the complete template of key, errNoTemplate if there
// is none, or a damaged error (errTemplateDamaged) saying what is wrong.
func readTemplate(home, key string) (*TemplateRecord, error) {
	if err := checkTemplateKey(key); err != nil {
		return nil, err
	}
	if err := checkTemplatesDir(home); err != nil {
		return nil, err
	}
	return readTemplateAt(templateDir(home, key), key, time.Now())
}

func readTemplateAt(dir, key string, now time.Time) (*TemplateRecord, error) {
	st, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &templateError{msg: fmt.Sprintf("no template %s", shortKey(key)), kind: errNoTemplate}
	}
	if err != nil {
		return nil, err
	}
	if p := fileProblem(st, true, false); p != "" {
		return nil, damaged(dir, key, "its directory "+p)
	}
	// O_NOFOLLOW: the checks below are of the file read, not of a link's target.
	f, err := os.OpenFile(filepath.Join(dir, "record.json"), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, damaged(dir, key, "record.json is a symbolic link")
	}
	if err != nil {
		return nil, damaged(dir, key, "record.json cannot be read: "+err.Error())
	}
	defer f.Close()
	st, err = f.Stat()
	if err != nil {
		return nil, err
	}
	if p := fileProblem(st, false, false); p != "" {
		return nil, damaged(dir, key, "record.json "+p)
	}
	if st.Mode().Perm()&0o077 != 0 {
		// As ssh refuses such a private key.
		return nil, damaged(dir, key, fmt.Sprintf("record.json is readable by others (mode %04o), and holds a login key", st.Mode().Perm()))
	}
	data, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, damaged(dir, key, "record.json: "+err.Error())
	}
	var rec TemplateRecord
	if err := decodeStrict(data, &rec); err != nil {
		return nil, damaged(dir, key, "record.json does not parse: "+err.Error())
	}
	if err := validateTemplate(&rec, key, now); err != nil {
		return nil, damaged(dir, key, "record.json: "+err.Error())
	}
	st, err = os.Lstat(filepath.Join(dir, "memory.save"))
	switch {
	case rec.diskOnly() && errors.Is(err, os.ErrNotExist):
	case rec.diskOnly():
		return nil, damaged(dir, key, "memory.save is there, but the record is of a template of its disk alone")
	case errors.Is(err, os.ErrNotExist):
		return nil, damaged(dir, key, "memory.save is missing")
	case err != nil:
		return nil, damaged(dir, key, "memory.save: "+err.Error())
	}
	if !rec.diskOnly() {
		if p := fileProblem(st, false, true); p != "" {
			return nil, damaged(dir, key, "memory.save "+p)
		}
		if st.Size() != rec.MemoryBytes {
			return nil, damaged(dir, key, fmt.Sprintf("memory.save has %d bytes, the record says %d", st.Size(), rec.MemoryBytes))
		}
	}
	// The note is what a crashed prune's leftover is cleaned by.
	n, err := readVolumeNote(dir, key)
	if errors.Is(err, os.ErrNotExist) {
		return nil, damaged(dir, key, "disk-volume is missing")
	}
	if err != nil {
		return nil, damaged(dir, key, err.Error())
	}
	if *n != (templateVolumeNote{Connect: rec.Connect, Pool: rec.Pool, Volume: rec.DiskVolume}) {
		return nil, damaged(dir, key, fmt.Sprintf("disk-volume names %s, the record %s", n.Volume, rec.DiskVolume))
	}
	return &rec, nil
}

// validateTemplate checks every field of a record as strictly as the flag
// or journal field it came from: its values end up in argv, volume
// deletions and the clone's definition. One line per field.
func validateTemplate(r *TemplateRecord, key string, now time.Time) error {
	var bad error
	check := func(ok bool, format string, a ...any) {
		if !ok && bad == nil {
			bad = fmt.Errorf(format, a...)
		}
	}
	text := func(s string) bool { return s != "" && !strings.ContainsAny(s, "\x00\n") }

	check(r.Format == templateFormat, "format %d is not one this vmup knows (%d)", r.Format, templateFormat)
	check(r.Key == key && sha256HexRE.MatchString(key), "key %q is not the template's key %q", r.Key, key)
	check(r.Made.Year() >= 2000 && !r.Made.After(now.Add(time.Minute)), "made %s is no time a vmup made a template", r.Made.Format(time.RFC3339))
	check(text(r.Image), "image %q is no image", r.Image)
	check(sha256HexRE.MatchString(r.ImageSHA256), "image_sha256 %q is not a sha256", r.ImageSHA256)
	check(r.Playbook == "" || text(r.Playbook), "playbook %q is no path", r.Playbook)
	check(validConnect(r.Connect), "connect %q is not a libvirt URI", r.Connect)
	check(validPool(r.Pool), "pool %q is not a storage pool name", r.Pool)
	check(templateVolumeOf(key, r.DiskVolume), "disk_volume %q is not a volume vmup makes for this template", r.DiskVolume)
	check(r.DiskBytes > 0, "disk_bytes %d is no size", r.DiskBytes)
	check(r.Network == "user" || r.Network == "nat", "network %q is not nat or user", r.Network)
	check(r.diskOnly() || r.MemoryBytes > 0, "memory_bytes %d is no size", r.MemoryBytes)
	check(validName(r.SourceVM), "source_vm %q is not a VM name", r.SourceVM)
	check(uuidRE.MatchString(r.SourceUUID), "source_uuid %q is not a UUID", r.SourceUUID)
	check(r.diskOnly() || strings.HasPrefix(strings.TrimSpace(r.SourceXML), "<domain"), "source_xml is no domain definition")
	check(validLogin(r.User), "user %q is not a login name", r.User)
	check(strings.HasPrefix(r.LoginKey, "-----BEGIN OPENSSH PRIVATE KEY-----"), "login_key is no OpenSSH private key")
	check(text(r.HostPublicKey) && len(strings.Fields(r.HostPublicKey)) >= 2, "host_public_key %q is no public key line", r.HostPublicKey)
	check(instanceIDRE.MatchString(r.InstanceID), "instance_id %q is not one vmup makes", r.InstanceID)
	check(baseVolumeRE.MatchString(r.BaseVolume), "base_volume %q is not a base volume", r.BaseVolume)
	check(r.DomainType == "kvm" || r.DomainType == "qemu", "domain_type %q is not kvm or qemu", r.DomainType)
	if r.diskOnly() {
		check(r.MemoryBytes == 0 && r.SourceXML == "" && r.SaveDataLen == 0 && r.SaveWasRunning == 0 && r.SaveCookie == "",
			"a template on nat keeps its disk alone, yet the record holds a memory state")
	} else {
		check(r.SaveDataLen > 0 && r.SaveDataLen <= saveMaxData, "save_data_len %d is no header length", r.SaveDataLen)
		check(!strings.ContainsRune(r.SaveCookie, 0) && len(r.SaveCookie) < int(r.SaveDataLen), "save_cookie does not fit its header")
	}
	check(r.MemoryMiB >= minMemoryMiB && r.MemoryMiB <= maxMemoryMiB, "memory %d is out of range", r.MemoryMiB)
	check(r.CPUs >= minCPUs && r.CPUs <= maxCPUs, "cpus %d is out of range", r.CPUs)
	return bad
}

// lockTemplateFile flocks KEY.lock (how: LOCK_EX or LOCK_SH), polling for
// at most patience. The file locked must be the one at the path: a remover
// unlinks it while holding it, and a lock on the unlinked one guards nothing.
func lockTemplateFile(home, key string, how int, patience time.Duration) (*os.File, error) {
	path := templateLockPath(home, key)
	deadline := time.Now().Add(patience)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, err
		}
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil && lockedAtPath(f, path):
			return f, nil
		case err == nil: // removed meanwhile: lock the file there now
			f.Close()
		case errors.Is(err, unix.EWOULDBLOCK) && time.Now().Before(deadline):
			f.Close()
			time.Sleep(5 * time.Millisecond)
		default:
			f.Close()
			return nil, err
		}
	}
}

func lockedAtPath(f *os.File, path string) bool {
	var held, atPath unix.Stat_t
	return unix.Fstat(int(f.Fd()), &held) == nil && unix.Lstat(path, &atPath) == nil &&
		held.Ino == atPath.Ino && held.Dev == atPath.Dev
}

// unlockTemplate releases an exclusive lock, and first removes the lock
// file when no template of key is left to guard (safe for the exclusive
// holder alone: see lockTemplateFile).
func unlockTemplate(f *os.File, home, key string) {
	if _, err := os.Lstat(templateDir(home, key)); errors.Is(err, os.ErrNotExist) {
		os.Remove(templateLockPath(home, key))
	}
	f.Close()
}

// templateLockHeld says whether a vmup holds KEY.lock, by a probe that
// makes no file. A lock that cannot be probed counts as held: nothing is
// cleaned on a doubt.
func templateLockHeld(home, key string) bool {
	f, err := os.OpenFile(templateLockPath(home, key), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		return true
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
}

// templateHoldWait is how long holdTemplate waits out a maker or a prune,
// each of which holds KEY.lock only while it writes or removes.
var templateHoldWait = 2 * time.Second

// holdTemplate keeps the template of key from prune while a clone is made
// of it: hold it until the clone's journal names the template. On success
// the template's dir is there (read it with readTemplate).
func holdTemplate(home, key string) (release func(), err error) {
	if err := checkTemplateKey(key); err != nil {
		return nil, err
	}
	if err := checkTemplatesDir(home); err != nil {
		return nil, err
	}
	none := &templateError{msg: fmt.Sprintf("no template %s", shortKey(key)), kind: errNoTemplate}
	if _, err := os.Lstat(templateDir(home, key)); errors.Is(err, os.ErrNotExist) {
		return nil, none // and no lock file made for nothing
	}
	lock, err := lockTemplateFile(home, key, unix.LOCK_SH, templateHoldWait)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil, &templateError{msg: fmt.Sprintf("template %s is busy: another vmup is making or removing it", shortKey(key)), kind: errTemplateBusy}
	}
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(templateDir(home, key)); errors.Is(err, os.ErrNotExist) {
		lock.Close() // pruned before the lock was had
		return nil, none
	}
	return func() { lock.Close() }, nil
}

// touchTemplate records a use of the template: last-used's mtime, which
// prune reads. The record is never rewritten for it.
func touchTemplate(home, key string) error {
	if err := checkTemplateKey(key); err != nil {
		return err
	}
	path := filepath.Join(templateDir(home, key), "last-used")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return &templateError{msg: fmt.Sprintf("no template %s", shortKey(key)), kind: errNoTemplate}
	}
	if err != nil {
		return err
	}
	f.Close()
	now := time.Now()
	return os.Chtimes(path, now, now)
}

// templateLastUsed is when a clone was last made of the template in dir,
// zero if never (or if last-used is not a plain file).
func templateLastUsed(dir string) time.Time {
	st, err := os.Lstat(filepath.Join(dir, "last-used"))
	if err != nil || !st.Mode().IsRegular() {
		return time.Time{}
	}
	return st.ModTime()
}
