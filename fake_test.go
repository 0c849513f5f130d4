package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fakeWorld is a tiny libvirt, plus the guest's sshd, that the fake virsh,
// ssh and qemu-img answer from. Unit tests keep it in memory; the binary test
// keeps it in a file shared by the fake programs.
type fakeWorld struct {
	Domains map[string]string // name -> "running" / "shut off"
	Owned   map[string]bool
	Pools   map[string]bool
	// PoolInactive names the pools defined but not started yet.
	PoolInactive map[string]bool
	Volumes      map[string]bool // "pool/vol"
	// Content holds what vol-upload received, by "pool/vol".
	Content map[string][]byte
	// Backing is an overlay's backing store path, by "pool/vol".
	Backing map[string]string
	// MTime is when a volume's file was last written (UnixNano), by
	// "pool/vol": vol-dumpxml shows it as libvirt does for a dir pool.
	MTime map[string]int64
	// Uploader is the pid of a vol-upload still writing the volume, by
	// volume name: libvirt holds a volume while a stream writes it.
	Uploader map[string]int
	// Busy makes this many vol-deletes of "pool/vol" fail as libvirt does
	// while a job of a killed virsh still holds the volume.
	Busy map[string]int
	// ShutdownIgnored makes ACPI shutdown do nothing (a guest without acpid).
	ShutdownIgnored bool
	// ExternalStop makes the domain shut off after this many domstate calls.
	ExternalStop int
	// Uploaded names the volumes that hold uploaded content ("pool/vol").
	Uploaded map[string]bool
	// XML is each domain's last definition.
	XML map[string]string
	// Fail makes a virsh command fail: its words (without -c URI) joined by
	// spaces start with a key; the value is virsh's error text.
	Fail map[string]string
	// Snapshots are each domain's snapshots, "NAME internal" or "NAME external".
	Snapshots map[string][]string
	// ManagedSave names the domains with a managed save image.
	ManagedSave map[string]bool
	// SaveHangs makes managedsave run until virsh is killed (a huge guest on
	// a slow disk); SaveAborted counts the domjobabort calls that ended such a job.
	SaveHangs   bool
	SaveAborted int
	// SaveXML is the definition a managed save holds: the live one as saved.
	SaveXML map[string]string
	// StartFailed: the domain's last start failed, its reason "failed" (a
	// managed save stays, as libvirt keeps it).
	StartFailed map[string]bool
	// SnapshotXML is each snapshot's saved definition, by "domain/snapshot".
	SnapshotXML map[string]string
	// Live is each running domain's definition as it started: a define
	// while it runs changes only XML, the next start's.
	Live map[string]string
	// Frozen names the overlay each domain's disk was moved onto (--disk-only).
	Frozen map[string]string
	// NoAgent makes qemu-agent-command fail as for a guest without the agent.
	NoAgent bool
	// NoAgentExec makes guest-exec fail as for an agent that blocks it.
	NoAgentExec bool
	// NVRAMDir is where a UEFI domain's NVRAM lives; start makes it from a
	// template when it is missing, as libvirt does.
	NVRAMDir string
	// NVRAMFile, when set, is the NVRAM path a domain's definition names
	// instead of NVRAMDir's (a definition changed by someone with libvirt access).
	NVRAMFile map[string]string
	// SaveCompressed makes save images compressed, as a save_image_format
	// in qemu.conf does: libvirt reads them, vmup's header code does not.
	SaveCompressed bool
	// Saves and Restores name the domains `virsh save` and `virsh restore`
	// ran; Pauses those `virsh suspend` paused.
	Saves, Restores, Pauses []string
	// Identities counts the clone identity scripts the guest ran.
	Identities int
	// WrongHostKey: the guest's sshd serves another host key than the one
	// a connection that authenticates nothing (ProveHostKey) expects.
	WrongHostKey bool
	// CloudInit is the guest's cloud-init, as vmup's ssh commands find it.
	CloudInit fakeCloudInit
}

// fakeCloudInit answers what vmup asks the guest's cloud-init over ssh. By
// default it is Debian 12's 22.4, finished without errors.
type fakeCloudInit struct {
	// Running is how many probes of result.json still find cloud-init at
	// work; -1: it never finishes (an old cloud-init stuck on a bootcmd).
	Running int
	// Errors is what the finished run reports; EarlyErrors of them come from
	// a stage that ended while later ones still run.
	Errors      []string
	EarlyErrors int
	// Newer is a cloud-init since 23.4: extended_status, recoverable_errors,
	// and exit 2 when only those are there (degraded).
	Newer       bool
	Recoverable map[string][]string
	// Disabled is a guest whose cloud-init is disabled (it never writes result.json).
	Disabled bool
	// Result is result.json as the guest holds it, when not what cloud-init writes.
	Result string
}

