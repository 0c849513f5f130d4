package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Journal is state.json: what a later vmup needs to know about this VM,
// written on every phase change.
type Journal struct {
	Name string `json:"name"`
	// Phase is the last phase the owning `up` reached; FailedIn the phase it
	// failed in, so a later `up` knows whether to resume or start clean.
	Phase    string `json:"phase"`
	FailedIn string `json:"failed_in,omitempty"`
	// FirstBootDone decides, alone, whether an interrupt may ever wipe this VM.
	FirstBootDone bool     `json:"first_boot_done"`
	PID           int      `json:"pid,omitempty"`
	PlaybookPGID  int      `json:"playbook_pgid,omitempty"`
	SSHPort       int      `json:"ssh_port,omitempty"`
	SSHHost       string   `json:"ssh_host,omitempty"`
	User          string   `json:"user"`
	Network       string   `json:"network"`
	Connect       string   `json:"connect"`
	Pool          string   `json:"pool"`
	Forwards      []string `json:"forwards,omitempty"`
	CPUs          int      `json:"cpus"`
	MemoryMiB     int      `json:"memory"`
	DiskGiB       int      `json:"disk"`
	Playbook      string   `json:"playbook,omitempty"`
	PlaybookArgs  []string `json:"playbook_args,omitempty"`
	NoProvision   bool     `json:"no_provision,omitempty"`
	Restrict      bool     `json:"restrict_network,omitempty"`
	DomainType    string   `json:"domain_type,omitempty"`
	UUID          string   `json:"uuid,omitempty"`
	InstanceID    string   `json:"instance_id,omitempty"`
	Kernel        bool     `json:"kernel,omitempty"`
	Initrd        bool     `json:"initrd,omitempty"`
	Cmdline       string   `json:"cmdline,omitempty"`
	BaseVolume    string   `json:"base_volume,omitempty"`
	// SeedVolume is the seed the domain boots with: the first-boot seed
	// (empty: NAME-seed.iso) until the first boot completed, then the seed
	// of later boots.
	SeedVolume string `json:"seed_volume,omitempty"`
	// Volumes are the VM's own volumes, each journalled before it is created:
	// vmup deletes no other volume of the VM's name.
	Volumes []string `json:"volumes,omitempty"`
	// UploadingBase names a shared base volume while it is uploaded: if this
	// run dies, the volume is partial and a later `up` deletes it.
	UploadingBase string `json:"uploading_base,omitempty"`
	// ControlDir is the private dir of the ControlMaster's socket while an
	// up runs, when the state dir's path is too long for a socket.
	ControlDir string    `json:"control_dir,omitempty"`
	Updated    time.Time `json:"updated"`
}

// Paths names every file vmup keeps for one VM.
type Paths struct {
	Home, Dir, Lock string
}

func (p Paths) Name() string { return filepath.Base(p.Dir) }

func vmupHome() (string, error) {
	if h := os.Getenv("VMUP_HOME"); h != "" {
		return h, nil
	}
	if x := os.Getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "vmup"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home for vmup's state: %w (set VMUP_HOME)", err)
	}
	return filepath.Join(home, ".local", "state", "vmup"), nil
}

func pathsFor(home, name string) Paths {
	return Paths{
		Home: home,
		Dir:  filepath.Join(home, "vms", name),
		Lock: filepath.Join(home, "locks", name+".lock"),
	}
}

func (p Paths) File(name string) string { return filepath.Join(p.Dir, name) }
func (p Paths) Journal() string         { return p.File("state.json") }
func (p Paths) Key() string             { return p.File("id_ed25519") }
func (p Paths) KnownHosts() string      { return p.File("known_hosts") }
func (p Paths) Inventory() string       { return p.File("inventory.yml") }
func (p Paths) ControlSocket() string   { return p.File("ssh.sock") }
func (p Paths) Console() string         { return p.File("console.log") }
func (p Paths) Logs() string            { return p.File("logs") }

// CompletedJournal is state.json as it reads once the first boot completed,
// written ahead while there is space, so that completing is a rename.
func (p Paths) CompletedJournal() string { return p.File("state.json.complete") }

// readJournal returns (nil, nil) when the VM has no journal.
func readJournal(p Paths) (*Journal, error) {
	data, err := os.ReadFile(p.Journal())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var j Journal
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("%s is damaged: %w", p.Journal(), err)
	}
	return &j, nil
}

