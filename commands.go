package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lockVM takes the VM's lock for a command that works on it, or says who holds it.
func lockVM(out *Output, paths Paths, cmd string) (*Lock, int) {
	lock, holder, err := tryLock(paths.Lock, cmd)
	if errors.Is(err, errLocked) {
		return nil, reportError(out, &hintedError{msg: fmt.Sprintf("VM %s is busy (pid %d)", paths.Name(), holder), code: exitBusy})
	}
	if err != nil {
		return nil, reportError(out, err)
	}
	return lock, 0
}

// loadVM reads a VM's journal for the commands that need an existing VM.
func loadVM(env Env, o *Options, cmd string) (Paths, *Journal, int) {
	if err := requireName(o, cmd); err != nil {
		return Paths{}, nil, reportError(env.Out, err)
	}
	paths := pathsFor(env.Home, o.Name)
	if err := checkStateDirs(paths); err != nil {
		return paths, nil, reportError(env.Out, err)
	}
	j, err := readJournal(paths)
	if err != nil {
		return paths, nil, reportError(env.Out, err)
	}
	if j == nil {
		return paths, nil, reportError(env.Out, &hintedError{
			msg:  "no VM named " + o.Name,
			hint: fmt.Sprintf("run `vmup status` to list the VMs, or `vmup up %s --image …` to create it", o.Name),
		})
	}
	return paths, j, -1
}

// busyWait is how long down and destroy wait for a holder of the VM's lock
// that they may not ask to stop.
const busyWait = 5 * time.Second

// upHolding returns the `up` that holds the VM's lock, proven to be that very
// process: its record says up, its pid still has the recorded start time and
// runs `vmup up`, and the lock is still held. A pid that a stale record names
// may be anyone's now.
func upHolding(path string) (lockRecord, bool) {
	data, _ := os.ReadFile(path)
	rec, ok := parseLockRecord(data)
	if !ok || rec.Command != "up" || !rec.alive() || !runsUp(rec.PID) {
		return rec, false
	}
	_, held := lockHolder(path)
	return rec, held
}

// runsUp says whether pid's command line is `vmup up …`.
func runsUp(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	args := strings.Split(string(data), "\x00")
	return err == nil && len(args) > 1 && args[1] == "up"
}

// askToStop sends the recorded `up` vmup's own stop request, SIGUSR2: a
// SIGTERM that never saves, also under --suspend-on-stop (where a SIGTERM
// from elsewhere saves), since `down` and `destroy` mean to stop the VM.
func (r lockRecord) askToStop() error { return r.signal(unix.SIGUSR2) }

