package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/sys/unix"
)

// Options are one command's settings: vmup.json first, flags over it.
type Options struct {
	Name         string
	Image        string
	ImageSHA256  string
	Playbook     string
	PlaybookArgs []string // after `--`, verbatim
	CPUs         int
	MemoryMiB    int
	DiskGiB      int
	Forwards     []Forward
	Network      string
	Connect      string
	Pool         string
	DomainType   string
	Kernel       string
	Firmware     string // bios or uefi: how a disk without --kernel boots
	Initrd       string
	Cmdline      string
	User         string
	Detach       bool
	NoProvision  bool
	// Template: a first boot keeps its provisioned guest as the template of
	// its key, and a VM whose key has one is cloned from it (template*.go).
	Template bool
	// KeepTemplates: prune keeps an unbacked template used within this long.
	KeepTemplates   time.Duration
	Reset           bool
	Force           bool
	SuspendOnStop   bool // a stop of a foreground up saves the VM instead of shutting it down
	DiscardSaved    bool // a re-up of a saved VM boots it afresh, losing its memory
	Suspend         bool // down saves the VM instead of shutting it down
	JSON            bool
	RestrictNetwork bool
	BootTimeout     time.Duration
	ShutdownTimeout time.Duration
	// CloudInitErrors says what cloud-init's errors in the first boot do:
	// "warn" goes on to the playbook, "fail" fails the boot (VM kept).
	CloudInitErrors string
	Names           []string // inventory: the VMs to list, all when empty
	Format          string   // inventory: yaml or json
	Follow          bool     // logs -f
	DryRun          bool     // prune --dry-run
	// Copy is what cp copies where (cpcmd.go).
	Copy *copySpec
	// Env is the environment of vmup.json's "vms" (envfile.go); EnvVM is
	// the VM's name in it (Name is then the full ENV-NAME), Groups its groups.
	Env      *Environment
	EnvVM    string
	Groups   []string
	Parallel int // up of an environment: how many first boots at once (0: as the host takes)
	// vmup run: --sync HOST_DIR[:GUEST_DIR], --collect GUEST_PATH, --results
	// DIR, --teardown PLAYBOOK, --destroy passing|always|never, --stop-timeout.
	Sync, Collect []string
	Results       string
	Teardown      string
	Workload      string // --workload PLAYBOOK: the workload is a playbook over the VMs, run from this host
	DestroyWhen   string
	StopTimeout   time.Duration
	// set names the settings given by a flag or vmup.json, so a re-up knows
	// which of the VM's own settings were left alone.
	set map[string]bool
}

type Forward struct {
	Addr        string
	Host, Guest int
}

func (f Forward) String() string { return fmt.Sprintf("%s:%d:%d", f.Addr, f.Host, f.Guest) }

var (
	nameRE  = lazyRE(`^[a-z0-9][a-z0-9-]{0,62}$`)
	loginRE = lazyRE(`^[a-z_][a-z0-9_-]{0,31}$`)
	poolRE  = lazyRE(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

func validName(s string) bool  { return nameRE.MatchString(s) }
func validLogin(s string) bool { return loginRE.MatchString(s) }
func validPool(s string) bool  { return poolRE.MatchString(s) }

// validConnect accepts what can be a libvirt URI and never a virsh option.
func validConnect(s string) bool {
	return s != "" && s[0] != '-' && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) })
}

// Bounds of --cpus, --memory (MiB) and --disk (GiB); they also keep the disk's
// size in bytes far from overflowing an int64.
const (
	minCPUs, maxCPUs           = 1, 512
	minMemoryMiB, maxMemoryMiB = 64, 4 << 20 // 4 TiB
	minDiskGiB, maxDiskGiB     = 1, 16 << 10 // 16 TiB
)

// usageError is a mistake found before anything was created: exit 2.
type usageError struct{ msg, hint string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Hint() string  { return e.hint }

func usagef(hint, format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...), hint: hint}
}

func parseForward(s string) (Forward, error) {
	parts := strings.Split(s, ":")
	f := Forward{Addr: "127.0.0.1"}
	switch len(parts) {
	case 2:
	case 3:
		f.Addr = parts[0]
		parts = parts[1:]
		if net.ParseIP(f.Addr) == nil {
			return f, fmt.Errorf("--forward %q: %q is not an IP address", s, f.Addr)
		}
	default:
		return f, fmt.Errorf("--forward %q: want [ADDR:]HOST:GUEST, e.g. 8080:80", s)
	}
	var err error
	if f.Host, err = parsePort(parts[0]); err != nil {
		return f, fmt.Errorf("--forward %q: host port: %v", s, err)
	}
	if f.Guest, err = parsePort(parts[1]); err != nil {
		return f, fmt.Errorf("--forward %q: guest port: %v", s, err)
	}
	return f, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return n, nil
}