// writeJournal replaces state.json atomically: a crash leaves the old or the new one.
func writeJournal(p Paths, j *Journal) error {
	j.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.Journal(), append(data, '\n'), 0o600)
}

// prepareCompletion writes the journal that commitCompletion puts in place.
func prepareCompletion(p Paths, j Journal) error {
	j.FirstBootDone, j.FailedIn, j.PlaybookPGID = true, "", 0
	j.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.CompletedJournal(), append(data, '\n'), 0o600)
}

// commitCompletion makes the prepared journal state.json: a rename needs no
// free space, and after the directory's fsync it survives a crash.
func commitCompletion(p Paths) error {
	if err := os.Rename(p.CompletedJournal(), p.Journal()); err != nil {
		return err
	}
	return syncDir(p.Dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// Lock is an flock on a file; the kernel drops it when the process dies, so a
// killed vmup never leaves a VM locked.
type Lock struct{ f *os.File }

var errLocked = errors.New("locked")

// lockRecord is what a lock's holder writes into the lock file once it has
// the lock: "PID STARTTIME COMMAND". The start time tells that process from
// a later one that got its pid; the command (up, down, destroy, provision)
// says what it is doing, as only an `up` is ever asked to stop.
type lockRecord struct {
	PID     int
	Start   uint64
	Command string
}

var lockCommands = []string{"up", "down", "destroy", "provision"}

// parseLockRecord accepts exactly what tryLock writes; anything else (an
// older vmup's bare pid, a half-written file) is no record.
func parseLockRecord(data []byte) (lockRecord, bool) {
	f := strings.Fields(string(data))
	if len(f) != 3 || !slices.Contains(lockCommands, f[2]) {
		return lockRecord{}, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return lockRecord{}, false
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return lockRecord{}, false
	}
	return lockRecord{PID: pid, Start: start, Command: f[2]}, true
}

// alive says whether the recorded process still runs: its pid names a
// process that started when the record says.
func (r lockRecord) alive() bool {
	start, err := procStart(r.PID)
	return r.PID > 0 && err == nil && start == r.Start
}

// describe names the holder for a message; a record that proves nothing
// names nobody.
func (r lockRecord) describe() string {
	if r.Command == "" || !r.alive() {
		return "another vmup"
	}
	return fmt.Sprintf("vmup %s (pid %d)", r.Command, r.PID)
}

// procStart is when the process started (field 22 of /proc/PID/stat, in
// clock ticks since boot). The fields are counted after the last ')': the
// command name before it may hold spaces and parentheses.
func procStart(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:])) // f[0] is field 3
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// tryLock takes the lock for cmd and records the taker, or returns errLocked
// with the holder's pid as its record names it (0 if it names none).
func tryLock(path, cmd string) (*Lock, int, error) {
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		rec, _ := parseLockRecord(data)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, rec.PID, errLocked
		}
		return nil, 0, err
	}
	start, _ := procStart(os.Getpid())
	rec := fmt.Sprintf("%d %d %s\n", os.Getpid(), start, cmd)
	// Written before the old length is cut: a reader never sees it empty.
	f.WriteAt([]byte(rec), 0)
	f.Truncate(int64(len(rec)))
	return &Lock{f}, 0, nil
}

// waitLock polls for the lock until it is free or ctx ends.
func waitLock(ctx context.Context, path, cmd string) (*Lock, error) {
	for {
		l, _, err := tryLock(path, cmd)
		if !errors.Is(err, errLocked) {
			return l, err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, errLocked
		}
	}
}

// lockHolder says whether a process holds the lock, and what its record
// says, without taking the lock for longer than the probe or writing to it.
func lockHolder(path string) (rec lockRecord, held bool) {
	f, err := os.Open(path)
	if err != nil {
		return lockRecord{}, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return lockRecord{}, false // closing f releases it
	}
	data, _ := os.ReadFile(path)
	rec, _ = parseLockRecord(data)
	return rec, true
}

// Unlock empties the record first: a holder that let go is named by no
// lock file, even while it still runs.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Truncate(0)
		l.f.Close()
		l.f = nil
	}
}

// listVMs names every VM with a state dir.
func listVMs(home string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(home, "vms"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && validName(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names, err
}
