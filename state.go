package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// Volumes are the VM's own volumes, each journalled before it is created:
	// vmup deletes no other volume of the VM's name.
	Volumes []string `json:"volumes,omitempty"`
	// UploadingBase names a shared base volume while it is uploaded: if this
	// run dies, the volume is partial and a later `up` deletes it.
	UploadingBase string    `json:"uploading_base,omitempty"`
	Updated       time.Time `json:"updated"`
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
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
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

// tryLock takes the lock or returns errLocked with the holder's pid (written
// into the lock file by the holder).
func tryLock(path string) (*Lock, int, error) {
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, pid, errLocked
		}
		return nil, 0, err
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Lock{f}, 0, nil
}

// waitLock polls for the lock until it is free or ctx ends.
func waitLock(ctx context.Context, path string) (*Lock, error) {
	for {
		l, _, err := tryLock(path)
		if !errors.Is(err, errLocked) {
			return l, err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, errLocked
		}
	}
}

// lockHolder says whether a process holds the lock, and its pid, without
// taking the lock for longer than the probe or writing to it.
func lockHolder(path string) (pid int, held bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return 0, false // closing f releases it
	}
	data, _ := os.ReadFile(path)
	pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	return pid, true
}

func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
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