// fileConfig mirrors vmup.json: field names are the long flag names.
type fileConfig struct {
	Name            *string  `json:"name"`
	Image           *string  `json:"image"`
	ImageSHA256     *string  `json:"image-sha256"`
	Playbook        *string  `json:"playbook"`
	PlaybookArgs    []string `json:"playbook-args"`
	CPUs            *int     `json:"cpus"`
	Memory          *int     `json:"memory"`
	Disk            *int     `json:"disk"`
	Forward         []string `json:"forward"`
	Network         *string  `json:"network"`
	Connect         *string  `json:"connect"`
	Pool            *string  `json:"pool"`
	DomainType      *string  `json:"domain-type"`
	Kernel          *string  `json:"kernel"`
	Firmware        *string  `json:"firmware"`
	Initrd          *string  `json:"initrd"`
	Cmdline         *string  `json:"cmdline"`
	User            *string  `json:"user"`
	Detach          *bool    `json:"detach"`
	NoProvision     *bool    `json:"no-provision"`
	Template        *bool    `json:"template"`
	RestrictNetwork *bool    `json:"restrict-network"`
	BootTimeout     *string  `json:"boot-timeout"`
	ShutdownTimeout *string  `json:"shutdown-timeout"`
	CloudInitErrors *string  `json:"cloud-init-errors"`
	SuspendOnStop   *bool    `json:"suspend-on-stop"`
	Parallel        *int     `json:"parallel"`
	// An environment (envfile.go): its VMs by their names in the file, and
	// a VM's groups in the environment's inventory.
	VMs    map[string]json.RawMessage `json:"vms"`
	Groups []string                   `json:"groups"`
}

const configFile = "vmup.json"

// defaultURI is libvirt's own default connection, resolved as virsh does:
// $LIBVIRT_DEFAULT_URI, else uri_default in the libvirt.conf of whoever runs
// vmup, else qemu:///system for root and qemu:///session for anyone else.
func defaultURI(euid int) string {
	if uri := os.Getenv("LIBVIRT_DEFAULT_URI"); uri != "" {
		return uri
	}
	conf := "/etc/libvirt/libvirt.conf"
	if euid != 0 {
		dir := os.Getenv("XDG_CONFIG_HOME")
		if dir == "" {
			home, _ := os.UserHomeDir()
			dir = filepath.Join(home, ".config")
		}
		conf = filepath.Join(dir, "libvirt", "libvirt.conf")
	}
	if data, err := os.ReadFile(conf); err == nil {
		if m := uriDefaultRE.FindSubmatch(data); m != nil {
			return string(m[1])
		}
	}
	if euid == 0 {
		return "qemu:///system"
	}
	return "qemu:///session"
}

var uriDefaultRE = lazyRE(`(?m)^\s*uri_default\s*=\s*"([^"]*)"`)

func defaultOptions() *Options {
	connect := defaultURI(os.Geteuid())
	return &Options{
		CPUs: 2, MemoryMiB: 2048, DiskGiB: 20, Connect: connect, Pool: "vmup",
		DomainType: "auto", Firmware: "bios", User: "vmup", BootTimeout: 5 * time.Minute, ShutdownTimeout: 60 * time.Second,
		CloudInitErrors: "warn", Results: "vmup-results", DestroyWhen: "passing", StopTimeout: 30 * time.Second,
		KeepTemplates: 7 * 24 * time.Hour,
		set:           map[string]bool{},
	}
}

// loadConfig applies vmup.json from the working directory, if there is one.
// One with "vms" is an environment: it is returned, and o gets none of it
// (each VM's Options are made by Environment.options).
func loadConfig(o *Options) (*Environment, error) {
	data, err := os.ReadFile(configFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, usagef("", "cannot read %s: %v", configFile, err)
	}
	var c fileConfig
	if err := decodeStrict(data, &c); err != nil {
		return nil, usagef("name the fields as the long flags, e.g. `{\"image\": \"debian.qcow2\", \"memory\": 4096}`",
			"%s: %v", configFile, err)
	}
	raw := map[string]json.RawMessage{}
	json.Unmarshal(data, &raw)
	if c.VMs != nil {
		return parseEnvironment(&c, raw)
	}
	if c.Groups != nil {
		return nil, usagef("put \"groups\" in a VM's entry of \"vms\"", "%s: \"groups\" belongs to a VM of an environment", configFile)
	}
	return nil, applyConfig(o, &c, raw)
}

