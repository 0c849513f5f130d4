package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Journal is state.json: what a later vmup needs to know about this VM,
// written on every phase change.
type Journal struct {
	// Version is the journal's format: 0 (absent) for one the previous
	// release wrote, which journalled no volumes.
	Version int    `json:"version,omitempty"`
	Name    string `json:"name"`
	// Phase is the last phase the owning `up` reached; FailedIn the phase it
	// failed in, so a later `up` knows whether to resume or start clean.
	Phase    Phase `json:"phase"`
	FailedIn Phase `json:"failed_in,omitzero"`
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
	Firmware      string   `json:"firmware,omitempty"` // bios (also for --kernel) or uefi
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
	ControlDir string `json:"control_dir,omitempty"`
	// DiskVolume is the volume the domain's disk is: empty for NAME.qcow2,
	// NAME-run.qcow2 once a disk-only provisioned state froze NAME.qcow2.
	DiskVolume string `json:"disk_volume,omitempty"`
	// Template is the key of the template the VM was cloned from: its disk
	// is an overlay on that template's.
	Template string `json:"template,omitempty"`
	// Provisioned is the state the first boot completed in, which `vmup
	// reset` brings back; nil when none was kept.
	Provisioned *Provisioned `json:"provisioned,omitempty"`
	// Created is when the VM was made (its first `up`); absent in journals
	// of a vmup before it, whose VMs have no known age.
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated"`
	// Env names the environment the VM was made in (envfile.go), so that
	// `status` there shows a VM the file no longer has.
	Env *JournalEnv `json:"env,omitempty"`
	// Run is the `vmup run` whose workload the guest's runner runs: set
	// before the runner starts, cleared once it ended or confirmed a stop,
	// so a run whose vmup died is seen and stopped (runorphan.go).
	Run *JournalRun `json:"run,omitempty"`
}

// JournalRun is a workload of `vmup run` in the VM: its run id, since when,
// and the vmup that started it.
type JournalRun struct {
	ID    string    `json:"id"`
	Since time.Time `json:"since"`
	PID   int       `json:"pid"`
}

// JournalEnv is a VM's environment: its name, the directory of its
// vmup.json (absolute), and the VM's name in that file.
type JournalEnv struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
	VM   string `json:"vm"`
}

