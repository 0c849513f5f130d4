package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// metadataURI marks the domains vmup created; vmup touches no other domain.
const metadataURI = "http://vmup.dev/xmlns/domain/1"

// Virsh runs `virsh -c URI …` through the runner.
type Virsh struct {
	r    Runner
	prog string
	uri  string
	// Volume paths asked before: a volume's path follows from its pool and
	// name, and a VM's start asks for each of them several times.
	pathMu sync.Mutex
	paths  map[[2]string]string
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

var notFoundRE = lazyRE(`(?i)(failed to get (domain|vol|pool)|(domain|storage volume|storage pool) not found|no (domain|storage (pool|vol)) with matching)`)

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

// Save writes the running domain's memory state to file and stops it.
func (v *Virsh) Save(ctx context.Context, name, file string) error {
	_, err := v.run(ctx, "save", name, file)
	return classify(err)
}

// Restore runs the domain a save image's header names from its memory
// state: the defined domain of that name and UUID.
func (v *Virsh) Restore(ctx context.Context, file string) error {
	_, err := v.run(ctx, "restore", file)
	return classify(err)
}

// SaveImageDumpXML is the domain definition a save image's header holds,
// read by libvirt (which reads the images it writes, compressed or not).
func (v *Virsh) SaveImageDumpXML(ctx context.Context, file string) (string, error) {
	out, err := v.run(ctx, "save-image-dumpxml", file, "--security-info")
	return out, classify(err)
}

// RestoreXML runs the domain a save image holds under another definition
// of it (same name and UUID; host-side changes only): libvirt's own way.
func (v *Virsh) RestoreXML(ctx context.Context, file, xmlFile string) error {
	_, err := v.run(ctx, "restore", file, "--xml", xmlFile)
	return classify(err)
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

// Suspend pauses the domain's vCPUs; QEMU flushes its disks as it stops.
func (v *Virsh) Suspend(ctx context.Context, name string) error {
	_, err := v.run(ctx, "suspend", name)
	return classify(err)
}

func (v *Virsh) Resume(ctx context.Context, name string) error {
	_, err := v.run(ctx, "resume", name)
	return classify(err)
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

// streamGrace is what a cancelled vol-upload or vol-download gets per signal:
// it holds nothing worth waiting for, and an interrupt must end it at once.
const streamGrace = 300 * time.Millisecond

// DomIPv4 returns the guest's address from the DHCP lease, or "" while it has none.
func (v *Virsh) DomIPv4(ctx context.Context, name string) (string, error) {
	ip, _, err := v.DomLease(ctx, name)
	return ip, err
}

var leaseRE = lazyRE(`([0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5})\s+ipv4\s+([0-9.]+)/`)

// DomLease returns the guest's IPv4 lease and the MAC it was given to
// (lowercase), or "" while it has none.
func (v *Virsh) DomLease(ctx context.Context, name string) (ip, mac string, err error) {
	out, err := v.run(ctx, "domifaddr", name, "--source", "lease")
	if err != nil {
		return "", "", err
	}
	m := leaseRE.FindStringSubmatch(out)
	if m == nil {
		return "", "", nil
	}
	return m[2], strings.ToLower(m[1]), nil
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

// HasManagedSave says whether the domain has a managed save, which its next
// start restores, whatever its state's reason says.
func (v *Virsh) HasManagedSave(ctx context.Context, name string) (bool, error) {
	out, err := v.run(ctx, "dominfo", name)
	if err != nil {
		return false, classify(err)
	}
	for line := range strings.Lines(out) {
		if k, val, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Managed save" {
			return strings.TrimSpace(val) == "yes", nil
		}
	}
	return false, fmt.Errorf("virsh dominfo %s says nothing of a managed save", name)
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

// AgentSetClockByExec sets the guest's clock to the host's by running date
// through the guest agent: guest-set-time writes the RTC too (hwclock -w),
// which waits up to a second for the RTC's edge; date takes a tenth.
func (v *Virsh) AgentSetClockByExec(ctx context.Context, name string) error {
	now := time.Now()
	req, err := json.Marshal(agentRequest{Execute: "guest-exec", Arguments: map[string]any{
		"path": "date", "arg": []string{"-u", "-s", fmt.Sprintf("@%d.%09d", now.Unix(), now.Nanosecond())},
		"capture-output": true,
	}})
	if err != nil {
		return err
	}
	out, err := v.AgentCommand(ctx, name, string(req), 5*time.Second)
	if err != nil {
		if strings.Contains(err.Error(), "guest-exec") { // the agent refused it: disabled, or unknown
			return fmt.Errorf("%w: %v", errAgentNoExec, err)
		}
		return err
	}
	var started struct {
		Return struct {
			PID *int `json:"pid"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(out), &started); err != nil || started.Return.PID == nil {
		return fmt.Errorf("guest-exec: unexpected answer %.100q", out)
	}
	status, _ := json.Marshal(agentRequest{Execute: "guest-exec-status", Arguments: map[string]any{"pid": *started.Return.PID}})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
		out, err := v.AgentCommand(ctx, name, string(status), 5*time.Second)
		if err != nil {
			return err
		}
		var st struct {
			Return struct {
				Exited   bool `json:"exited"`
				ExitCode int  `json:"exitcode"`
				Signal   *int `json:"signal"`
			} `json:"return"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("guest-exec-status: unexpected answer %.100q", out)
		}
		if st.Return.Exited {
			if st.Return.ExitCode != 0 || st.Return.Signal != nil {
				return fmt.Errorf("%w: date in the guest: exit %d", errAgentNoExec, st.Return.ExitCode)
			}
			return nil
		}
	}
}

// errAgentNoExec: the agent answers, but setting the clock by guest-exec
// did not work there (guest-exec refused, or a date without fractions).
var errAgentNoExec = errors.New("the guest agent cannot set the clock by date")

type agentRequest struct {
	Execute   string         `json:"execute"`
	Arguments map[string]any `json:"arguments"`
}
