// vmup status: one VM or all, from the journals and one domstats call per connection.
package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

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

// goingOn is sayGoingOn from a command's first change on (begin): before
// it, a signal ends the command, as nothing is halfway yet.
type goingOn struct {
	env       Env
	cmd, name string
	stop      func()
}

// begin is false when a signal ended the command first: it returns at once.
func (g *goingOn) begin() bool {
	if g.stop != nil {
		return true
	}
	if !g.env.commit() {
		return false
	}
	g.stop = sayGoingOn(g.env, g.cmd, g.name)
	return true
}

func (g *goingOn) end() {
	if g.stop != nil {
		g.stop()
	}
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
	// Holder is the vmup command that holds the VM's lock: up, down, destroy, provision, reset.
	Holder string `json:"holder,omitempty"`
	// Created is when the VM was made and AgeSeconds how long ago; both are
	// absent when its journal does not say (one of an older vmup).
	Created    time.Time `json:"created,omitzero"`
	AgeSeconds *int64    `json:"age_seconds,omitempty"`
	// Environment is the VM's environment (its journal's), and OutsideFile
	// says that the vmup.json of status's directory no longer has it.
	Environment string `json:"-"`
	OutsideFile bool   `json:"-"`
	// Run is the `vmup run` whose workload the VM runs, since RunSince.
	Run      string    `json:"-"`
	RunSince time.Time `json:"-"`
}

// statusOf is one VM's status, its domain asked of libvirt alone, and why
// libvirt could not say (its domain then "unknown").
func statusOf(ctx context.Context, env Env, name string) (vmStatus, error) {
	s, connect := journalStatus(env, name, time.Now())
	v := newVirsh(env.Runner, connect)
	state, reason, err := v.DomStateReason(ctx, name)
	s.Domain = domainWord(state, reason, err)
	if err != nil && !errors.Is(err, errNotFound) {
		if cerr := checkLibvirt(ctx, v); cerr != nil {
			return s, cerr
		}
		return s, fmt.Errorf("cannot ask libvirt at %s about domain %s: %w", connect, name, err)
	}
	return s, nil
}

// statusOfAll is the status of every named VM, from one listing of the
// domains per libvirt URI: one virsh call each VM would cost ~20 ms apiece.
// A listing that failed leaves its VMs' domains "unknown" and is in errs.
func statusOfAll(ctx context.Context, env Env, names []string) (list []vmStatus, errs []error) {
	list = make([]vmStatus, len(names))
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
			errs = append(errs, &hintedError{
				msg:  fmt.Sprintf("cannot list the domains at %s: %v", uri, err),
				hint: fmt.Sprintf("start libvirtd, and run `virsh -c %s uri` to check that it lets you in", uri),
			})
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
	return list, errs
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
	if j.Env != nil {
		s.Environment = j.Env.Name
	}
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
	if j.Run != nil {
		s.Run, s.RunSince = j.Run.ID, j.Run.Since
	}
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

// statusRow is the human status table's row format.
const statusRow = "%-20s %-13s %-11s %-21s %-5s %s\n"

// printStatus shows one VM: a row of the table, or with --json its vm event.
func printStatus(env Env, o *Options, s vmStatus) {
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
	fmt.Printf(statusRow, s.Name, s.Phase, s.Domain, ssh, age, fw)
	if s.Run != "" {
		whose := "its vmup is gone: `vmup destroy` or `vmup down` of the VM stops it first"
		if s.Holder == "run" {
			whose = fmt.Sprintf("vmup pid %d runs it", s.PID)
		}
		fmt.Printf("  └ workload of run %s since %s (%s)\n", s.Run, s.RunSince.Local().Format(time.DateTime), whose)
	}
}

func runStatus(env Env, o *Options) int {
	ctx := env.ctx()
	row := statusRow
	print := func(s vmStatus) { printStatus(env, o, s) }
	if o.Name == "" {
		names, err := listVMs(env.Home)
		if err != nil {
			return reportError(env.Out, err)
		}
		if !o.JSON {
			fmt.Printf(row, "NAME", "PHASE", "DOMAIN", "SSH", "AGE", "FORWARDS")
		}
		list, errs := statusOfAll(ctx, env, names)
		for _, s := range list {
			print(s)
		}
		// What libvirt could not say is an environment error, shown after
		// what the journals say.
		code := exitOK
		for _, err := range errs {
			code = reportError(env.Out, err)
		}
		return code
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
	s, err := statusOf(ctx, env, o.Name)
	print(s)
	if err != nil {
		return reportError(env.Out, err) // exit 1: not "not running", which libvirt could not say
	}
	if s.Domain != "running" {
		return statusNotRunning
	}
	return exitOK
}