// Provisioned is a VM's state as its first boot completed, and the settings
// it had then (a reset brings them back too).
type Provisioned struct {
	// Kind template: a clone's, whose template is its provisioned state.
	// Kind memory: an internal snapshot with the guest's memory
	// (provisionedSnapshot); disk: NAME.qcow2 frozen under NAME-run.qcow2,
	// and when NVRAM names the VM's NVRAM file (libvirt's definition names
	// it only while the VM runs), a copy of it in the state dir.
	Kind      string    `json:"kind"`
	NVRAM     string    `json:"nvram,omitempty"`
	Network   string    `json:"network"`
	SSHHost   string    `json:"ssh_host,omitempty"`
	SSHPort   int       `json:"ssh_port,omitempty"`
	Forwards  []string  `json:"forwards,omitempty"`
	Restrict  bool      `json:"restrict_network,omitempty"`
	CPUs      int       `json:"cpus"`
	MemoryMiB int       `json:"memory"`
	DiskGiB   int       `json:"disk"`
	Made      time.Time `json:"made"`
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
		return "", &hintedError{msg: "cannot find a home for vmup's state: " + err.Error(), hint: "set VMUP_HOME to a directory for it"}
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
func (p Paths) SSHConfig() string       { return p.File("ssh.config") }

// CompletedJournal is state.json as it reads once the first boot completed,
// written ahead while there is space, so that completing is a rename.
func (p Paths) CompletedJournal() string { return p.File("state.json.complete") }

// readJournal returns (nil, nil) when the VM has no journal, and a
// *journalError when it cannot be read or trusted.
func readJournal(p Paths) (*Journal, error) {
	data, err := os.ReadFile(p.Journal())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// Absent keys read as no phase, not as Preparing (whose value is 0).
	j := Journal{Phase: noPhase, FailedIn: noPhase}
	if err := decodeStrict(data, &j); err != nil {
		return nil, &journalError{name: p.Name(), problem: "is damaged: " + err.Error()}
	}
	if err := validateJournal(&j, p.Name()); err != nil {
		return nil, &journalError{name: p.Name(), problem: "is not valid: " + err.Error()}
	}
	if j.Version == 0 && len(j.Volumes) == 0 {
		// The previous release made its volumes under these names and
		// journalled none: they are this VM's.
		name := p.Name()
		j.Volumes = []string{name + ".qcow2", firstSeedVolume(name), laterSeedVolume(name), name + "-kernel", name + "-initrd"}
	}
	return &j, nil
}

// journalVersion is the format writeJournal writes.
const journalVersion = 2

// journalError is a state.json that cannot be read or is not to be trusted:
// nothing is run or deleted on its word.
type journalError struct{ name, problem string }

func (e *journalError) Error() string { return fmt.Sprintf("VM %s: state.json %s", e.name, e.problem) }
func (e *journalError) Hint() string {
	return fmt.Sprintf("run `vmup destroy %s` to remove the VM and its state", e.name)
}

var (
	uuidRE       = lazyRE(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	instanceIDRE = lazyRE(`^vmup-[a-z0-9-]+-[0-9]+$`)
)

const maxPID = 1 << 22 // the kernel's PID_MAX_LIMIT

// validateJournal checks every value of a journal as strictly as the flag it
// came from: state.json is a file anyone with the user's rights can edit, and
// its values end up in argv, volume deletions and signals. One line per field.
func validateJournal(j *Journal, name string) error {
	var bad error
	check := func(ok bool, format string, a ...any) {
		if !ok && bad == nil {
			bad = fmt.Errorf(format, a...)
		}
	}
	hasNUL := func(s string) bool { return strings.ContainsRune(s, 0) }
	unset := func(n int) bool { return n == 0 } // sizes are journalled once the domain is defined

	check(j.Version >= 0 && j.Version <= journalVersion, "version %d is newer than this vmup knows (%d)", j.Version, journalVersion)
	check(j.Name == name && validName(name), "name %q is not the VM's name %q", j.Name, name)
	check(j.PID >= 0 && j.PID <= maxPID, "pid %d is no process id", j.PID)
	check(j.PlaybookPGID >= 0 && j.PlaybookPGID <= maxPID, "playbook_pgid %d is no process group id", j.PlaybookPGID)
	check(j.SSHPort >= 0 && j.SSHPort <= 65535, "ssh_port %d is no port", j.SSHPort)
	check(j.SSHHost == "" || net.ParseIP(j.SSHHost) != nil, "ssh_host %q is not an IP address", j.SSHHost)
	check(validLogin(j.User), "user %q is not a login name", j.User)
	check(j.Network == "nat" || j.Network == "user", "network %q is not nat or user", j.Network)
	check(validConnect(j.Connect), "connect %q is not a libvirt URI", j.Connect)
	check(validPool(j.Pool), "pool %q is not a storage pool name", j.Pool)
	for _, f := range j.Forwards {
		_, err := parseForward(f)
		check(err == nil, "forwards: %q is not [ADDR:]HOST:GUEST", f)
	}
	check(unset(j.CPUs) || j.CPUs >= minCPUs && j.CPUs <= maxCPUs, "cpus %d is out of range", j.CPUs)
	check(unset(j.MemoryMiB) || j.MemoryMiB >= minMemoryMiB && j.MemoryMiB <= maxMemoryMiB, "memory %d is out of range", j.MemoryMiB)
	check(unset(j.DiskGiB) || j.DiskGiB >= minDiskGiB && j.DiskGiB <= maxDiskGiB, "disk %d is out of range", j.DiskGiB)
	check(j.Playbook == "" || filepath.IsAbs(j.Playbook) && !hasNUL(j.Playbook), "playbook %q is not an absolute path", j.Playbook)
	check(!slices.ContainsFunc(j.PlaybookArgs, hasNUL), "playbook_args hold a NUL byte")
	check(!j.Restrict || j.Network == "user", "restrict_network is set on network %q", j.Network)
	check(j.DomainType == "" || j.DomainType == "kvm" || j.DomainType == "qemu", "domain_type %q is not kvm or qemu", j.DomainType)
	check(j.Firmware == "" || j.Firmware == "bios" || j.Firmware == "uefi" && !j.Kernel, "firmware %q is not bios or uefi", j.Firmware)
	check(j.UUID == "" || uuidRE.MatchString(j.UUID), "uuid %q is not a UUID", j.UUID)
	check(j.InstanceID == "" || instanceIDRE.MatchString(j.InstanceID), "instance_id %q is not one vmup makes", j.InstanceID)
	check(!hasNUL(j.Cmdline), "cmdline holds a NUL byte")
	check(j.BaseVolume == "" || baseVolumeRE.MatchString(j.BaseVolume), "base_volume %q is not a vmup base volume", j.BaseVolume)
	check(j.UploadingBase == "" || baseVolumeRE.MatchString(j.UploadingBase), "uploading_base %q is not a vmup base volume", j.UploadingBase)
	check(j.SeedVolume == "" || validVMVolume(name, j.SeedVolume), "seed_volume %q is not a volume vmup makes for VM %s", j.SeedVolume, name)
	for _, v := range j.Volumes {
		check(validVMVolume(name, v), "volumes: %q is not a volume vmup makes for VM %s", v, name)
	}
	// By shape only: TMPDIR may differ between runs; what is used is checked
	// again (validControlDir: owner, mode, no symlink) and a stale one ignored.
	check(j.DiskVolume == "" || j.DiskVolume == runDiskVolume(name), "disk_volume %q is not a volume vmup makes for VM %s", j.DiskVolume, name)
	check(j.Template == "" || sha256HexRE.MatchString(j.Template), "template %q is not a template's key", j.Template)
	if p := j.Provisioned; p != nil {
		check(p.Kind == "memory" || p.Kind == "disk" || p.Kind == "template",
			"provisioned: kind %q is not memory, disk or template", p.Kind)
		check(p.NVRAM == "" || p.Kind == "disk" && validNVRAMPath(name, j.Connect, p.NVRAM), "provisioned: nvram %q is not the NVRAM of VM %s", p.NVRAM, name)
		check(p.Network == "nat" || p.Network == "user", "provisioned: network %q is not nat or user", p.Network)
		check(p.SSHHost == "" || net.ParseIP(p.SSHHost) != nil, "provisioned: ssh_host %q is not an IP address", p.SSHHost)
		check(p.SSHPort >= 0 && p.SSHPort <= 65535, "provisioned: ssh_port %d is no port", p.SSHPort)
		check(!p.Restrict || p.Network == "user", "provisioned: restrict_network is set on network %q", p.Network)
		for _, f := range p.Forwards {
			_, err := parseForward(f)
			check(err == nil, "provisioned: forwards: %q is not [ADDR:]HOST:GUEST", f)
		}
		check(p.CPUs >= minCPUs && p.CPUs <= maxCPUs, "provisioned: cpus %d is out of range", p.CPUs)
		check(p.MemoryMiB >= minMemoryMiB && p.MemoryMiB <= maxMemoryMiB, "provisioned: memory %d is out of range", p.MemoryMiB)
		check(p.DiskGiB >= minDiskGiB && p.DiskGiB <= maxDiskGiB, "provisioned: disk %d is out of range", p.DiskGiB)
		check(j.FirstBootDone, "provisioned is set before the first boot completed")
		// What each kind is made of: a reset trusts it to be there.
		check(p.Kind == provisionedKind(j), "provisioned: kind %q is not what firmware %q keeps", p.Kind, j.Firmware)
		check(p.Kind != "disk" || j.DiskVolume == runDiskVolume(name), "provisioned: a disk state without its disk_volume %q", runDiskVolume(name))
		check(p.Network != "user" || p.SSHPort > 0, "provisioned: network user without an ssh_port")
	}
	// Not compared with the clock or with updated: a clock set back since
	// would make the journal invalid, for no more than a wrong age.
	check(j.Created.IsZero() || j.Created.Year() >= 2000, "created %s is no time a vmup made a VM", j.Created.Format(time.RFC3339))
	check(j.ControlDir == "" || filepath.IsAbs(j.ControlDir) && filepath.Clean(j.ControlDir) == j.ControlDir &&
		strings.HasPrefix(filepath.Base(j.ControlDir), "vmup-"), "control_dir %q is not one vmup makes", j.ControlDir)
	if r := j.Run; r != nil {
		check(validRunID(r.ID) == nil && r.PID > 0 && r.PID <= maxPID, "run: id %q or pid %d is not one vmup writes", r.ID, r.PID)
	}
	if e := j.Env; e != nil {
		check(validName(e.Name) && validName(e.VM) && e.Name+"-"+e.VM == name, "env: %q and vm %q do not make the VM's name %q", e.Name, e.VM, name)
		check(filepath.IsAbs(e.Dir) && !hasNUL(e.Dir), "env: dir %q is not an absolute path", e.Dir)
	}
	return bad
}

// writeJournal replaces state.json atomically: a crash leaves the old or the new one.
func writeJournal(p Paths, j *Journal) error {
	j.Version, j.Updated = journalVersion, time.Now().UTC()
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.Journal(), append(data, '\n'), 0o600)
}

// prepareCompletion writes the journal that commitCompletion puts in place.
func prepareCompletion(p Paths, j Journal) error {
	j.FirstBootDone, j.FailedIn, j.PlaybookPGID = true, noPhase, 0
	j.Version, j.Updated = journalVersion, time.Now().UTC()
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

// ensureDir makes dir and its missing parents 0700. A directory that exists
// is left as it is: vmup never chmods what it did not create.
func ensureDir(dir string) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		err := os.Mkdir(missing[i], 0o700)
		if errors.Is(err, os.ErrExist) {
			continue // made by someone else meanwhile: not ours to chmod
		}
		if err != nil {
			return err
		}
		if err := os.Chmod(missing[i], 0o700); err != nil { // whatever the umask
			return err
		}
	}
	return nil
}

// dirError is a state directory vmup refuses to use.
type dirError struct{ path, why string }

func (e *dirError) Error() string { return "state directory " + e.path + " " + e.why }
func (e *dirError) Hint() string {
	return "move this one away, or set VMUP_HOME elsewhere: vmup keeps its state only in directories of its own"
}

// checkOwnDir accepts a directory that is missing (vmup makes it) or is a
// real directory of this user: a symlink would carry keys and chmods elsewhere.
func checkOwnDir(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	uid := int(st.Sys().(*syscall.Stat_t).Uid)
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		return &dirError{path, "is a symbolic link"}
	case !st.IsDir():
		return &dirError{path, "is not a directory"}
	case uid != os.Getuid():
		return &dirError{path, fmt.Sprintf("belongs to uid %d, not to you (uid %d)", uid, os.Getuid())}
	}
	return nil
}

// checkStateDirs checks every directory of VMUP_HOME a command on this VM uses,
// before it reads or writes anything there.
func checkStateDirs(p Paths) error {
	for _, d := range []string{filepath.Join(p.Home, "vms"), p.Dir, filepath.Dir(p.Lock), filepath.Join(p.Home, "cache")} {
		if err := checkOwnDir(d); err != nil {
			return err
		}
	}
	return nil
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