// fakeReadSave reads a fake save image's header as libvirt does, compressed or not.
func fakeReadSave(path string) (*saveImage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) > 32 {
		binary.LittleEndian.PutUint32(data[28:], 0)
	}
	return readSaveHeader(bytes.NewReader(data), path)
}

// fakeGuestMemory is the memory stream a fake save image holds after its header.
const fakeGuestMemory = "QEVM fake guest memory"

// fakeResultJSON is where cloud-init says that all its stages are done.
const fakeResultJSON = "/run/cloud-init/result.json"

// guest answers a command run in the guest over ssh (the words after `--`).
// block says that it would not end by itself (a real guest would hang).
func (w *fakeWorld) guest(cmd []string) (stdout, stderr string, code int, block bool) {
	c := &w.CloudInit
	switch strings.Join(cmd, " ") {
	case "test -e " + fakeResultJSON:
		if c.Running != 0 || c.Disabled {
			if c.Running > 0 {
				c.Running--
			}
			return "", "", 1, false
		}
		return "", "", 0, false
	case "cat " + fakeResultJSON:
		if c.Running != 0 || c.Disabled {
			return "", "cat: " + fakeResultJSON + ": No such file or directory\n", 1, false
		}
		return c.result(), "", 0, false
	case "cloud-init status --format json":
		st, code := c.status()
		data, _ := json.MarshalIndent(st, "", "  ") // sorted keys, as cloud-init prints them
		return string(data) + "\n", "", code, false
	case "cloud-init status --wait":
		// 22.4 waits while it runs without errors, and returns as soon as
		// any stage logged one, while later stages still run.
		st, code := c.status()
		if st["status"] == "running" {
			if c.Running < 0 {
				return "", "", 0, true
			}
			c.Running = 0
			st, code = c.status()
		}
		return "...\nstatus: " + st["status"].(string) + "\n", "", code, false
	}
	return "", "", 0, false
}

// result is result.json of a finished cloud-init (all stages' errors).
func (c *fakeCloudInit) result() string {
	if c.Result != "" {
		return c.Result
	}
	v1 := map[string]any{"datasource": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]", "errors": append([]string{}, c.Errors...)}
	if c.Newer {
		v1["recoverable_errors"] = map[string][]string{}
		if c.Recoverable != nil {
			v1["recoverable_errors"] = c.Recoverable
		}
	}
	data, _ := json.MarshalIndent(map[string]any{"v1": v1}, "", " ")
	return string(data) + "\n"
}

// status is `cloud-init status --format json` and its exit code.
func (c *fakeCloudInit) status() (map[string]any, int) {
	running := c.Running != 0
	errs := c.Errors
	if running {
		errs = errs[:min(c.EarlyErrors, len(errs))]
	}
	status := "done"
	switch {
	case c.Disabled:
		status = "disabled"
	case len(errs) > 0:
		status = "error" // 22.4: errors win, also while later stages still run
	case running:
		status = "running"
	}
	st := map[string]any{"boot_status_code": "enabled-by-generator", "datasource": "nocloud",
		"detail": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]", "errors": append([]string{}, errs...),
		"last_update": "Thu, 01 Jan 1970 00:00:42 +0000", "status": status}
	code := 0
	if status == "error" {
		code = 1
	}
	if !c.Newer {
		st["_schema_version"] = "1"
		return st, code
	}
	phase := "done"
	if running {
		phase = "running"
	}
	st["extended_status"], st["recoverable_errors"] = status, map[string][]string{}
	switch {
	case status == "error":
		st["extended_status"] = "error - " + phase
	case len(c.Recoverable) > 0:
		st["extended_status"], st["recoverable_errors"], code = "degraded "+phase, c.Recoverable, 2
	}
	return st, code
}

func newFakeWorld() *fakeWorld {
	return &fakeWorld{Domains: map[string]string{}, Owned: map[string]bool{}, Pools: map[string]bool{}, Volumes: map[string]bool{},
		Uploaded: map[string]bool{}, XML: map[string]string{}, Fail: map[string]string{},
		Snapshots: map[string][]string{}, ManagedSave: map[string]bool{}, StartFailed: map[string]bool{}, SnapshotXML: map[string]string{}, SaveXML: map[string]string{}, Frozen: map[string]string{}, Live: map[string]string{},
		Content: map[string][]byte{}, Backing: map[string]string{}, Uploader: map[string]int{}, Busy: map[string]int{}}
}

