package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A saved VM: libvirt keeps its memory in a managed save image, and the
// next `virsh start` (so the next `vmup up`) restores it instead of booting.

// saySaved ends a save, by up or down, in one voice.
func saySaved(out *Output, name string) {
	out.Say("saved", "VM %s is saved (`vmup up %s` resumes it where it was)", name, name)
}

// isSaved says whether a domain's state and reason are those of a managed save.
func isSaved(state, reason string) bool { return state == "shut off" && reason == "saved" }

// errKeepsRunning marks a failed save after which the domain still runs.
var errKeepsRunning = errors.New("it keeps running")

// saveDomain saves the running domain's state within timeout. A save that
// overruns, or whose ctx ends, is aborted in libvirt too: killing virsh
// alone would leave libvirt saving. However virsh ended, the domain's state
// says how the save did: saved (nil), still running (errKeepsRunning), or
// neither (shut off meanwhile: an error).
func saveDomain(ctx context.Context, v *Virsh, pool string, paths Paths, timeout time.Duration, warn func(string, ...any)) error {
	name := paths.Name()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	err := v.ManagedSave(sctx, name)
	cut := sctx.Err() != nil
	cancel()
	// From here on nothing is cut short: the domain must end in one state.
	ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if cut {
		if aerr := v.DomJobAbort(ctx, name); aerr != nil && !isNoJob(aerr) {
			err = fmt.Errorf("the save did not finish within %s, and aborting it failed: %v", timeout, aerr)
		} else {
			err = fmt.Errorf("the save did not finish within %s and was aborted", timeout)
		}
	}
	repoint := func() {
		// A definition left naming the deleted seed is repointed by the
		// next up before it restores (checkRestore).
		if err := repointSavedSeed(ctx, v, pool, paths); err != nil {
			warn("VM %s is saved, but its saved definition still names the first boot's seed, deleted since (%v); `vmup up %s` replaces it before it resumes",
				name, err, name)
		}
	}
	if err == nil {
		repoint() // libvirt said it saved: no state to ask
		return nil
	}
	for {
		state, reason, serr := v.DomStateReason(ctx, name)
		switch {
		case serr == nil && isSaved(state, reason):
			repoint() // also when the abort came too late
			return nil
		case serr == nil && state == "running":
			if err == nil {
				err = errors.New("the domain still runs after the save")
			}
			return fmt.Errorf("%w; %w", err, errKeepsRunning)
		case serr == nil && state != "paused":
			// Not saved and not running (the guest powered off meanwhile):
			// only a save job that winds down pauses the domain.
			if err == nil {
				err = errors.New("the save did not happen")
			}
			return fmt.Errorf("%w; it is %s, not saved", err, state)
		case ctx.Err() != nil:
			if err == nil {
				err = fmt.Errorf("the domain is %s after the save", state)
			}
			return err
		}
		// Paused while libvirt finishes or unwinds the save job.
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// repointSeed makes a saved definition (a managed save's or a snapshot's)
// name the seed of later boots where it names the first boot's: that one is
// deleted once the first boot completed (it held the guest's private host
// key), and a restore needs every file its definition names. Both seeds
// hold the same instance id. changed is false when there was nothing to do.
func repointSeed(ctx context.Context, v *Virsh, pool, name, xml string) (fixed string, changed bool, err error) {
	if first := firstSeedVolume(name); !strings.Contains(xml, "/"+first+"'") && !strings.Contains(xml, "/"+first+`"`) {
		return xml, false, nil // it names no first seed: no volume to ask for
	}
	later, err := v.VolPath(ctx, pool, laterSeedVolume(name))
	if errors.Is(err, errNotFound) {
		return xml, false, nil // still in its first boot: its own seed is there
	}
	if err != nil {
		return "", false, err
	}
	first := filepath.Join(filepath.Dir(later), firstSeedVolume(name))
	fixed = strings.NewReplacer("file='"+first+"'", "file='"+later+"'", `file="`+first+`"`, `file="`+later+`"`).Replace(xml)
	return fixed, fixed != xml, nil
}

// repointSavedSeed applies repointSeed to the domain's managed save.
func repointSavedSeed(ctx context.Context, v *Virsh, pool string, paths Paths) error {
	name := paths.Name()
	xml, err := v.ManagedSaveDumpXML(ctx, name)
	if err != nil {
		return err
	}
	fixed, changed, err := repointSeed(ctx, v, pool, name, xml)
	if err != nil || !changed {
		return err
	}
	file := paths.File("managedsave.xml")
	if err := writeFileAtomic(file, []byte(fixed), 0o600); err != nil {
		return err
	}
	defer os.Remove(file)
	return v.ManagedSaveDefine(ctx, name, file)
}

// saveFailure says how a save failed and what to do: the VM keeps running,
// or it is off (and `vmup up` starts it).
func saveFailure(name, pool string, err error) *hintedError {
	e := &hintedError{msg: fmt.Sprintf("could not save VM %s: %v", name, err), code: exitStopFailed,
		hint: fmt.Sprintf("free space in pool %s and run `vmup down --suspend %s` again, or `vmup down %s` to shut it down", pool, name, name)}
	if !errors.Is(err, errKeepsRunning) {
		e.code, e.hint = exitFailed, fmt.Sprintf("run `vmup up %s` to start it", name)
	}
	return e
}

// isNoJob is domjobabort's error when no job runs (it ended meanwhile).
func isNoJob(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && (strings.Contains(ee.Stderr, "no job is active") || strings.Contains(ee.Stderr, "not running"))
}

// save is Suspending's worker: it ends with EvSaved or EvSaveFailed.
func (u *upRun) save(ctx context.Context) {
	old := u.oldWorkersSnapshot()
	u.waitOldWorkers(old)
	u.env.Out.Say("saving", "Saving VM %s (its memory is kept; `vmup up %s` resumes it)", u.o.Name, u.o.Name)
	// The ssh master is ended first: after a restore its connection is stale.
	if u.ssh != nil {
		ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
		u.ssh.Exit(ectx)
		cancel()
	}
	if err := saveDomain(ctx, u.virsh, u.o.Pool, u.paths, u.o.ShutdownTimeout, u.env.Out.Warn); err != nil {
		// A guest that powered off meanwhile is simply stopped.
		if st, serr := u.virsh.DomState(context.WithoutCancel(ctx), u.o.Name); !errors.Is(err, errKeepsRunning) && serr == nil && st == "shut off" {
			u.env.Out.Warn("VM %s was not saved: %v", u.o.Name, err)
			u.send(EvDomainStopped, nil)
			return
		}
		u.send(EvSaveFailed, saveFailure(u.o.Name, u.o.Pool, err))
		return
	}
	u.send(EvSaved, nil)
}

// setClockByAgent asks the guest agent to set the guest's clock to the
// host's, after a restore: the guest's clock stood still while it was
// saved. It runs while SSH is waited for; the result comes on the channel.
func (u *vmRun) setClockByAgent(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() {
		// No agent, or one that does not answer: SSH next, not another wait.
		if err := u.virsh.AgentSetClockByExec(ctx, u.o.Name); !errors.Is(err, errAgentNoExec) {
			done <- err
			return
		}
		// guest-exec refused (an agent that blocks it) or a date that
		// failed: the agent's own command, slower by the RTC's write.
		cmd := fmt.Sprintf(`{"execute":"guest-set-time","arguments":{"time":%d}}`, time.Now().UnixNano())
		_, err := u.virsh.AgentCommand(ctx, u.o.Name, cmd, 5*time.Second)
		done <- err
	}()
	return done
}

// setGuestClock makes sure the clock is set once SSH works: done by the
// agent (byAgent), else by sudo date over SSH (official images may lack the
// agent). A failure is a warning: the guest runs, with a stale clock.
func (u *vmRun) setGuestClock(ctx context.Context, byAgent <-chan error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case err := <-byAgent:
		if err == nil {
			return
		}
	case <-ctx.Done():
		return
	}
	// Read when sent: the SSH login itself takes a moment.
	stamp := strconv.FormatFloat(float64(time.Now().UnixNano())/1e9, 'f', 3, 64)
	script := "if [ \"$(id -u)\" = 0 ]; then date -u -s @" + stamp + "; else sudo -n date -u -s @" + stamp + "; fi >/dev/null"
	if _, err := u.ssh.Exec(ctx, script); err != nil {
		u.env.Out.Warn("cannot set the guest's clock after the restore (no guest agent, and over SSH: %v); it is behind by the time VM %s was saved",
			err, u.o.Name)
	}
}

// askUpToSuspend asks the `up` holding the VM's lock (proven by upHolding) to
// save the VM, repeating SIGUSR1 until it lets go: an up still preparing
// or booting takes it up once the VM runs.
func askUpToSuspend(paths Paths, up lockRecord, cmd string, timeout time.Duration) (*Lock, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		if err := up.signal(unix.SIGUSR1); err != nil && !errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("cannot signal vmup pid %d: %w", up.PID, err)
		}
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		l, err := waitLock(wctx, paths.Lock, cmd)
		wcancel()
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, errLocked) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vmup pid %d did not save VM %s within %s", up.PID, paths.Name(), timeout)
		}
	}
}
