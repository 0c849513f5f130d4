package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// fakeWorld is a tiny libvirt, plus the guest's sshd, that the fake virsh,
// ssh and qemu-img answer from. Unit tests keep it in memory; the binary test
// keeps it in a file shared by the fake programs.
type fakeWorld struct {
	Domains map[string]string // name -> "running" / "shut off"
	Owned   map[string]bool
	Pools   map[string]bool
	Volumes map[string]bool // "pool/vol"
	// ShutdownIgnored makes ACPI shutdown do nothing (a guest without acpid).
	ShutdownIgnored bool
	// ExternalStop makes the domain shut off after this many domstate calls.
	ExternalStop int
}

func newFakeWorld() *fakeWorld {
	return &fakeWorld{Domains: map[string]string{}, Owned: map[string]bool{}, Pools: map[string]bool{}, Volumes: map[string]bool{}}
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

// virsh answers one virsh command line (without -c URI).
func (w *fakeWorld) virsh(args []string) (stdout, stderr string, code int) {
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
		return st, "", 0
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
		return "Domain '" + name + "' defined", "", 0
	case "start":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		w.Domains[arg(1)] = "running"
		return "", "", 0
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
		if st != "running" {
			return "", "error: Requested operation is not valid: domain is not running", 1
		}
		w.Domains[arg(1)] = "shut off"
		return "", "", 0
	case "undefine":
		if _, ok := w.Domains[arg(1)]; !ok {
			return notFound("domain", arg(1))
		}
		delete(w.Domains, arg(1))
		delete(w.Owned, arg(1))
		return "", "", 0
	case "pool-info":
		if !w.Pools[arg(1)] {
			return "", "error: failed to get pool '" + arg(1) + "'", 1
		}
		return "Name: " + arg(1) + "\nState:          running\n", "", 0
	case "pool-define-as":
		w.Pools[arg(1)] = true
		return "", "", 0
	case "pool-build", "pool-start", "pool-autostart":
		return "", "", 0
	case "vol-info", "vol-path":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		return "/pool/" + pv, "", 0
	case "vol-create-as":
		w.Volumes[arg(1)+"/"+arg(2)] = true
		return "", "", 0
	case "vol-upload", "vol-resize":
		if !w.Volumes[poolVol()] {
			return notFound("vol", poolVol())
		}
		return "", "", 0
	case "vol-delete":
		pv := poolVol()
		if !w.Volumes[pv] {
			return notFound("vol", pv)
		}
		delete(w.Volumes, pv)
		return "", "", 0
	}
	return "", "fake virsh: unknown command " + args[0], 1
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
	raw   [][]string // the same calls unabbreviated
	// playbook decides what ansible-playbook does: "ok", "fail" or "block".
	playbook string
	// playbookStarted is closed when a playbook starts.
	playbookStarted chan struct{}
	// gate, when set, runs before a virsh command is answered (to hold it).
	gate func(args []string)
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{world: newFakeWorld(), playbook: "ok", playbookStarted: make(chan struct{}, 8)}
}

func (f *fakeRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	f.mu.Lock()
	short := abbreviate(c.Args)
	f.calls = append(f.calls, short)
	f.raw = append(f.raw, slices.Clone(c.Args))
	f.mu.Unlock()
	if c.Started != nil {
		c.Started(999999)
	}
	fail := func(code int, stderr string) (Result, error) {
		return Result{Stderr: []byte(stderr), ExitCode: code}, &ExitError{Args: c.Args, ExitCode: code, Stderr: stderr}
	}
	switch short[0] {
	case "virsh":
		if f.gate != nil {
			f.gate(short[1:])
		}
		f.mu.Lock()
		out, errOut, code := f.world.virsh(short[1:])
		f.mu.Unlock()
		if code != 0 {
			return fail(code, errOut)
		}
		return Result{Stdout: []byte(out)}, nil
	case "qemu-img":
		return Result{Stdout: []byte(`{"format": "qcow2", "virtual-size": 1073741824}`)}, nil
	case "ssh":
		if slices.Contains(short, "master") {
			<-ctx.Done()
			return Result{}, ctx.Err()
		}
		f.mu.Lock()
		up := f.world.anyRunning()
		f.mu.Unlock()
		if !up {
			return fail(255, "ssh: connect to host 127.0.0.1: Connection refused")
		}
		return Result{}, nil
	case "ansible-playbook":
		f.playbookStarted <- struct{}{}
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

func saveWorld(path string, w *fakeWorld) {
	data, _ := json.Marshal(w)
	os.WriteFile(path, data, 0o600)
}