// abbreviate keeps what a test asserts on: virsh without its -c URI, ssh
// without the option block that every call shares.
func abbreviate(args []string) []string {
	prog := filepath.Base(args[0])
	rest := args[1:]
	switch prog {
	case "virsh":
		if len(rest) >= 2 && rest[0] == "-c" {
			rest = rest[2:]
		}
	case "ssh":
		var kept []string
		for i := 0; i < len(rest); i++ {
			switch {
			case rest[i] == "-o" && i+1 < len(rest) && strings.HasPrefix(rest[i+1], "ControlMaster=yes"):
				kept = append(kept, "master")
				i++
			case rest[i] == "-o" || rest[i] == "-F" || rest[i] == "-p":
				i++
			case strings.Contains(rest[i], "@") || rest[i] == "-N":
			default:
				kept = append(kept, rest[i])
			}
		}
		rest = kept
	case "ansible-playbook":
		var kept []string
		for i := 0; i < len(rest); i++ {
			if rest[i] == "-i" {
				i++
				continue
			}
			kept = append(kept, filepath.Base(rest[i]))
		}
		rest = kept
	}
	return append([]string{prog}, rest...)
}

// virsh answers one virsh command line (without -c URI); stdin is what
// virsh would read for a FILE argument of /dev/stdin.
func (w *fakeWorld) virsh(args []string, stdin io.Reader) (stdout, stderr string, code int) {
	notFound := func(what, name string) (string, string, int) {
		return "", fmt.Sprintf("error: failed to get %s '%s'\nerror: %s not found", what, name, what), 1
	}
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	// Volume commands take --pool P VOL.
	poolVol := func() string {
		var pool, vol string
		for i := 1; i < len(args); i++ {
			if args[i] == "--pool" {
				pool = args[i+1]
				i++
			} else if vol == "" {
				vol = args[i]
			}
		}
		return pool + "/" + vol
	}
	for prefix, msg := range w.Fail {
		if strings.HasPrefix(strings.Join(args, " "), prefix) {
			return "", msg, 1
		}
	}
	switch args[0] {
	case "uri":
		return "qemu:///system", "", 0
	case "domcapabilities":
		return "", "error: KVM is not available", 1
	case "domstate":
		st, ok := w.Domains[arg(1)]
		if !ok {
			return notFound("domain", arg(1))
		}
		if st == "running" && w.ExternalStop > 0 {
			w.ExternalStop--
			if w.ExternalStop == 0 {
				w.Domains[arg(1)] = "shut off"
			}
		}
		if slices.Contains(args, "--reason") {
			switch {
			case st == "running":
				return st + " (booted)", "", 0
			case w.StartFailed[arg(1)]:
				return st + " (failed)", "", 0
			case w.ManagedSave[arg(1)]:
				return st + " (saved)", "", 0
			}
			return st + " (shutdown)", "", 0
		}
		return st, "", 0
	case "domstats":
		if !slices.Equal(args[1:], []string{"--state"}) {
			return "", "fake virsh: domstats only with --state", 1
		}
		// As virsh prints it: a record per domain, a blank line between
		// records, the numbers of libvirt's virDomainState and its reasons.
		var records []string
		for _, name := range slices.Sorted(maps.Keys(w.Domains)) {
			state, reason := fakeStateNumbers[w.Domains[name]], 0
			switch {
			case w.Domains[name] == "running":
				reason = 1 // booted
			case w.Domains[name] == "paused":
				reason = 1 // user
			case w.ManagedSave[name]:
				reason = 5 // saved
			case w.Domains[name] == "shut off":
				reason = 1 // shutdown
			}
			records = append(records, fmt.Sprintf("Domain: '%s'\n  state.state=%d\n  state.reason=%d\n", name, state, reason))
		}
		return strings.Join(records, "\n"), "", 0
	case "domuuid":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		return "00000000-0000-0000-0000-" + fmt.Sprintf("%012d", len(arg(1))), "", 0
	case "domifaddr":
		if w.Domains[arg(1)] != "running" {
			return "", "", 0
		}
		return " Name       MAC address          Protocol     Address\n" +
			"-------------------------------------------------------------------------------\n" +
			" vnet0      52:54:00:12:34:56    ipv4         127.0.0.1/24\n", "", 0
	case "metadata":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		if !w.Owned[arg(1)] {
			return "", "error: metadata not found: Requested metadata element is not present", 1
		}
		return "<vm/>", "", 0
	case "define":
		data, err := os.ReadFile(arg(1))
		if err != nil {
			return "", err.Error(), 1
		}
		name := between(string(data), "<name>", "</name>")
		if _, ok := w.Domains[name]; !ok {
			w.Domains[name] = "shut off"
		}
		w.Owned[name] = strings.Contains(string(data), metadataURI)
		w.XML[name] = string(data)
		return "Domain '" + name + "' defined", "", 0
	case "start":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		live := w.XML[arg(1)]
		if w.ManagedSave[arg(1)] {
			live = w.SaveXML[arg(1)] // a restore runs what was saved
		}
		if msg := w.missingFile(live); msg != "" {
			w.StartFailed[arg(1)] = true
			return "", msg, 1
		}
		delete(w.StartFailed, arg(1))
		w.Domains[arg(1)] = "running"
		w.Live[arg(1)] = live
		if w.NVRAMDir != "" && strings.Contains(w.XML[arg(1)], `firmware="efi"`) {
			if _, err := os.Stat(w.nvram(arg(1))); err != nil {
				os.WriteFile(w.nvram(arg(1)), []byte("template"), 0o600)
			}
		}
		delete(w.ManagedSave, arg(1)) // restored, as libvirt does
		return "", "", 0
	case "suspend":
		if w.Domains[arg(1)] != "running" {
			return "", "error: Requested operation is not valid: domain is not running", 1
		}
		w.Domains[arg(1)] = "paused"
		w.Pauses = append(w.Pauses, arg(1))
		return "Domain '" + arg(1) + "' suspended", "", 0
	case "resume":
		if w.Domains[arg(1)] != "paused" {
			return "", "error: Requested operation is not valid: domain is not paused", 1
		}
		w.Domains[arg(1)] = "running"
		return "Domain '" + arg(1) + "' resumed", "", 0
	case "shutdown":
		if w.Domains[arg(1)] != "running" {
			return "", "error: Requested operation is not valid: domain is not running", 1
		}
		if !w.ShutdownIgnored {
			w.Domains[arg(1)] = "shut off"
		}
		return "", "", 0
	case "destroy":
		st, ok := w.Domains[arg(1)]
		if !ok {
			return notFound("domain", arg(1))
		}
		if st != "running" && st != "paused" {
			return "", "error: Requested operation is not valid: domain is not running", 1
		}
		w.Domains[arg(1)] = "shut off"
		return "", "", 0
	case "undefine":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		if n := len(w.Snapshots[arg(1)]); n > 0 && !slices.Contains(args, "--snapshots-metadata") {
			return "", fmt.Sprintf("error: Failed to undefine domain '%s'\nerror: Requested operation is not valid: cannot delete inactive domain with %d snapshots", arg(1), n), 1
		}
		if w.ManagedSave[arg(1)] && !slices.Contains(args, "--managed-save") {
			return "", "error: Failed to undefine domain '" + arg(1) + "'\nerror: Requested operation is not valid: Refusing to undefine while domain managed save image exists", 1
		}
		delete(w.Snapshots, arg(1))
		delete(w.ManagedSave, arg(1))
		delete(w.Domains, arg(1))
		delete(w.Owned, arg(1))
		delete(w.XML, arg(1))
		return "", "", 0
	case "dumpxml":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		x := w.XML[arg(1)]
		// As libvirt 9.0 with firmware auto-selection: only the live definition names the NVRAM.
		if w.NVRAMDir != "" && strings.Contains(x, `firmware="efi"`) && w.Domains[arg(1)] == "running" {
			x = strings.Replace(x, "</os>", "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>"+w.nvram(arg(1))+"</nvram></os>", 1)
		}
		return x, "", 0
	case "snapshot-list":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		var names []string
		for _, s := range w.Snapshots[arg(1)] {
			name, kind, _ := strings.Cut(s, " ")
			if slices.Contains(args, "--"+kind) {
				names = append(names, name)
			}
		}
		return strings.Join(names, "\n"), "", 0
	case "snapshot-delete":
		snaps := w.Snapshots[arg(1)]
		for i, s := range snaps {
			if strings.HasPrefix(s, arg(2)+" ") {
				w.Snapshots[arg(1)] = append(snaps[:i:i], snaps[i+1:]...)
				return "Domain snapshot " + arg(2) + " deleted", "", 0
			}
		}
		return "", "error: Domain snapshot not found: no domain snapshot with matching name '" + arg(2) + "'", 1
	case "managedsave":
		if w.Domains[arg(1)] != "running" {
			return "", "error: Requested operation is not valid: domain is not running", 1
		}
		w.ManagedSave[arg(1)], w.Domains[arg(1)] = true, "shut off"
		w.SaveXML[arg(1)] = w.Live[arg(1)]
		return "\nDomain '" + arg(1) + "' state saved by libvirt", "", 0
	case "save":
		// As libvirt's qemu driver: the live definition (with its UUID, in
		// libvirt's quoting) in a save image's header, then the memory.
		if w.Domains[arg(1)] != "running" {
			return "", "error: Requested operation is not valid: domain is not running", 1
		}
		live := strings.ReplaceAll(w.Live[arg(1)], `"`, "'")
		uuid := "00000000-0000-0000-0000-" + fmt.Sprintf("%012d", len(arg(1)))
		live = strings.Replace(live, "</name>", "</name>\n  <uuid>"+uuid+"</uuid>", 1)
		img := &saveImage{Version: 2, DataLen: uint32(len(live) + 4096), WasRunning: 1, Cookie: []byte("<qemu-migration/>"), CookieOffset: 1}
		head, err := img.header([]byte(live))
		if err != nil {
			return "", "error: " + err.Error(), 1
		}
		if w.SaveCompressed {
			binary.LittleEndian.PutUint32(head[28:], 1) // save_image_format "gzip" in qemu.conf
		}
		if err := os.WriteFile(arg(2), append(head, fakeGuestMemory...), 0o600); err != nil {
			return "", "error: " + err.Error(), 1
		}
		w.Domains[arg(1)] = "shut off"
		w.Saves = append(w.Saves, arg(1))
		return "\nDomain '" + arg(1) + "' saved to " + arg(2), "", 0
	case "save-image-dumpxml":
		img, err := fakeReadSave(arg(1))
		if err != nil {
			return "", "error: " + err.Error(), 1
		}
		return string(img.XML), "", 0
	case "restore":
		img, err := fakeReadSave(arg(1))
		if err != nil {
			return "", "error: " + err.Error(), 1
		}
		data, _ := os.ReadFile(arg(1))
		if !strings.HasSuffix(string(data), fakeGuestMemory) {
			return "", "error: operation failed: the memory state is damaged", 1
		}
		x := string(img.XML)
		if i := slices.Index(args, "--xml"); i > 0 {
			// Another definition of the same domain (name and UUID): libvirt's own way.
			alt, err := os.ReadFile(arg(i + 1))
			if err != nil {
				return "", "error: " + err.Error(), 1
			}
			if between(string(alt), "<name>", "</name>") != between(x, "<name>", "</name>") ||
				between(string(alt), "<uuid>", "</uuid>") != between(x, "<uuid>", "</uuid>") {
				return "", "error: unsupported configuration: Target domain name or uuid does not match source", 1
			}
			x = string(alt)
		}
		name, uuid := between(x, "<name>", "</name>"), between(x, "<uuid>", "</uuid>")
		st, ok := w.Domains[name]
		switch {
		case !ok:
			return notFound("domain", name)
		case uuid != "00000000-0000-0000-0000-"+fmt.Sprintf("%012d", len(name)):
			return "", "error: operation failed: domain '" + name + "' is already defined with uuid other than " + uuid, 1
		case st == "running":
			return "", "error: Requested operation is not valid: domain '" + name + "' is already active", 1
		}
		if msg := w.missingFile(x); msg != "" {
			return "", msg, 1
		}
		w.Domains[name], w.Live[name] = "running", x
		w.Restores = append(w.Restores, name)
		return "Domain restored from " + arg(1), "", 0
	case "dominfo":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		saved := map[bool]string{true: "yes", false: "no"}[w.ManagedSave[arg(1)]]
		return "Id:             -\nName:           " + arg(1) + "\nState:          " + w.Domains[arg(1)] +
			"\nPersistent:     yes\nManaged save:   " + saved + "\nSecurity model: none\n", "", 0
	case "managedsave-dumpxml":
		if !w.ManagedSave[arg(1)] {
			return "", "error: Requested operation is not valid: domain does not have managed save image", 1
		}
		return w.SaveXML[arg(1)], "", 0
	case "managedsave-define":
		data, err := os.ReadFile(arg(2))
		if err != nil {
			return "", err.Error(), 1
		}
		w.SaveXML[arg(1)] = string(data)
		return "Managed save state file of domain '" + arg(1) + "' updated.", "", 0
	case "managedsave-remove":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		if !w.ManagedSave[arg(1)] {
			return "Domain '" + arg(1) + "' has no manage save image; removal skipped", "", 0
		}
		delete(w.ManagedSave, arg(1))
		return "Removed managedsave image for domain '" + arg(1) + "'", "", 0
	case "domjobabort":
		if w.SaveHangs {
			w.SaveHangs = false
			w.SaveAborted++
			return "", "", 0
		}
		return "", "error: Requested operation is not valid: no job is active on the domain", 1
	case "qemu-agent-command":
		if w.NoAgent {
			return "", "error: Guest agent is not responding: QEMU guest agent is not connected", 1
		}
		switch cmd := args[len(args)-1]; {
		case strings.Contains(cmd, `"guest-exec"`) && w.NoAgentExec:
			return "", "error: internal error: unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled", 1
		case strings.Contains(cmd, `"guest-exec"`):
			return `{"return":{"pid":4242}}`, "", 0
		case strings.Contains(cmd, `"guest-exec-status"`):
			return `{"return":{"exitcode":0,"exited":true}}`, "", 0
		}
		return `{"return":{}}`, "", 0
	case "snapshot-create-as":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		if slices.Contains(args, "--disk-only") {
			i := slices.Index(args, "--diskspec")
			_, file, _ := strings.Cut(arg(i+1), "file=")
			w.Frozen[arg(1)] = file
			// Like libvirt, the domain's definitions name the new top from now on.
			for _, defs := range []map[string]string{w.XML, w.Live} {
				for _, m := range domainFileRE.FindAllStringSubmatch(defs[arg(1)], -1) {
					if strings.HasSuffix(m[1], ".qcow2") {
						defs[arg(1)] = strings.ReplaceAll(defs[arg(1)], m[1], file)
						break
					}
				}
			}
			return "Domain snapshot 1795400467 created", "", 0
		}
		w.Snapshots[arg(1)] = append(w.Snapshots[arg(1)], arg(2)+" internal")
		w.SnapshotXML[arg(1)+"/"+arg(2)] = "<domainsnapshot><name>" + arg(2) + "</name><state>" + w.Domains[arg(1)] + "</state>" + w.Live[arg(1)] + "</domainsnapshot>"
		return "Domain snapshot " + arg(2) + " created", "", 0
	case "snapshot-dumpxml":
		x, ok := w.SnapshotXML[arg(1)+"/"+arg(2)]
		if !ok {
			return "", "error: Domain snapshot not found: no domain snapshot with matching name '" + arg(2) + "'", 1
		}
		return x, "", 0
	case "snapshot-create":
		data, err := os.ReadFile(arg(2))
		if err != nil {
			return "", err.Error(), 1
		}
		snap := between(string(data), "<name>", "</name>")
		w.SnapshotXML[arg(1)+"/"+snap] = string(data)
		return "Domain snapshot " + snap + " created from '" + arg(2) + "'", "", 0
	case "snapshot-revert":
		x, ok := w.SnapshotXML[arg(1)+"/"+arg(2)]
		if !ok {
			return "", "error: Domain snapshot not found: no domain snapshot with matching name '" + arg(2) + "'", 1
		}
		_, dom, _ := strings.Cut(x, "</state>")
		if msg := w.missingFile(dom); msg != "" {
			w.Domains[arg(1)] = "shut off" // as libvirt 9.0 leaves a running domain then
			// having made the snapshot's definition the domain's before its start failed
			w.XML[arg(1)] = strings.TrimSuffix(dom, "</domainsnapshot>")
			return "", "error: Failed to revert snapshot " + arg(2) + "\n" + msg, 1
		}
		w.XML[arg(1)] = strings.TrimSuffix(dom, "</domainsnapshot>")
		w.Live[arg(1)] = w.XML[arg(1)]
		w.Domains[arg(1)] = "running"
		return "", "", 0
	case "pool-info":
		if !w.Pools[arg(1)] {
			return "", "error: failed to get pool '" + arg(1) + "'", 1
		}
		if w.PoolInactive[arg(1)] {
			return "Name: " + arg(1) + "\nState:          inactive\n", "", 0
		}
		return "Name: " + arg(1) + "\nState:          running\n", "", 0
	case "pool-define-as":
		if w.Pools[arg(1)] {
			return "", "error: operation failed: pool '" + arg(1) + "' already exists", 1
		}
		w.Pools[arg(1)] = true
		if w.PoolInactive == nil {
			w.PoolInactive = map[string]bool{}
		}
		w.PoolInactive[arg(1)] = true
		return "", "", 0
	case "pool-start":
		if !w.PoolInactive[arg(1)] {
			return "", "error: Requested operation is not valid: storage pool '" + arg(1) + "' is already active", 1
		}
		delete(w.PoolInactive, arg(1))
		return "", "", 0
	case "pool-build", "pool-autostart":
		return "", "", 0
	case "vol-info", "vol-path":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		return "/pool/" + pv, "", 0
	case "vol-create-as":
		pv := arg(1) + "/" + arg(2)
		if w.Volumes[pv] {
			return "", fmt.Sprintf("error: Failed to create vol %s\nerror: storage volume '%s' exists already", arg(2), arg(2)), 1
		}
		// Like virsh, --backing-vol names a volume of the pool; its path goes into the overlay.
		if i := slices.Index(args, "--backing-vol"); i > 0 {
			if !w.Volumes[arg(1)+"/"+arg(i+1)] {
				return notFound("vol", arg(i+1))
			}
			w.Backing[pv] = "/pool/" + arg(1) + "/" + arg(i+1)
		}
		w.Volumes[pv] = true
		delete(w.Uploaded, pv)
		w.touch(pv)
		return "", "", 0
	case "vol-list":
		pool := arg(2)
		if !w.Pools[pool] {
			return "", "error: failed to get pool '" + pool + "'\nerror: Storage pool not found: no storage pool with matching name '" + pool + "'", 1
		}
		var names []string
		for pv := range w.Volumes {
			if p, vol, _ := strings.Cut(pv, "/"); p == pool {
				names = append(names, vol)
			}
		}
		slices.Sort(names)
		out := " Name   Path\n" + strings.Repeat("-", 40) + "\n"
		for _, n := range names {
			out += fmt.Sprintf(" %-40s /pool/%s/%s\n", n, pool, n)
		}
		return out, "", 0
	case "vol-dumpxml":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		name := pv[strings.Index(pv, "/")+1:]
		stamps := ""
		if t, ok := w.MTime[pv]; ok {
			stamps = fmt.Sprintf("    <timestamps>\n      <atime>%d.%09d</atime>\n      <mtime>%d.%09d</mtime>\n    </timestamps>\n", t/1e9, t%1e9, t/1e9, t%1e9)
		}
		xml := fmt.Sprintf("<volume type='file'>\n  <name>%s</name>\n  <key>/pool/%s</key>\n  <capacity unit='bytes'>4294967296</capacity>\n  <allocation unit='bytes'>%d</allocation>\n  <target>\n    <path>/pool/%s</path>\n    <format type='raw'/>\n%s  </target>\n", name, pv, len(w.Content[pv]), pv, stamps)
		if b := w.Backing[pv]; b != "" {
			xml += fmt.Sprintf("  <backingStore>\n    <path>%s</path>\n    <format type='raw'/>\n  </backingStore>\n", b)
		}
		return xml + "</volume>\n", "", 0
	case "vol-download":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		if file := args[len(args)-1]; file != "/dev/stdout" {
			return "", "fake virsh: vol-download only to /dev/stdout", 1
		}
		return string(w.Content[pv]), "", 0
	case "vol-upload":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		file := args[len(args)-1]
		var data []byte
		var err error
		if file == "/dev/stdin" && stdin != nil {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return "", "error: cannot read " + file + ": " + err.Error(), 1
		}
		w.Content[pv] = data
		w.Uploaded[pv] = true
		w.touch(pv)
		return "", "", 0
	case "vol-resize":
		if !w.Volumes[poolVol()] {
			return notFound("vol", poolVol())
		}
		return "", "", 0
	case "vol-delete":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		vol := pv[strings.Index(pv, "/")+1:]
		inUse := func() (string, string, int) {
			return "", fmt.Sprintf("error: Failed to delete vol %s\nerror: Requested operation is not valid: volume '%s' is still in use.", vol, vol), 1
		}
		if pid := w.Uploader[vol]; pid > 0 && unix.Kill(pid, 0) == nil {
			return inUse()
		}
		if w.Busy[pv] > 0 {
			w.Busy[pv]--
			return inUse()
		}
		delete(w.Volumes, pv)
		delete(w.Uploaded, pv)
		delete(w.Content, pv)
		delete(w.Backing, pv)
		delete(w.MTime, pv)
		return "", "", 0
	}
	return "", "fake virsh: unknown command " + args[0], 1
}