// applyConfig sets o from one layer of vmup.json: its top level, or a VM's entry.
func applyConfig(o *Options, c *fileConfig, raw map[string]json.RawMessage) error {
	for k := range raw {
		o.set[k] = true
	}
	setStr := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	setInt := func(dst *int, src *int) {
		if src != nil {
			*dst = *src
		}
	}
	setBool := func(dst *bool, src *bool) {
		if src != nil {
			*dst = *src
		}
	}
	setStr(&o.Name, c.Name)
	setStr(&o.Image, c.Image)
	setStr(&o.ImageSHA256, c.ImageSHA256)
	setStr(&o.Playbook, c.Playbook)
	setInt(&o.CPUs, c.CPUs)
	setInt(&o.MemoryMiB, c.Memory)
	setInt(&o.DiskGiB, c.Disk)
	setStr(&o.Network, c.Network)
	setStr(&o.Connect, c.Connect)
	setStr(&o.Pool, c.Pool)
	setStr(&o.DomainType, c.DomainType)
	setStr(&o.Kernel, c.Kernel)
	setStr(&o.Firmware, c.Firmware)
	setStr(&o.Initrd, c.Initrd)
	setStr(&o.Cmdline, c.Cmdline)
	setStr(&o.User, c.User)
	setStr(&o.CloudInitErrors, c.CloudInitErrors)
	setBool(&o.Detach, c.Detach)
	setBool(&o.NoProvision, c.NoProvision)
	setBool(&o.Template, c.Template)
	setBool(&o.RestrictNetwork, c.RestrictNetwork)
	setBool(&o.SuspendOnStop, c.SuspendOnStop)
	setInt(&o.Parallel, c.Parallel)
	if c.PlaybookArgs != nil {
		o.PlaybookArgs = c.PlaybookArgs
	}
	if c.Forward != nil {
		o.Forwards = nil // a VM's own list replaces the defaults'
	}
	for _, s := range c.Forward {
		f, err := parseForward(s)
		if err != nil {
			return usagef("", "%s: %v", configFile, err)
		}
		o.Forwards = append(o.Forwards, f)
	}
	for _, d := range []struct {
		dst  *time.Duration
		src  *string
		name string
	}{{&o.BootTimeout, c.BootTimeout, "boot-timeout"}, {&o.ShutdownTimeout, c.ShutdownTimeout, "shutdown-timeout"}} {
		if d.src == nil {
			continue
		}
		v, err := time.ParseDuration(*d.src)
		if err != nil {
			return usagef("write durations as Go durations such as \"90s\" or \"5m\"", "%s: %s: %v", configFile, d.name, err)
		}
		*d.dst = v
	}
	return nil
}

// decodeStrict reads exactly one JSON object into v: unknown fields and
// anything after the object are errors, since vmup wrote or documented every key.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	end := dec.InputOffset()
	if err := dec.Decode(&json.RawMessage{}); err != io.EOF {
		return fmt.Errorf("unexpected data after the JSON object, which ends at byte %d", end)
	}
	return nil
}