// signal sends sig to the recorded process and to no other: through a
// pidfd, opened before the start time is checked again, a pid reused after
// the check is never the one signalled.
func (r lockRecord) signal(sig unix.Signal) error {
	fd, err := unix.PidfdOpen(r.PID, 0)
	if errors.Is(err, unix.ENOSYS) { // before Linux 5.3
		if !r.alive() {
			return unix.ESRCH
		}
		return unix.Kill(r.PID, sig)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if !r.alive() {
		return unix.ESRCH
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// askOwnerToStop sends SIGTERM to the `up` holding the VM's lock (as
// upHolding proved) and waits for it to let go.
func askOwnerToStop(env Env, paths Paths, up lockRecord, cmd string, timeout time.Duration) (*Lock, error) {
	if err := up.askToStop(); err != nil && !errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("cannot signal vmup pid %d: %w", up.PID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	l, err := waitLock(ctx, paths.Lock, cmd)
	if errors.Is(err, errLocked) {
		return nil, fmt.Errorf("vmup pid %d did not stop within %s", up.PID, timeout)
	}
	return l, err
}

// waitBusy waits a few seconds for a holder of the VM's lock that is no
// proven `up`: a destroy, down or provision at work, or a holder its record
// does not name. It is never signalled: a destroy killed halfway leaves a
// half-destroyed VM.
func waitBusy(env Env, paths Paths, cmd string) (*Lock, int) {
	ctx, cancel := context.WithTimeout(context.Background(), busyWait)
	defer cancel()
	l, err := waitLock(ctx, paths.Lock, cmd)
	if errors.Is(err, errLocked) {
		rec, _ := lockHolder(paths.Lock)
		return nil, reportError(env.Out, &hintedError{
			msg:  fmt.Sprintf("VM %s is busy: %s is working on it", paths.Name(), rec.describe()),
			hint: "wait for it to finish, then run the command again",
			code: exitBusy,
		})
	}
	if err != nil {
		return nil, reportError(env.Out, err)
	}
	return l, 0
}

func runDown(env Env, o *Options) int {
	out := env.Out
	defer sayGoingOn(env, "down", o.Name)()
	if o.Suspend && o.Force {
		return reportError(out, usagef("give one of them", "--suspend and --force exclude each other"))
	}
	paths, j, code := loadVM(env, o, "down")
	if j == nil {
		return code
	}
	lock, _, err := tryLock(paths.Lock, "down")
	if errors.Is(err, errLocked) {
		if up, ok := upHolding(paths.Lock); ok {
			// Decided by first_boot_done, which only ever turns true, not by a
			// phase: a retry holds its journal back while it prepares, and a
			// SIGTERM that lands once it started would wipe the VM.
			if cur, _ := readJournal(paths); cur == nil || !cur.FirstBootDone {
				return reportError(out, &hintedError{
					msg:  fmt.Sprintf("VM %s is in its first boot (vmup pid %d); down would leave it half made", o.Name, up.PID),
					hint: fmt.Sprintf("press Ctrl+C twice in that terminal to abort it, or run `vmup destroy %s`", o.Name),
					code: exitBusy,
				})
			}
			if o.Suspend {
				out.Say("saving", "Asking vmup pid %d to save VM %s", up.PID, o.Name)
				lock, err = askUpToSuspend(paths, up, "down", o.ShutdownTimeout+30*time.Second)
			} else {
				out.Say("stopping", "Asking vmup pid %d to shut VM %s down", up.PID, o.Name)
				lock, err = askOwnerToStop(env, paths, up, "down", o.ShutdownTimeout+30*time.Second)
			}
			if err != nil {
				return reportError(out, err)
			}
			// An up that was still preparing let go without stopping the VM:
			// down goes on and does it (one that ran it, shut it down).
		} else if lock, code = waitBusy(env, paths, "down"); lock == nil {
			return code
		}
		// Its holder may have changed or removed the VM meanwhile.
		j, err = readJournal(paths)
	}
	defer lock.Unlock()
	if err != nil {
		return reportError(out, err)
	}
	if j == nil {
		out.Say("stopped", "VM %s is gone", o.Name)
		return exitOK
	}
	v := newVirsh(env.Runner, j.Connect)
	ctx := context.Background()
	if err := checkLibvirt(ctx, v); err != nil {
		return reportError(out, err)
	}
	state, reason, err := v.DomStateReason(ctx, o.Name)
	switch {
	case err == nil && isSaved(state, reason):
		setJournalPhase(paths, Saved)
		saySaved(out, o.Name)
		return exitOK
	case errors.Is(err, errNotFound) || err == nil && state == "shut off":
		if o.Suspend {
			out.Say("stopped", "VM %s is shut off: there is nothing to save", o.Name)
		} else {
			out.Say("stopped", "VM %s is already shut off", o.Name)
		}
		return exitOK
	case err != nil:
		return reportError(out, err)
	case o.Suspend:
		out.Say("saving", "Saving VM %s (up to %s)", o.Name, o.ShutdownTimeout)
		if err := saveDomain(ctx, v, j.Pool, paths, o.ShutdownTimeout, out.Warn); err != nil {
			return reportError(out, saveFailure(o.Name, j.Pool, err))
		}
		setJournalPhase(paths, Saved)
		saySaved(out, o.Name)
		return exitOK
	}
	if !o.Force {
		out.Say("stopping", "Shutting down VM %s (up to %s)", o.Name, o.ShutdownTimeout)
		if err := v.Shutdown(ctx, o.Name); err == nil && waitShutOff(ctx, v, o.Name, o.ShutdownTimeout, env.Poll) {
			setJournalPhase(paths, Stopped)
			out.Say("stopped", "VM %s is shut off", o.Name)
			return exitOK
		}
		out.Warn("the guest did not shut down within %s; forcing it off", o.ShutdownTimeout)
	}
	if err := v.Destroy(ctx, o.Name); err != nil && !isNotRunning(err) {
		return reportError(out, &hintedError{msg: fmt.Sprintf("cannot force VM %s off: %v", o.Name, err), code: exitStopFailed})
	}
	setJournalPhase(paths, Stopped)
	out.Say("stopped", "VM %s is off", o.Name)
	return exitOK
}

func setJournalPhase(paths Paths, p Phase) {
	if j, err := readJournal(paths); err == nil && j != nil && j.Phase != p {
		j.Phase = p
		writeJournal(paths, j)
	}
}

// waitShutOff polls the domain state until it is off or the timeout passes.
func waitShutOff(ctx context.Context, v *Virsh, name string, timeout, poll time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		state, err := v.DomState(ctx, name)
		if errors.Is(err, errNotFound) || state == "shut off" {
			return true
		}
		if time.Now().After(deadline) || sleepCtx(ctx, poll) != nil {
			return false
		}
	}
}

func runDestroy(env Env, o *Options) int {
	out := env.Out
	defer sayGoingOn(env, "destroy", o.Name)()
	if err := requireName(o, "destroy"); err != nil {
		return reportError(out, err)
	}
	paths := pathsFor(env.Home, o.Name)
	if err := checkStateDirs(paths); err != nil {
		return reportError(out, err)
	}
	lock, _, err := tryLock(paths.Lock, "destroy")
	if errors.Is(err, errLocked) {
		if up, ok := upHolding(paths.Lock); ok {
			out.Say("stopping", "Asking vmup pid %d to stop VM %s first", up.PID, o.Name)
			lock, err = askOwnerToStop(env, paths, up, "destroy", 2*time.Minute)
		} else {
			var code int
			if lock, code = waitBusy(env, paths, "destroy"); lock == nil {
				return code
			}
			err = nil
		}
	}
	if err != nil {
		return reportError(out, err)
	}
	defer lock.Unlock()
	j, err := readJournal(paths)
	var bad *journalError
	if err != nil && !errors.As(err, &bad) {
		return reportError(out, err)
	}
	connect, pool := o.Connect, o.Pool
	var vols []string
	if j != nil {
		connect, pool, vols = j.Connect, j.Pool, j.Volumes
	}
	if j == nil && (!validConnect(connect) || !validPool(pool)) {
		return reportError(out, usagef("", "cannot destroy VM %s with connect %q and pool %q", o.Name, connect, pool))
	}
	v := newVirsh(env.Runner, connect)
	ctx := context.Background()
	if err := checkLibvirt(ctx, v); err != nil {
		return reportError(out, err)
	}
	if bad != nil {
		// Nothing in it is trusted: the name is the command line's, connect and
		// pool are the defaults (or flags), and the volumes are those that
		// libvirt's definition of vmup's domain names.
		out.Warn("%v", bad)
		if vols, err = domainVolumes(ctx, v, pool, o.Name); err != nil {
			return reportError(out, err)
		}
		out.Say("destroying", "Destroying VM %s by its name alone: domain %s (if vmup made it) on %s, volumes [%s] in pool %s, and its state",
			o.Name, o.Name, connect, strings.Join(vols, ", "), pool)
	}
	if j == nil && bad == nil {
		if _, err := v.DomState(ctx, o.Name); errors.Is(err, errNotFound) {
			os.RemoveAll(paths.Dir)
			out.Say("destroyed", "No VM named %s; nothing to destroy", o.Name)
			return exitOK
		}
	}
	if j != nil {
		reapGroup(j.PlaybookPGID, paths)
	}
	if j != nil && j.UploadingBase != "" {
		// An upload its vmup never finished: partial unless marked complete since.
		l, err := waitLock(ctx, filepath.Join(env.Home, "locks", "_global.lock"), "destroy")
		if err == nil {
			err = removePartialBase(ctx, v, pool, j.UploadingBase)
			l.Unlock()
		}
		if err != nil {
			return reportError(out, err)
		}
	}
	if err := wipeVM(ctx, v, pool, paths, vols); err != nil {
		return reportError(out, err)
	}
	out.Say("destroyed", "VM %s destroyed", o.Name)
	return exitOK
}

// domainVolumes names the volumes of pool that vmup's domain name uses, as
// libvirt's definition of it says: what a journal that cannot be trusted
// would have listed. No vmup domain, no volumes.
func domainVolumes(ctx context.Context, v *Virsh, pool, name string) ([]string, error) {
	if owned, err := v.Owned(ctx, name); errors.Is(err, errNotFound) || err == nil && !owned {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	xml, err := v.DumpXML(ctx, name)
	if err != nil {
		return nil, err
	}
	var vols []string
	for _, m := range domainFileRE.FindAllStringSubmatch(xml, -1) {
		vol := filepath.Base(m[1])
		if !validVMVolume(name, vol) || slices.Contains(vols, vol) {
			continue
		}
		if path, err := v.VolPath(ctx, pool, vol); err == nil && path == m[1] {
			vols = append(vols, vol)
		}
	}
	// The seed the domain does not boot from now (the later one, during the
	// first boot), and the disk a provisioned state froze, are named by no
	// definition, but they are this VM's all the same.
	for _, vol := range []string{name + ".qcow2", runDiskVolume(name), firstSeedVolume(name), laterSeedVolume(name)} {
		if slices.Contains(vols, vol) {
			continue
		}
		if exists, err := v.VolExists(ctx, pool, vol); err == nil && exists {
			vols = append(vols, vol)
		}
	}
	return vols, nil
}

var domainFileRE = regexp.MustCompile(`(?:file=['"]|<kernel>|<initrd>)(/[^'"<]+)`)

// sayGoingOn acknowledges each signal to destroy or down until stop, as they
// finish what they began: stopped halfway they would leave the VM half removed.
func sayGoingOn(env Env, cmd, name string) (stop func()) {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-env.Signals:
				env.Out.Warn("vmup %s of VM %s goes on until it is done; it is never left halfway", cmd, name)
			case <-done:
				return
			}
		}
	}()
	return func() { close(done) }
}

// vmStatus is one VM as `status --json` shows it.
type vmStatus struct {
	Name   string `json:"name"`
	Phase  string `json:"phase"`
	Domain string `json:"domain"`
	SSH    string `json:"ssh,omitempty"`
	// Address is the host the guest's sshd is reached at: its lease address
	// on nat, 127.0.0.1 (a forward) on user.
	Address  string   `json:"address,omitempty"`
	Forwards []string `json:"forwards"`
	PID      int      `json:"pid,omitempty"`
	// Holder is the vmup command that holds the VM's lock: up, down, destroy, provision.
	Holder string `json:"holder,omitempty"`
	// Created is when the VM was made and AgeSeconds how long ago; both are
	// absent when its journal does not say (one of an older vmup).
	Created    time.Time `json:"created,omitzero"`
	AgeSeconds *int64    `json:"age_seconds,omitempty"`
}

// event is s as the vm event of `status --json`.
func (s vmStatus) event() jsonEvent {
	return jsonEvent{Event: "vm", VM: s.Name, Phase: s.Phase, Domain: s.Domain, SSH: s.SSH, Address: s.Address,
		Forwards: &s.Forwards, PID: s.PID, Holder: s.Holder, Created: s.Created, AgeSeconds: s.AgeSeconds}
}

// statusOf is one VM's status, its domain asked of libvirt alone.
func statusOf(ctx context.Context, env Env, name string) vmStatus {
	s, connect := journalStatus(env, name, time.Now())
	state, reason, err := newVirsh(env.Runner, connect).DomStateReason(ctx, name)
	s.Domain = domainWord(state, reason, err)
	return s
}

// statusOfAll is the status of every named VM, from one listing of the
// domains per libvirt URI: one virsh call each VM would cost ~20 ms apiece.
func statusOfAll(ctx context.Context, env Env, names []string) []vmStatus {
	list := make([]vmStatus, len(names))
	byURI := map[string][]int{}
	now := time.Now()
	for i, name := range names {
		s, connect := journalStatus(env, name, now)
		list[i] = s
		byURI[connect] = append(byURI[connect], i)
	}
	for _, uri := range slices.Sorted(maps.Keys(byURI)) {
		states, err := newVirsh(env.Runner, uri).DomStates(ctx)
		if err != nil {
			env.Out.Warn("cannot list the domains at %s: %v", uri, err)
		}
		for _, i := range byURI[uri] {
			st, ok := states[list[i].Name]
			switch {
			case err != nil:
				list[i].Domain = domainWord("", "", err)
			case !ok:
				list[i].Domain = domainWord("", "", errNotFound)
			default:
				list[i].Domain = domainWord(st.State, st.Reason, nil)
			}
		}
	}
	return list
}

// domainWord is what status shows of a domain: virsh's state word, "saved"
// for a managed save (`vmup up` resumes it), "undefined" for none, and
// "unknown" when libvirt could not say.
func domainWord(state, reason string, err error) string {
	switch {
	case errors.Is(err, errNotFound):
		return "undefined"
	case err != nil:
		return "unknown"
	case isSaved(state, reason):
		return "saved" // shut off, and `vmup up` resumes it
	}
	return state
}

// journalStatus is what a VM's journal and lock say of it (its domain still
// "unknown"), and the libvirt URI its domain is asked at.
func journalStatus(env Env, name string, now time.Time) (vmStatus, string) {
	paths := pathsFor(env.Home, name)
	s := vmStatus{Name: name, Phase: "unknown", Domain: "unknown", Forwards: []string{}}
	j, err := readJournal(paths)
	if err != nil {
		s.Phase = "damaged" // `vmup status NAME` says how
	}
	if j == nil {
		return s, defaultOptions().Connect // read only here: it reads libvirt's config files
	}
	s.Phase = j.Phase.String()
	rec, held := lockHolder(paths.Lock)
	if held && rec.alive() {
		s.PID, s.Holder = rec.PID, rec.Command
	}
	if (!held || rec.Command != "up") && (j.Phase == Running || j.Phase == Booting) {
		s.Phase = "detached" // its vmup is gone; the VM may still run
	}
	if j.SSHPort != 0 {
		s.SSH = Endpoint{Host: j.SSHHost, Port: j.SSHPort}.String()
	}
	s.Address = j.SSHHost
	if j.Forwards != nil {
		s.Forwards = j.Forwards
	}
	if !j.Created.IsZero() {
		age := int64(max(0, now.Sub(j.Created)) / time.Second) // a clock set back makes no VM younger than new
		s.Created, s.AgeSeconds = j.Created, &age
	}
	return s, j.Connect
}

// ageWords is an age in its largest whole unit, as `status` shows it: 45s,
// 12m, 3h, and days from two days on.
func ageWords(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return fmt.Sprintf("%dd", d/(24*time.Hour))
}

func runStatus(env Env, o *Options) int {
	ctx := context.Background()
	row := "%-20s %-13s %-11s %-21s %-5s %s\n"
	print := func(s vmStatus) {
		if o.JSON {
			env.Out.Data(s.event())
			return
		}
		fw := strings.Join(s.Forwards, ",")
		if fw == "" {
			fw = "-"
		}
		ssh := s.SSH
		if ssh == "" {
			ssh = "-"
		}
		age := "-"
		if s.AgeSeconds != nil {
			age = ageWords(time.Duration(*s.AgeSeconds) * time.Second)
		}
		fmt.Printf(row, s.Name, s.Phase, s.Domain, ssh, age, fw)
	}
	if o.Name == "" {
		names, err := listVMs(env.Home)
		if err != nil {
			return reportError(env.Out, err)
		}
		if !o.JSON {
			fmt.Printf(row, "NAME", "PHASE", "DOMAIN", "SSH", "AGE", "FORWARDS")
		}
		for _, s := range statusOfAll(ctx, env, names) {
			print(s)
		}
		return exitOK
	}
	if err := requireName(o, "status"); err != nil {
		return reportError(env.Out, err)
	}
	paths := pathsFor(env.Home, o.Name)
	if err := checkStateDirs(paths); err != nil {
		return reportError(env.Out, err)
	}
	// Every vmup VM has a journal; a name without one is no vmup VM.
	j, err := readJournal(paths)
	if err != nil {
		return reportError(env.Out, err)
	}
	if j == nil {
		return reportError(env.Out, &hintedError{msg: "no VM named " + o.Name, code: statusNoSuchVM})
	}
	s := statusOf(ctx, env, o.Name)
	print(s)
	if s.Domain != "running" {
		return statusNotRunning
	}
	return exitOK
}

func sshFor(env Env, o *Options, cmd string) (*SSH, int) {
	paths, j, code := loadVM(env, o, cmd)
	if j == nil {
		return nil, code
	}
	if j.SSHPort == 0 {
		return nil, reportError(env.Out, &hintedError{
			msg:  fmt.Sprintf("VM %s has no SSH endpoint yet", o.Name),
			hint: fmt.Sprintf("run `vmup up %s` to start it", o.Name),
		})
	}
	s := newSSH(env.Runner, o.Name, j.User, paths, Endpoint{Host: j.SSHHost, Port: j.SSHPort})
	s.control = controlPath(paths, j)
	return s, -1
}

// runSSH replaces vmup with ssh, so the terminal, signals and exit status are ssh's.
func runSSH(env Env, o *Options, command []string) int {
	s, code := sshFor(env, o, "ssh")
	if s == nil {
		return code
	}
	argv := s.argv()
	// An interactive session gets a terminal; BatchMode only stops password prompts.
	argv = append(argv[:1], append([]string{"-t"}, argv[1:]...)...)
	if len(command) > 0 {
		argv[1] = "-T"
		argv = append(argv, "--")
		argv = append(argv, command...)
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return reportError(env.Out, fmt.Errorf("cannot run ssh: %w", err))
	}
	err = unix.Exec(prog, argv, os.Environ())
	return reportError(env.Out, fmt.Errorf("cannot run ssh: %w", err))
}

// runSSHConfig prints the VM's ssh config and keeps it as ssh.config in the
// state dir, for `ssh -F` and tools that take a config file.
func runSSHConfig(env Env, o *Options) int {
	if abs, err := filepath.Abs(env.Home); err == nil {
		env.Home = abs // the config is used from anywhere
	}
	s, code := sshFor(env, o, "ssh-config")
	if s == nil {
		return code
	}
	config, path := s.Config(), s.paths.SSHConfig()
	// Atomic: a symlink planted at that name is replaced, not written through.
	if err := writeFileAtomic(path, []byte(config), 0o600); err != nil {
		return reportError(env.Out, err)
	}
	if !o.JSON { // with --json, stdout is events: the text is the event's config
		fmt.Print(config)
	}
	env.Out.Data(jsonEvent{Event: "ssh_config", Config: config, Path: path,
		Message: fmt.Sprintf("Written to %s too: `ssh -F %s %s` uses it", path, path, o.Name)})
	return exitOK
}

// runProvision runs a playbook on a running VM. It never wipes anything:
// an interrupt stops the playbook and keeps the VM.
func runProvision(env Env, o *Options) int {
	out := env.Out
	paths, j, code := loadVM(env, o, "provision")
	if j == nil {
		return code
	}
	lock, code := lockVM(out, paths, "provision")
	if lock == nil {
		return code
	}
	defer lock.Unlock()
	playbook, args := absPath(o.Playbook), o.PlaybookArgs
	if playbook == "" {
		playbook, args = j.Playbook, j.PlaybookArgs
	}
	if playbook == "" {
		return reportError(out, usagef(fmt.Sprintf("run `vmup provision %s --playbook FILE` to name one", o.Name), "no playbook to run"))
	}
	if _, err := os.Stat(playbook); err != nil {
		return reportError(out, usagef("", "--playbook %s: no such file", playbook))
	}
	v := newVirsh(env.Runner, j.Connect)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := checkLibvirt(ctx, v); err != nil {
		return reportError(out, err)
	}
	if state, err := v.DomState(ctx, o.Name); err != nil || state != "running" {
		return reportError(out, &hintedError{
			msg:  fmt.Sprintf("VM %s is not running", o.Name),
			hint: fmt.Sprintf("run `vmup up %s -d` to start it", o.Name),
		})
	}
	s := newSSH(env.Runner, o.Name, j.User, paths, Endpoint{Host: j.SSHHost, Port: j.SSHPort})
	s.control = controlPath(paths, j)
	if err := writeInventory(paths, o.Name, j.User, s.ep); err != nil {
		return reportError(out, err)
	}
	var sig os.Signal
	go func() {
		sig = <-env.Signals
		out.Say("interrupted", "Interrupted: stopping the playbook; VM %s is kept", o.Name)
		cancel()
	}()
	out.Plan(1)
	out.Step("Provisioning with " + playbook)
	logPath, err := newAnsible(env.Runner).Run(ctx, paths, s, playbook, args, out.Indented("      "), nil)
	switch {
	case ctx.Err() != nil:
		out.Fail("interrupted")
		return signalExit(sig)
	case err != nil:
		out.Fail("see " + logPath)
		noteAnsibleExit(out, err, logPath)
		return reportError(out, &hintedError{msg: err.Error(), code: exitProvision})
	}
	out.Done("")
	return exitOK
}