// touch records a write of the volume's file now.
func (w *fakeWorld) touch(pv string) {
	if w.MTime == nil {
		w.MTime = map[string]int64{}
	}
	w.MTime[pv] = time.Now().UnixNano()
}

// fakeStateNumbers are libvirt's virDomainState values of the fake's state words.
var fakeStateNumbers = map[string]int{"running": 1, "paused": 3, "in shutdown": 4, "shut off": 5, "crashed": 6, "pmsuspended": 7}

// missingFile is libvirt's error for a volume file a definition names that
// is gone ("" when all are there).
func (w *fakeWorld) missingFile(xml string) string {
	for _, m := range domainFileRE.FindAllStringSubmatch(xml, -1) {
		if pv, ok := strings.CutPrefix(m[1], "/pool/"); ok && !w.Volumes[pv] {
			return "error: Cannot access storage file '" + m[1] + "': No such file or directory"
		}
	}
	return ""
}

func (w *fakeWorld) nvram(name string) string {
	if f := w.NVRAMFile[name]; f != "" {
		return f
	}
	return filepath.Join(w.NVRAMDir, name+"_VARS.fd")
}

func between(s, a, b string) string {
	_, rest, _ := strings.Cut(s, a)
	v, _, _ := strings.Cut(rest, b)
	return v
}

