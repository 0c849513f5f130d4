package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// metadataURI marks the domains vmup created; vmup touches no other domain.
const metadataURI = "http://vmup.dev/xmlns/domain/1"

// Virsh runs `virsh -c URI …` through the runner.
type Virsh struct {
	r    Runner
	prog string
	uri  string
}

func newVirsh(r Runner, uri string) *Virsh {
	return &Virsh{r: r, prog: programFor("VMUP_VIRSH", "virsh"), uri: uri}
}

func programFor(env, def string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	return def
}

func (v *Virsh) run(ctx context.Context, args ...string) (string, error) {
	res, err := v.r.Run(ctx, Cmd{Args: append([]string{v.prog, "-c", v.uri}, args...)})
	return strings.TrimSpace(string(res.Stdout)), err
}

// errNotFound is a domain, pool or volume that does not exist.
var errNotFound = errors.New("not found")

var notFoundRE = regexp.MustCompile(`(?i)(failed to get (domain|vol|pool)|(domain|storage volume|storage pool) not found|no (domain|storage (pool|vol)) with matching)`)

func classify(err error) error {
	var ee *ExitError
	if errors.As(err, &ee) && notFoundRE.MatchString(ee.Stderr) {
		return fmt.Errorf("%w: %v", errNotFound, err)
	}
	return err
}

// DomState returns virsh's state word ("running", "shut off", …) or errNotFound.
func (v *Virsh) DomState(ctx context.Context, name string) (string, error) {
	out, err := v.run(ctx, "domstate", name)
	return out, classify(err)
}

// Owned says whether the domain carries vmup's metadata.
func (v *Virsh) Owned(ctx context.Context, name string) (bool, error) {
	_, err := v.run(ctx, "metadata", name, metadataURI)
	if err == nil {
		return true, nil
	}
	var ee *ExitError
	if errors.As(err, &ee) && strings.Contains(ee.Stderr, "metadata") && !notFoundRE.MatchString(ee.Stderr) {
		return false, nil // the domain exists without vmup's metadata
	}
	return false, classify(err)
}

func (v *Virsh) Define(ctx context.Context, xmlFile string) error {
	_, err := v.run(ctx, "define", xmlFile)
	return err
}

func (v *Virsh) DumpXML(ctx context.Context, name string) (string, error) {
	out, err := v.run(ctx, "dumpxml", name)
	return out, classify(err)
}

func (v *Virsh) DomUUID(ctx context.Context, name string) (string, error) {
	out, err := v.run(ctx, "domuuid", name)
	return out, classify(err)
}

func (v *Virsh) Start(ctx context.Context, name string) error {
	_, err := v.run(ctx, "start", name)
	return err
}

func (v *Virsh) Shutdown(ctx context.Context, name string) error {
	_, err := v.run(ctx, "shutdown", name, "--mode", "acpi")
	return err
}

func (v *Virsh) Destroy(ctx context.Context, name string) error {
	_, err := v.run(ctx, "destroy", name)
	return classify(err)
}

// Undefine removes the definition with its snapshots' metadata, managed save
// image and NVRAM, none of which libvirt lets outlive it.
func (v *Virsh) Undefine(ctx context.Context, name string) error {
	_, err := v.run(ctx, "undefine", name, "--snapshots-metadata", "--managed-save", "--nvram")
	return classify(err)
}

// Snapshots names the domain's snapshots of one kind: --internal or --external.
func (v *Virsh) Snapshots(ctx context.Context, name, kind string) ([]string, error) {
	out, err := v.run(ctx, "snapshot-list", name, kind, "--name")
	if err != nil {
		return nil, classify(err)
	}
	return strings.Fields(out), nil
}

func (v *Virsh) SnapshotDelete(ctx context.Context, name, snap string) error {
	_, err := v.run(ctx, "snapshot-delete", name, snap)
	return classify(err)
}

