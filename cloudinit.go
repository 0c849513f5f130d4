package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// cloudInitResultFile appears once cloud-init finished all its stages. On
// 22.4 `cloud-init status` says "error" as soon as one stage logged an error,
// while later stages still run, so its word alone (and `--wait`) is no end.
const cloudInitResultFile = "/run/cloud-init/result.json"

// cloudInitStatus is what `cloud-init status --format json` says (22.4 has
// status and errors; newer versions add extended_status and recoverable_errors).
type cloudInitStatus struct {
	Status            string              `json:"status"`
	ExtendedStatus    string              `json:"extended_status"`
	Errors            []string            `json:"errors"`
	RecoverableErrors map[string][]string `json:"recoverable_errors"`
	exitCode          int                 // 1: errors; 2: degraded (newer versions)
}

func parseCloudInitStatus(out []byte) (cloudInitStatus, error) {
	var s cloudInitStatus
	if err := json.Unmarshal(out, &s); err != nil {
		return s, err
	}
	if s.Status == "" {
		return s, errors.New(`no "status"`)
	}
	return s, nil
}

// failed: a module or stage failed (exit 1).
func (s cloudInitStatus) failed() bool {
	return s.Status == "error" || len(s.Errors) > 0 || s.exitCode == 1
}

// degraded: finished, but with warnings or deprecations (exit 2, newer versions).
func (s cloudInitStatus) degraded() bool {
	return strings.HasPrefix(s.ExtendedStatus, "degraded") || len(s.RecoverableErrors) > 0 || s.exitCode == 2
}

// cloudInitFailure is one thing that went wrong, by module where it says.
type cloudInitFailure struct {
	Module  string // "" when the message names none
	Message string
}

var (
	// 22.4 and later record a module's exception as str((name, exception)):
	// ('scripts-user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))
	moduleTupleRE = lazyRE(`(?s)^\('([A-Za-z0-9_-]+)', (.*)\)$`)
	// An exception's repr with one string argument: RuntimeError('…') or E("…").
	exceptionRE = lazyRE(`(?s)^[A-Za-z_][A-Za-z0-9_.]*\((?:'(.*)'|"(.*)")\)$`)
	// Newer versions also log it, as a warning among the recoverable errors:
	// "Running module scripts_user (<module …>) failed",
	// "Failed to run module scripts_user (scripts in /var/lib/cloud/instance/scripts)",
	// "Failed to run bootcmd module bootcmd".
	moduleLogREs = []*regexp.Regexp{
		regexp.MustCompile(`^Running module ([A-Za-z0-9_-]+) \(.*\) failed`),
		regexp.MustCompile(`^Failed to run (?:[a-z_]+ )?module ([A-Za-z0-9_-]+)\b`),
	}
)

// parseCloudInitError finds the module an error or log line names, and its message.
func parseCloudInitError(s string) cloudInitFailure {
	if m := moduleTupleRE.FindStringSubmatch(s); m != nil {
		msg := m[2]
		if e := exceptionRE.FindStringSubmatch(msg); e != nil {
			msg = unquotePython(e[1] + e[2])
		}
		return cloudInitFailure{Module: m[1], Message: oneLine(msg)}
	}
	for _, re := range moduleLogREs {
		if m := re.FindStringSubmatch(s); m != nil {
			return cloudInitFailure{Module: m[1], Message: oneLine(s)}
		}
	}
	return cloudInitFailure{Message: oneLine(s)}
}

