package main

import (
	"context"
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

// lockVM takes the VM's lock for a command that works on it, or says who holds it.
func lockVM(out *Output, paths Paths, cmd string) (*Lock, int) {
	lock, _, err := tryLock(paths.Lock, cmd)
	if errors.Is(err, errLocked) {
		rec, _ := lockHolder(paths.Lock)
		return nil, reportError(out, &hintedError{msg: fmt.Sprintf("VM %s is busy: %s is working on it", paths.Name(), rec.describe()), code: exitBusy})
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

// askOwnerToStop sends the `up` holding the VM's lock (as upHolding proved)
// sig, its stop (SIGUSR2) or force-off (sigForceStop) request, and waits
// for it to let go: timeout, and longer while that up is shutting the VM
// down, which its own --shutdown-timeout and force-off end.
func askOwnerToStop(paths Paths, up lockRecord, sig unix.Signal, cmd string, timeout time.Duration) (*Lock, error) {
	if err := up.signal(sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("cannot signal vmup pid %d: %w", up.PID, err)
	}
	wait := func(d time.Duration) (*Lock, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return waitLock(ctx, paths.Lock, cmd)
	}
	l, err := wait(timeout)
	for errors.Is(err, errLocked) {
		if now, ok := upHolding(paths.Lock); !ok || now != up || journalPhase(paths) != Stopping {
			// It may be letting go just now (its record goes first).
			if l, err = wait(2 * time.Second); errors.Is(err, errLocked) {
				return nil, fmt.Errorf("vmup pid %d did not stop within %s", up.PID, timeout)
			}
			break
		}
		l, err = wait(time.Second)
	}
	return l, err
}

// journalPhase is the phase the VM's journal records, noPhase if none.
func journalPhase(paths Paths) Phase {
	if j, err := readJournal(paths); err == nil && j != nil {
		return j.Phase
	}
	return noPhase
}

// waitBusy waits a few seconds for a holder of the VM's lock that is no
// proven `up`: a destroy, down or provision at work, or a holder its record
// does not name. It is never signalled: a destroy killed halfway leaves a
// half-destroyed VM.
func waitBusy(env Env, paths Paths, cmd string) (*Lock, int) {
	ctx, cancel := context.WithTimeout(env.ctx(), busyWait)
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
	going := &goingOn{env: env, cmd: "down", name: o.Name}
	defer going.end()
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
			if !going.begin() {
				return exitFailed // a signal ended it: the guard has its code
			}
			if o.Suspend {
				out.Say("saving", "Asking vmup pid %d to save VM %s", up.PID, o.Name)
				lock, err = askUpToSuspend(paths, up, "down", o.ShutdownTimeout+30*time.Second)
			} else if o.Force {
				out.Say("stopping", "Asking vmup pid %d to force VM %s off", up.PID, o.Name)
				lock, err = askOwnerToStop(paths, up, sigForceStop, "down", 30*time.Second)
			} else {
				// An up already shutting the VM down goes on doing so.
				out.Say("stopping", "Asking vmup pid %d to shut VM %s down", up.PID, o.Name)
				lock, err = askOwnerToStop(paths, up, unix.SIGUSR2, "down", o.ShutdownTimeout+30*time.Second)
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
	ctx := env.ctx()
	if err := checkLibvirt(ctx, v); err != nil {
		return reportError(out, err)
	}
	state, reason, err := v.DomStateReason(ctx, o.Name)
	if !going.begin() {
		return exitFailed // a signal ended it: the guard has its code
	}
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
	stopOrphanOf(ctx, env, o.Name, paths, j, v)
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
		// Asked often, as by hand: the second it is off, down is done.
		if time.Now().After(deadline) || sleepCtx(ctx, min(poll, 250*time.Millisecond)) != nil {
			return false
		}
	}
}

func runDestroy(env Env, o *Options) int {
	out := env.Out
	going := &goingOn{env: env, cmd: "destroy", name: o.Name}
	defer going.end()
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
			if !going.begin() {
				return exitFailed // a signal ended it: the guard has its code
			}
			out.Say("stopping", "Asking vmup pid %d to stop VM %s first", up.PID, o.Name)
			lock, err = askOwnerToStop(paths, up, unix.SIGUSR2, "destroy", 2*time.Minute)
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
	ctx := env.ctx()
	// What the wipe decides on is asked while libvirt is checked: each
	// virsh call costs ~40 ms, and none of these changes anything.
	askCtx, stopAsking := context.WithCancel(ctx)
	defer stopAsking()
	asked := make(chan *domainFacts, 1)
	go func() { asked <- askDomain(askCtx, v, o.Name, pool, len(vols) > 0 || bad != nil) }()
	if err := checkLibvirt(ctx, v); err != nil {
		stopAsking()
		<-asked
		return reportError(out, err)
	}
	facts := <-asked
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
	if !going.begin() {
		return exitFailed // a signal ended it: the guard has its code
	}
	if j == nil && bad == nil {
		if errors.Is(facts.stateErr, errNotFound) {
			os.RemoveAll(paths.Dir)
			out.Say("destroyed", "No VM named %s; nothing to destroy", o.Name)
			return exitOK
		}
	}
	if j != nil {
		reapGroup(j.PlaybookPGID, paths)
		stopOrphanOf(ctx, env, o.Name, paths, j, v)
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
	if err := wipeVMAsked(ctx, v, pool, paths, vols, facts); err != nil {
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
	// definition: taken by name only when nothing says they are another's.
	var extra []string
	for _, vol := range []string{name + ".qcow2", runDiskVolume(name), firstSeedVolume(name), laterSeedVolume(name)} {
		if slices.Contains(vols, vol) {
			continue
		}
		if exists, err := v.VolExists(ctx, pool, vol); err == nil && exists {
			extra = append(extra, vol)
		}
	}
	if len(extra) == 0 {
		return vols, nil
	}
	others, err := otherDomainsFiles(ctx, v, name)
	if err != nil {
		return nil, err
	}
	for _, vol := range extra {
		path, err := v.VolPath(ctx, pool, vol)
		if err != nil || others[path] {
			continue
		}
		// NAME-run.qcow2 is also VM NAME-run's disk: NAME's own is an
		// overlay on NAME.qcow2 beside it.
		if vol == runDiskVolume(name) {
			backing, err := v.VolBacking(ctx, pool, vol)
			if err != nil || backing != filepath.Join(filepath.Dir(path), name+".qcow2") {
				continue
			}
		}
		vols = append(vols, vol)
	}
	return vols, nil
}

// otherDomainsFiles is every file that a domain other than name names.
func otherDomainsFiles(ctx context.Context, v *Virsh, name string) (map[string]bool, error) {
	states, err := v.DomStates(ctx)
	if err != nil {
		return nil, err
	}
	files := map[string]bool{}
	for other := range states {
		if other == name {
			continue
		}
		xml, err := v.DumpXML(ctx, other)
		if errors.Is(err, errNotFound) {
			continue // undefined meanwhile
		}
		if err != nil {
			return nil, err
		}
		for _, m := range domainFileRE.FindAllStringSubmatch(xml, -1) {
			files[m[1]] = true
		}
	}
	return files, nil
}

var domainFileRE = lazyRE(`(?:file=['"]|<kernel>|<initrd>)(/[^'"<]+)`)

// event is s as the vm event of `status --json`.
func (s vmStatus) event() jsonEvent {
	return jsonEvent{Event: "vm", VM: s.Name, Phase: s.Phase, Domain: s.Domain, SSH: s.SSH, Address: s.Address,
		Forwards: &s.Forwards, PID: s.PID, Holder: s.Holder, Created: s.Created, AgeSeconds: s.AgeSeconds,
		Environment: s.Environment, OutsideFile: s.OutsideFile, Run: s.Run, RunSince: s.RunSince}
}