// EnsurePool creates a dir pool at target unless pool exists, and starts it.
func (v *Virsh) EnsurePool(ctx context.Context, pool, target string) error {
	out, err := v.run(ctx, "pool-info", pool)
	if err == nil {
		if regexp.MustCompile(`(?m)^State:\s+running`).MatchString(out) {
			return nil
		}
		_, err = v.run(ctx, "pool-start", pool)
		return err
	}
	if err = classify(err); !errors.Is(err, errNotFound) {
		return err
	}
	for _, args := range [][]string{
		{"pool-define-as", pool, "dir", "--target", target},
		{"pool-build", pool},
		{"pool-start", pool},
		{"pool-autostart", pool},
	} {
		if _, err := v.run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func (v *Virsh) VolExists(ctx context.Context, pool, vol string) (bool, error) {
	_, err := v.run(ctx, "vol-info", "--pool", pool, vol)
	if err == nil {
		return true, nil
	}
	if err = classify(err); errors.Is(err, errNotFound) {
		return false, nil
	}
	return false, err
}

// errExists is a volume that is there already.
var errExists = errors.New("exists already")

var existsRE = regexp.MustCompile(`(?i)storage volume '[^']*' exists already|already in use|already exists`)

// VolCreate makes an empty volume, or with backing an overlay on that
// volume. It never replaces a volume: one of that name gives errExists.
func (v *Virsh) VolCreate(ctx context.Context, pool, vol string, bytes int64, format, backing, backingFormat string) error {
	args := []string{"vol-create-as", pool, vol, fmt.Sprint(bytes), "--format", format}
	if backing != "" {
		args = append(args, "--backing-vol", backing, "--backing-vol-format", backingFormat)
	}
	_, err := v.run(ctx, args...)
	var ee *ExitError
	if errors.As(err, &ee) && existsRE.MatchString(ee.Stderr) {
		return fmt.Errorf("%w: %v", errExists, err)
	}
	return err
}

func (v *Virsh) VolResize(ctx context.Context, pool, vol string, bytes int64) error {
	_, err := v.run(ctx, "vol-resize", "--pool", pool, vol, fmt.Sprint(bytes))
	return err
}

// streamGrace is what a cancelled vol-upload or vol-download gets per signal:
// it holds nothing worth waiting for, and an interrupt must end it at once.
const streamGrace = 300 * time.Millisecond

func (v *Virsh) VolUpload(ctx context.Context, pool, vol, file string) error {
	_, err := v.r.Run(ctx, Cmd{Args: []string{v.prog, "-c", v.uri, "vol-upload", "--pool", pool, vol, file}, Grace: streamGrace})
	return err
}

// VolUploadFrom streams r into the volume through virsh's stdin, so that
// vmup sees (and can hash) every byte uploaded.
func (v *Virsh) VolUploadFrom(ctx context.Context, pool, vol string, r io.Reader) error {
	_, err := v.r.Run(ctx, Cmd{Args: []string{v.prog, "-c", v.uri, "vol-upload", "--pool", pool, vol, "/dev/stdin"},
		Stdin: r, Grace: streamGrace})
	return err
}

func (v *Virsh) VolPath(ctx context.Context, pool, vol string) (string, error) {
	return v.run(ctx, "vol-path", "--pool", pool, vol)
}

// errBusy is a volume libvirt holds, as while a stream uploads into it.
var errBusy = errors.New("volume busy")

var busyRE = regexp.MustCompile(`(?i)still in use|still being allocated|busy`)

// VolDelete deletes a volume; one already gone is not an error.
func (v *Virsh) VolDelete(ctx context.Context, pool, vol string) error {
	_, err := v.run(ctx, "vol-delete", "--pool", pool, vol)
	if err = classify(err); errors.Is(err, errNotFound) {
		return nil
	}
	var ee *ExitError
	if errors.As(err, &ee) && busyRE.MatchString(ee.Stderr) {
		return fmt.Errorf("%w: %v", errBusy, err)
	}
	return err
}

// VolDeleteWhenFree deletes a volume once libvirt lets go of it: the job of
// a virsh killed mid-upload can hold the volume for a moment.
func (v *Virsh) VolDeleteWhenFree(ctx context.Context, pool, vol string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := v.VolDelete(ctx, pool, vol)
		if !errors.Is(err, errBusy) || time.Now().After(deadline) {
			return err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// VolList names the volumes of a pool.
func (v *Virsh) VolList(ctx context.Context, pool string) ([]string, error) {
	out, err := v.run(ctx, "vol-list", "--pool", pool)
	if err != nil {
		return nil, classify(err)
	}
	// A header, a rule of dashes, then one "NAME PATH" row per volume.
	_, rows, ok := strings.Cut(out, "\n-")
	if !ok {
		return nil, nil
	}
	lines := strings.Split(rows, "\n")
	var names []string
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// VolBacking returns the path of the volume's backing store, "" for none.
func (v *Virsh) VolBacking(ctx context.Context, pool, vol string) (string, error) {
	out, err := v.run(ctx, "vol-dumpxml", "--pool", pool, vol)
	if err != nil {
		return "", classify(err)
	}
	var x struct {
		Backing struct {
			Path string `xml:"path"`
		} `xml:"backingStore"`
	}
	if err := xml.Unmarshal([]byte(out), &x); err != nil {
		return "", fmt.Errorf("vol-dumpxml %s: %w", vol, err)
	}
	return x.Backing.Path, nil
}

// volDetails is what prune needs of a volume: its file, its backing file,
// the bytes it takes, and when its file was last written (zero if unknown).
type volDetails struct {
	Path, Backing string
	Allocation    int64
	Modified      time.Time
}

func (v *Virsh) VolDetails(ctx context.Context, pool, vol string) (volDetails, error) {
	out, err := v.run(ctx, "vol-dumpxml", "--pool", pool, vol)
	if err != nil {
		return volDetails{}, classify(err)
	}
	var x struct {
		Allocation int64 `xml:"allocation"`
		Target     struct {
			Path  string `xml:"path"`
			MTime string `xml:"timestamps>mtime"`
		} `xml:"target"`
		Backing struct {
			Path string `xml:"path"`
		} `xml:"backingStore"`
	}
	if err := xml.Unmarshal([]byte(out), &x); err != nil {
		return volDetails{}, fmt.Errorf("vol-dumpxml %s: %w", vol, err)
	}
	d := volDetails{Path: x.Target.Path, Backing: x.Backing.Path, Allocation: x.Allocation}
	// libvirt writes "SECONDS.NANOSECONDS".
	secs, frac, _ := strings.Cut(x.Target.MTime, ".")
	if s, err := strconv.ParseInt(secs, 10, 64); err == nil && s > 0 {
		ns, _ := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
		d.Modified = time.Unix(s, ns)
	}
	return d, nil
}

// VolDownload streams the volume's content into w through virsh's stdout.
func (v *Virsh) VolDownload(ctx context.Context, pool, vol string, w io.Writer) error {
	_, err := v.r.Run(ctx, Cmd{Args: []string{v.prog, "-c", v.uri, "vol-download", "--pool", pool, vol, "/dev/stdout"},
		Stdout: w, Grace: streamGrace})
	return err
}

// DomIPv4 returns the guest's address from the DHCP lease, or "" while it has none.
func (v *Virsh) DomIPv4(ctx context.Context, name string) (string, error) {
	out, err := v.run(ctx, "domifaddr", name, "--source", "lease")
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`ipv4\s+([0-9.]+)/`).FindStringSubmatch(out)
	if m == nil {
		return "", nil
	}
	return m[1], nil
}

// KVMAvailable says whether libvirt offers the kvm domain type.
func (v *Virsh) KVMAvailable(ctx context.Context) bool {
	_, err := v.run(ctx, "domcapabilities", "--virttype", "kvm")
	return err == nil
}

// Reachable checks that libvirtd answers at all.
func (v *Virsh) Reachable(ctx context.Context) error {
	_, err := v.run(ctx, "uri")
	return err
}

// DomStateReason returns the state word and libvirt's reason for it: a
// managed save shows as "shut off" with reason "saved".
func (v *Virsh) DomStateReason(ctx context.Context, name string) (state, reason string, err error) {
	out, err := v.run(ctx, "domstate", name, "--reason")
	if err != nil {
		return "", "", classify(err)
	}
	state, reason, _ = strings.Cut(out, " (")
	return state, strings.TrimSuffix(reason, ")"), nil
}

// ManagedSave saves the running domain's memory and stops it; the next
// start restores it.
func (v *Virsh) ManagedSave(ctx context.Context, name string) error {
	_, err := v.run(ctx, "managedsave", name)
	return classify(err)
}

// ManagedSaveRemove discards a saved state: the next start boots.
func (v *Virsh) ManagedSaveRemove(ctx context.Context, name string) error {
	_, err := v.run(ctx, "managedsave-remove", name)
	return classify(err)
}

// DomJobAbort cancels the domain's job (a save) in libvirt itself: killing
// virsh alone would let it run on.
func (v *Virsh) DomJobAbort(ctx context.Context, name string) error {
	_, err := v.run(ctx, "domjobabort", name)
	return classify(err)
}

// SnapshotCreate makes an internal snapshot named snap; of a running
// domain it holds the guest's memory too.
func (v *Virsh) SnapshotCreate(ctx context.Context, name, snap, description string) error {
	_, err := v.run(ctx, "snapshot-create-as", name, snap, "--description", description, "--atomic")
	return classify(err)
}

func (v *Virsh) SnapshotDumpXML(ctx context.Context, name, snap string) (string, error) {
	out, err := v.run(ctx, "snapshot-dumpxml", name, snap, "--security-info")
	return out, classify(err)
}

// SnapshotRedefine replaces a snapshot's metadata (not its data) with xmlFile.
func (v *Virsh) SnapshotRedefine(ctx context.Context, name, xmlFile string) error {
	_, err := v.run(ctx, "snapshot-create", name, xmlFile, "--redefine")
	return classify(err)
}

// SnapshotRevert brings back the snapshot's disk, memory and definition and
// runs the domain; --force lets it replace a definition changed since.
func (v *Virsh) SnapshotRevert(ctx context.Context, name, snap string) error {
	_, err := v.run(ctx, "snapshot-revert", name, snap, "--running", "--force")
	return classify(err)
}

// FreezeDisk moves the running domain's disk vda onto top, an overlay backed
// by its current file, which from then on no longer changes. No snapshot
// metadata is kept: vmup itself knows the layers.
func (v *Virsh) FreezeDisk(ctx context.Context, name, top string) error {
	_, err := v.run(ctx, "snapshot-create-as", name, "--no-metadata", "--disk-only", "--atomic", "--reuse-external",
		"--diskspec", "vda,file="+top)
	return classify(err)
}

// AgentCommand sends one command to the guest agent, waiting at most timeout.
func (v *Virsh) AgentCommand(ctx context.Context, name, command string, timeout time.Duration) (string, error) {
	secs := max(1, int(timeout/time.Second))
	out, err := v.run(ctx, "qemu-agent-command", name, "--timeout", fmt.Sprint(secs), command)
	return out, classify(err)
}

// VolCapacity is the volume's virtual size in bytes (0 when libvirt does not say).
func (v *Virsh) VolCapacity(ctx context.Context, pool, vol string) (int64, error) {
	out, err := v.run(ctx, "vol-dumpxml", "--pool", pool, vol)
	if err != nil {
		return 0, classify(err)
	}
	var x struct {
		Capacity int64 `xml:"capacity"`
	}
	if err := xml.Unmarshal([]byte(out), &x); err != nil {
		return 0, fmt.Errorf("vol-dumpxml %s: %w", vol, err)
	}
	return x.Capacity, nil
}

func (v *Virsh) ManagedSaveDumpXML(ctx context.Context, name string) (string, error) {
	out, err := v.run(ctx, "managedsave-dumpxml", name, "--security-info")
	return out, classify(err)
}

// ManagedSaveDefine replaces the definition a managed save restores (only
// host-side parts such as file paths may change).
func (v *Virsh) ManagedSaveDefine(ctx context.Context, name, xmlFile string) error {
	_, err := v.run(ctx, "managedsave-define", name, xmlFile)
	return classify(err)
}

// domainState is a domain's state and its reason in virsh's words, as
// `virsh domstate --reason` prints them ("shut off", "saved").
type domainState struct{ State, Reason string }

// DomStates returns the state of every domain of the connection, by name,
// from one call: status of any number of VMs costs one virsh call.
func (v *Virsh) DomStates(ctx context.Context) (map[string]domainState, error) {
	out, err := v.run(ctx, "domstats", "--state")
	if err != nil {
		return nil, err
	}
	return parseDomStats(out)
}

// parseDomStats reads `virsh domstats --state`: per domain a line
// "Domain: 'NAME'", then "  state.state=N" and "  state.reason=N", and a
// blank line between domains.
func parseDomStats(out string) (map[string]domainState, error) {
	type nums struct{ state, reason int }
	raw := map[string]*nums{}
	var cur *nums
	for _, line := range strings.Split(out, "\n") {
		if name, ok := strings.CutPrefix(line, "Domain: '"); ok && strings.HasSuffix(name, "'") {
			cur = &nums{}
			raw[strings.TrimSuffix(name, "'")] = cur
			continue
		}
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || cur == nil || key != "state.state" && key != "state.reason" {
			continue
		}
		n, err := strconv.Atoi(val)
		if err != nil {
			return nil, fmt.Errorf("virsh domstats: %q is no number", line)
		}
		if key == "state.state" {
			cur.state = n
		} else {
			cur.reason = n
		}
	}
	states := make(map[string]domainState, len(raw))
	for name, n := range raw {
		states[name] = domainState{stateWord(n.state), reasonWord(n.state, n.reason)}
	}
	return states, nil
}

// virshStates are libvirt's virDomainState values as virsh words them.
var virshStates = []string{"no state", "running", "idle", "paused", "in shutdown", "shut off", "crashed", "pmsuspended"}

// virshReasons are, by state, libvirt's reason values (virDomain*Reason) as
// virsh words them.
var virshReasons = [][]string{
	{"unknown"},
	{"unknown", "booted", "migrated", "restored", "from snapshot", "unpaused", "migration canceled", "save canceled",
		"event wakeup", "crashed", "post-copy", "post-copy failed"},
	{"unknown"},
	{"unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog", "from snapshot", "shutting down",
		"creating snapshot", "crashed", "starting up", "post-copy", "post-copy failed", "api error"},
	{"unknown", "user"},
	{"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot", "daemon"},
	{"unknown", "panicked"},
	{"unknown"},
}

// stateWord is virsh's word for a state; one newer than this table is
// "no state", as an older virsh says.
func stateWord(state int) string {
	if state < 0 || state >= len(virshStates) {
		return virshStates[0]
	}
	return virshStates[state]
}

func reasonWord(state, reason int) string {
	if state < 0 || state >= len(virshReasons) || reason < 0 || reason >= len(virshReasons[state]) {
		return "unknown"
	}
	return virshReasons[state][reason]
}