// unquotePython undoes the escapes of a Python string's repr that matter here.
func unquotePython(s string) string {
	return strings.NewReplacer(`\n`, "\n", `\t`, "\t", `\'`, "'", `\"`, `"`, `\\`, `\`).Replace(s)
}

// oneLine makes a message fit one line of vmup's output.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 300 {
		s = string(r[:300]) + "…"
	}
	return s
}

// Severity order of the recoverable errors' levels; unknown levels follow.
var cloudInitLevels = []string{"CRITICAL", "ERROR", "WARNING", "DEPRECATED"}

// failures lists what went wrong, errors first, each module once.
func (s cloudInitStatus) failures() []cloudInitFailure {
	var out []cloudInitFailure
	seen := map[string]bool{}
	add := func(f cloudInitFailure) {
		key := "module " + f.Module
		if f.Module == "" {
			key = "message " + f.Message
		}
		if !seen[key] {
			seen[key] = true
			out = append(out, f)
		}
	}
	for _, e := range s.Errors {
		add(parseCloudInitError(e))
	}
	levels := make([]string, 0, len(s.RecoverableErrors))
	for l := range s.RecoverableErrors {
		levels = append(levels, l)
	}
	slices.SortFunc(levels, func(a, b string) int {
		ia, ib := slices.Index(cloudInitLevels, a), slices.Index(cloudInitLevels, b)
		if ia < 0 {
			ia = len(cloudInitLevels)
		}
		if ib < 0 {
			ib = len(cloudInitLevels)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	for _, l := range levels {
		for _, e := range s.RecoverableErrors[l] {
			f := parseCloudInitError(e)
			if f.Module == "" {
				f.Message = l + ": " + f.Message
			}
			add(f)
		}
	}
	return out
}

// maxReported failures are spelled out in the warning; the guest's log has the rest.
const maxReported = 5

// report is the warning about a finished cloud-init that failed or degraded,
// and the modules it names.
func (s cloudInitStatus) report(name string) (msg string, modules []string) {
	fs := s.failures()
	var parts []string
	for i, f := range fs {
		if f.Module != "" && !slices.Contains(modules, f.Module) {
			modules = append(modules, f.Module)
		}
		switch {
		case i >= maxReported:
		case f.Module != "":
			parts = append(parts, "module "+f.Module+": "+f.Message)
		default:
			parts = append(parts, f.Message)
		}
	}
	if len(fs) > maxReported {
		parts = append(parts, fmt.Sprintf("and %d more", len(fs)-maxReported))
	}
	what := "errors"
	if !s.failed() {
		what = "recoverable errors"
	}
	if len(parts) == 0 {
		parts = append(parts, "status "+s.Status+" "+s.ExtendedStatus)
	}
	return fmt.Sprintf("cloud-init finished with %s: %s (the guest's /var/log/cloud-init.log has more: `vmup ssh %s`)",
		what, strings.Join(parts, "; "), name), modules
}

// waitCloudInit polls until cloud-init finished all its stages, then reads
// its status. ctx carries the boot timeout.
//
// `cloud-init status` is Python: 4.2 s of CPU in a TCG guest, taken from
// cloud-init itself (run on every poll, it kept a vCPU busy, and the wait
// ended up to a run later). It runs once at first, which says at once that
// cloud-init is disabled (it never writes its result) or missing, and once
// at the end only when result.json lists errors; between them a poll is a
// `test -e` of the result (0.04 s).
func (u *vmRun) waitCloudInit(ctx context.Context) (cloudInitStatus, error) {
	asked := false // the first status is known
	for {
		st, done, err := u.pollCloudInit(ctx, !asked)
		var ee *ExitError
		switch {
		case err == nil && (done || st.Status == "disabled"): // a disabled one never writes its result
			return st, nil
		case err == nil:
			asked = true
		case ctx.Err() != nil:
			return st, ctx.Err()
		case errors.As(err, &ee) && ee.ExitCode == 255:
			// ssh lost the guest (sshd restarted, say): go on while the domain runs.
			if err := u.domainAlive(ctx); err != nil {
				return st, err
			}
		default:
			return st, err
		}
		// A probe is one command over the ssh master: cheap enough to ask
		// often, and each second here is one the first boot waits for nothing.
		if err := sleepCtx(ctx, min(u.env.Poll, 250*time.Millisecond)); err != nil {
			return st, err
		}
	}
}

// pollCloudInit says whether cloud-init is done and, once it is or when
// ask is set, its status.
func (u *vmRun) pollCloudInit(ctx context.Context, ask bool) (st cloudInitStatus, done bool, err error) {
	_, err = u.ssh.Exec(ctx, "test", "-e", cloudInitResultFile)
	var ee *ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode == 1) {
		return st, false, err
	}
	if done = err == nil; !done && !ask {
		return st, false, nil
	}
	if done && u.cloudInitResultClean(ctx) {
		return cloudInitStatus{Status: "done"}, true, nil
	}
	st, err = u.cloudInitStatus(ctx)
	return st, done, err
}

// cloudInitResultClean reads result.json, which holds every stage's errors
// (and, since 23.4, recoverable errors): when it plainly lists none, the
// end of a first boot needs no `cloud-init status`. Anything else (errors,
// a file of another shape) leaves the word to `cloud-init status`.
func (u *vmRun) cloudInitResultClean(ctx context.Context) bool {
	res, err := u.ssh.Exec(ctx, "cat", cloudInitResultFile)
	if err != nil {
		return false
	}
	var r struct {
		V1 *struct {
			Errors      *[]json.RawMessage         `json:"errors"`
			Recoverable map[string]json.RawMessage `json:"recoverable_errors"`
		} `json:"v1"`
	}
	if json.Unmarshal(res.Stdout, &r) != nil || r.V1 == nil || r.V1.Errors == nil {
		return false
	}
	return len(*r.V1.Errors) == 0 && len(r.V1.Recoverable) == 0
}

// cloudInitStatus runs `cloud-init status --format json`, which exits 1 on
// errors and (newer versions) 2 when degraded, with its JSON all the same.
func (u *vmRun) cloudInitStatus(ctx context.Context) (cloudInitStatus, error) {
	res, err := u.ssh.Exec(ctx, "cloud-init", "status", "--format", "json")
	var ee *ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode != 1 && ee.ExitCode != 2) {
		return cloudInitStatus{}, fmt.Errorf("cloud-init status: %w", err)
	}
	st, perr := parseCloudInitStatus(res.Stdout)
	if perr != nil {
		return st, fmt.Errorf("cannot read cloud-init's JSON status in the guest (exit %d): %v", res.ExitCode, perr)
	}
	st.exitCode = res.ExitCode
	return st, nil
}