func (w *fakeWorld) anyRunning() bool {
	for _, st := range w.Domains {
		if st == "running" {
			return true
		}
	}
	return false
}

// fakeRunner records every argv and answers from the world. Long-running
// children (the ssh master, a blocking playbook) wait for ctx.
type fakeRunner struct {
	mu    sync.Mutex
	world *fakeWorld
	calls [][]string
	raw   [][]string // the same calls, unabbreviated
	// playbook decides what ansible-playbook does: "ok", "fail" or "block".
	playbook string
	// playbookStarted is closed when a playbook starts.
	playbookStarted chan struct{}
	// onPlaybook, when set, runs while the playbook runs.
	onPlaybook func()
	// onCall, when set, sees each argv (abbreviated) before it is answered.
	onCall func(args []string)
	// onInspect, when set, runs as qemu-img inspects the image.
	onInspect func()
	// uploadStarted, when set, gets each vol-upload, which then blocks until cancelled.
	uploadStarted chan []string
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{world: newFakeWorld(), playbook: "ok", playbookStarted: make(chan struct{}, 8)}
}

func (f *fakeRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	f.mu.Lock()
	short := abbreviate(c.Args)
	f.calls = append(f.calls, short)
	f.raw = append(f.raw, slices.Clone(c.Args))
	onCall := f.onCall
	f.mu.Unlock()
	if onCall != nil {
		onCall(short)
	}
	// As exec.CommandContext: a command is not started once its context is done.
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if c.Started != nil {
		c.Started(999999)
	}
	fail := func(code int, stderr string) (Result, error) {
		return Result{Stderr: []byte(stderr), ExitCode: code}, &ExitError{Args: c.Args, ExitCode: code, Stderr: stderr}
	}
	switch short[0] {
	case "virsh":
		f.mu.Lock()
		hangs := short[1] == "managedsave" && f.world.SaveHangs
		f.mu.Unlock()
		if hangs { // libvirt's job runs on after virsh is killed, until domjobabort
			<-ctx.Done()
			return Result{}, ctx.Err()
		}
		if short[1] == "vol-upload" && f.uploadStarted != nil {
			f.uploadStarted <- short
			<-ctx.Done()
			return Result{}, ctx.Err()
		}
		stdin := c.Stdin
		if short[1] == "vol-upload" && stdin != nil {
			// Read before the world is locked: the stream may come from a
			// vol-download of the same world (a template's disk copy).
			data, err := io.ReadAll(stdin)
			if err != nil {
				return fail(1, "error: cannot read /dev/stdin: "+err.Error())
			}
			stdin = bytes.NewReader(data)
		}
		f.mu.Lock()
		out, errOut, code := f.world.virsh(short[1:], stdin)
		f.mu.Unlock()
		if code != 0 {
			return fail(code, errOut)
		}
		if c.Stdout != nil {
			io.WriteString(c.Stdout, out)
			return Result{}, nil
		}
		return Result{Stdout: []byte(out)}, nil
	case "gpgv":
		return execRunner{}.Run(ctx, c) // the real one: tests sign with keys of their own
	case "qemu-img":
		if f.onInspect != nil {
			f.onInspect()
		}
		return Result{Stdout: []byte(`{"format": "qcow2", "virtual-size": 1073741824}`)}, nil
	case "ssh":
		if slices.Contains(short, "master") {
			<-ctx.Done()
			return Result{}, ctx.Err()
		}
		f.mu.Lock()
		up := f.world.anyRunning()
		var out, errOut string
		code, block := 0, false
		switch {
		case up && slices.Contains(c.Args, "PubkeyAuthentication=no"):
			// ProveHostKey: the host key checked, then no way to log in.
			code, errOut = 255, "vmup@127.0.0.1: Permission denied (publickey).\n"
			if f.world.WrongHostKey {
				errOut = "Host key verification failed.\n"
			}
		case up && strings.Contains(strings.Join(c.Args, " "), "vmup-identity done"):
			// A clone's identity script (its words hold an '@', which abbreviate drops).
			f.world.Identities++
			out = "vmup-identity keys\nvmup-identity done sshd=reloaded\n"
		case up:
			out, errOut, code, block = f.world.guest(remoteCommand(short))
		}
		f.mu.Unlock()
		switch {
		case !up:
			return fail(255, "ssh: connect to host 127.0.0.1: Connection refused")
		case block:
			<-ctx.Done()
			return Result{}, ctx.Err()
		case code != 0:
			if c.Stdout != nil {
				io.WriteString(c.Stdout, out)
			}
			res, err := fail(code, errOut)
			res.Stdout = []byte(out)
			return res, err
		}
		if c.Stdout != nil {
			io.WriteString(c.Stdout, out)
		}
		return Result{Stdout: []byte(out)}, nil
	case "ansible-playbook":
		f.playbookStarted <- struct{}{}
		if f.onPlaybook != nil {
			f.onPlaybook()
		}
		switch f.playbook {
		case "fail":
			fmt.Fprintln(c.Stdout, "fatal: [vm]: FAILED!")
			return fail(2, "")
		case "block":
			<-ctx.Done()
			return Result{}, ctx.Err()
		}
		fmt.Fprintln(c.Stdout, "PLAY RECAP ok=1")
		return Result{}, nil
	}
	return fail(127, "fake: unknown program "+c.Args[0])
}

// remoteCommand is what an ssh command line runs in the guest: the words after `--`.
func remoteCommand(short []string) []string {
	if i := slices.Index(short, "--"); i >= 0 {
		return short[i+1:]
	}
	return nil
}

// virshCalls returns the recorded calls, leaving out ssh's (its polling is timing).
func (f *fakeRunner) recorded() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// rawCalls returns every recorded argv in full.
func (f *fakeRunner) rawCalls() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.raw)
}

// loadWorld and saveWorld keep the world in a file for the fake programs.
func loadWorld(path string) *fakeWorld {
	w := newFakeWorld()
	if data, err := os.ReadFile(path); err == nil {
		json.Unmarshal(data, w)
	}
	return w
}

// saveWorld replaces the file by a rename: a test reads the world without
// the fakes' lock, and a truncated file would read as an empty world.
func saveWorld(path string, w *fakeWorld) {
	data, _ := json.Marshal(w)
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, path)
	}
}
