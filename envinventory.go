// An environment's ansible inventory: every VM in its groups, each with its
// own key and pinned host key, and where the other VMs reach it.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// envHost is one VM of an environment's inventory: what ansible needs to
// reach it (inventoryHost, per host: never process-wide), and where the
// other VMs of the environment reach it.
type envHost struct {
	inventoryHost
	// Address and SSHPort are where the other VMs reach its sshd: its name
	// on a NAT network (the guest's hostname, which libvirt's DNS serves),
	// port 22; on user-mode networking the host's loopback as a guest sees
	// it, QEMU's gateway 10.0.2.2, and its forward's host port.
	Address string `json:"vmup_address"`
	SSHPort int    `json:"vmup_ssh_port"`
	// Forwards maps each forwarded guest port to the port the other VMs
	// reach it at, on Address.
	Forwards map[string]int `json:"vmup_forwards"`
}

// userGateway is the host's 127.0.0.1 as a guest on QEMU's user-mode network sees it.
const userGateway = "10.0.2.2"

// envHostFor is VM name's host entry, from its journal.
func envHostFor(paths Paths, j *Journal, control string) envHost {
	s := newSSH(nil, j.Name, j.User, paths, Endpoint{Host: j.SSHHost, Port: j.SSHPort})
	h := envHost{inventoryHost: inventoryHostFor(s), Forwards: map[string]int{}}
	if control != "" { // the setup playbook rides vmup's ControlMaster of each VM
		h.SSHArgs += " -o " + shellQuote("ControlPath="+control) + " -o ControlMaster=no"
	}
	for _, fs := range j.Forwards {
		f, err := parseForward(fs)
		if err != nil {
			continue
		}
		switch {
		case j.Network == "nat":
			h.Forwards[strconv.Itoa(f.Guest)] = f.Guest
		case f.Addr == "127.0.0.1" || f.Addr == "0.0.0.0":
			h.Forwards[strconv.Itoa(f.Guest)] = f.Host // a guest reaches the host's loopback at the gateway
		}
	}
	if j.Network == "nat" {
		h.Address, h.SSHPort = j.Name, 22
	} else {
		h.Address, h.SSHPort = userGateway, j.SSHPort
	}
	return h
}

// envInventory is the inventory tree of the environment's VMs that have an
// SSH endpoint: group vmup holds every host with its variables, and each
// group of the file its VMs. Hosts are named as in the file. withControl
// names each VM's ControlMaster socket (the setup playbook's inventory).
func envInventory(home string, e *Environment, withControl bool, warn func(string, ...any)) (map[string]any, error) {
	hosts := map[string]envHost{}
	groups := map[string]map[string]any{}
	for _, vm := range e.VMs {
		full := e.fullName(vm.Name)
		paths := pathsFor(home, full)
		j, err := readJournal(paths)
		switch {
		case err != nil:
			warn("%v; it is left out of the inventory", err)
			continue
		case j == nil:
			continue // never made
		case j.SSHPort == 0 || j.SSHHost == "":
			warn("VM %s has no SSH endpoint yet (it never started); it is left out of the inventory", full)
			continue
		}
		control := ""
		if withControl {
			control = controlPath(paths, j)
		}
		h := envHostFor(paths, j, control)
		if err := h.check(vm.Name); err != nil {
			return nil, err
		}
		hosts[vm.Name] = h
		for _, g := range vm.Groups {
			if groups[g] == nil {
				groups[g] = map[string]any{}
			}
			groups[g][vm.Name] = map[string]any{}
		}
	}
	children := map[string]any{"vmup": map[string]any{"hosts": hosts}}
	for g, members := range groups {
		children[g] = map[string]any{"hosts": members}
	}
	return map[string]any{"all": map[string]any{"children": children}}, nil
}

// marshalInventory is the tree as JSON (which ansible reads as YAML too).
func marshalInventory(tree map[string]any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(tree)
	return b.Bytes()
}

// runEnvInventory prints the environment's inventory: JSON with --json or
// --format json, else the same tree in YAML's flow style (JSON is YAML).
func runEnvInventory(env Env, o *Options) int {
	if o.JSON && o.set["format"] && o.Format != "json" {
		return reportError(env.Out, usagef("give one of them", "--json is --format json, and --format says %s", o.Format))
	}
	if o.Format != "yaml" && o.Format != "json" {
		return reportError(env.Out, usagef("", "--format %q: want yaml or json", o.Format))
	}
	home, err := filepath.Abs(env.Home)
	if err != nil {
		return reportError(env.Out, err)
	}
	e := *o.Env
	e.VMs = e.acted(o)
	tree, err := envInventory(home, &e, false, env.Out.Warn)
	if err != nil {
		return reportError(env.Out, err)
	}
	data := marshalInventory(tree)
	if !o.JSON && o.Format == "yaml" {
		data = append([]byte(fmt.Sprintf("# Written by `vmup inventory`: the VMs of environment %s in their groups (JSON, which is YAML).\n", e.Name)), data...)
	}
	if _, err := os.Stdout.Write(data); err != nil {
		return reportError(env.Out, fmt.Errorf("cannot write the inventory: %w", err))
	}
	return exitOK
}