// validateUp checks everything `up` can check before it creates anything.
func validateUp(o *Options) error {
	if err := requireName(o, "up"); err != nil {
		return err
	}
	if o.Network == "" {
		o.Network = "nat"
		if strings.HasPrefix(o.Connect, "qemu:///session") {
			o.Network = "user"
		}
	}
	switch {
	case o.Network != "nat" && o.Network != "user":
		return usagef("", "--network %q: want nat or user", o.Network)
	case o.DomainType != "auto" && o.DomainType != "kvm" && o.DomainType != "qemu":
		return usagef("", "--domain-type %q: want auto, kvm or qemu", o.DomainType)
	case o.CPUs < minCPUs || o.CPUs > maxCPUs:
		return usagef("", "--cpus %d: want %d to %d", o.CPUs, minCPUs, maxCPUs)
	case o.MemoryMiB < minMemoryMiB || o.MemoryMiB > maxMemoryMiB:
		return usagef("", "--memory %d: want %d to %d (MiB, up to 4 TiB)", o.MemoryMiB, minMemoryMiB, maxMemoryMiB)
	case o.DiskGiB < minDiskGiB || o.DiskGiB > maxDiskGiB:
		return usagef("", "--disk %d: want %d to %d (GiB, up to 16 TiB)", o.DiskGiB, minDiskGiB, maxDiskGiB)
	case o.BootTimeout <= 0 || o.ShutdownTimeout <= 0:
		return usagef("", "timeouts must be positive")
	case o.CloudInitErrors != "warn" && o.CloudInitErrors != "fail":
		return usagef("", "--cloud-init-errors %q: want warn or fail", o.CloudInitErrors)
	case o.Network == "nat" && o.Detach && len(o.Forwards) > 0:
		return usagef("use `--network user` for forwards that outlive vmup, or run `vmup up` in the foreground",
			"--network nat with --detach cannot keep --forward: the forwards would end with vmup")
	case o.RestrictNetwork && o.Network != "user":
		return usagef("", "--restrict-network needs --network user")
	case (o.Initrd != "" || o.Cmdline != "") && o.Kernel == "":
		return usagef("", "--initrd and --cmdline need --kernel")
	case o.Firmware != "bios" && o.Firmware != "uefi":
		return usagef("", "--firmware %q: want bios or uefi", o.Firmware)
	case o.Firmware == "uefi" && o.Kernel != "":
		return usagef("leave out --firmware uefi, or --kernel to boot the disk through UEFI",
			"--firmware uefi with --kernel: a kernel booted directly needs no firmware")
	case o.ImageSHA256 != "" && !regexp.MustCompile(`^[0-9a-fA-F]{64}$`).MatchString(o.ImageSHA256):
		return usagef("", "--image-sha256: want 64 hex digits")
	case !validLogin(o.User):
		return usagef("", "--user %q is not a valid login name", o.User)
	case !validConnect(o.Connect):
		return usagef("", "--connect %q is not a libvirt URI", o.Connect)
	case !validPool(o.Pool):
		return usagef("choose a pool name of letters, digits, '_', '.' and '-'", "--pool %q is not a storage pool name", o.Pool)
	case o.Template && o.Firmware == "uefi":
		return usagef("leave out --firmware uefi for templates", "--template with --firmware uefi: a clone would share its template's NVRAM")
	}
	for _, f := range []struct{ flag, path string }{
		{"--playbook", o.Playbook}, {"--kernel", o.Kernel}, {"--initrd", o.Initrd},
	} {
		if f.path == "" {
			continue
		}
		if err := checkRegular(f.flag, f.path); err != nil {
			return err
		}
	}
	o.Playbook, o.Kernel, o.Initrd = absPath(o.Playbook), absPath(o.Kernel), absPath(o.Initrd)
	if im, ok := distroImageNamed(o.Image); ok {
		// A name of the table is always the distributor's image (a file of
		// that name is ./NAME).
		if _, err := im.dirURL(); err != nil {
			return err
		}
	} else if o.Image != "" && !isURL(o.Image) {
		if _, err := os.Stat(o.Image); errors.Is(err, os.ErrNotExist) && !strings.Contains(o.Image, "/") {
			return usagef("give a file, a URL, or one of the names `vmup images` lists", "--image %s: no such file or image name", o.Image)
		}
		if err := checkRegular("--image", o.Image); err != nil {
			return err
		}
	}
	seen := map[int]bool{}
	for _, f := range o.Forwards {
		if seen[f.Host] {
			return usagef("", "host port %d is forwarded twice", f.Host)
		}
		seen[f.Host] = true
	}
	return nil
}

// checkRegular refuses a missing file, a directory, and a device or FIFO,
// whose reading (hashing /dev/zero) might never end.
func checkRegular(flag, path string) error {
	st, err := os.Stat(path)
	switch {
	case err != nil || st.IsDir():
		return usagef("", "%s %s: no such file", flag, path)
	case !st.Mode().IsRegular():
		return usagef("", "%s %s: not a regular file", flag, path)
	}
	return nil
}

// hostWarnings names the sizes given beyond what this host has: allowed
// (memory can be overcommitted), but seldom meant.
func hostWarnings(o *Options) []string {
	var warn []string
	if n := runtime.NumCPU(); o.set["cpus"] && o.CPUs > n {
		warn = append(warn, fmt.Sprintf("--cpus %d is more than this host has (%d)", o.CPUs, n))
	}
	var si unix.Sysinfo_t
	if o.set["memory"] && unix.Sysinfo(&si) == nil {
		total := uint64(si.Totalram) * uint64(si.Unit)
		if uint64(o.MemoryMiB)<<20 > total {
			have := fmt.Sprintf("%d GiB", (total+1<<29)>>30)
			if total < 1<<30 {
				have = fmt.Sprintf("%d MiB", total>>20)
			}
			warn = append(warn, fmt.Sprintf("--memory %d is more than this host has (%s)", o.MemoryMiB, have))
		}
	}
	return warn
}

func isURL(s string) bool { return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") }
