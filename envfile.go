// An environment: a vmup.json with "vms", its name, its VMs and their settings.
package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Environment is the set of VMs one vmup.json names under "vms". Its VM
// NAME is the VM (state dir, libvirt domain, volumes) ENV-NAME, so the same
// file in two directories makes two sets of VMs, and `virsh list` shows
// whose a domain is.
type Environment struct {
	Name string  // "name" in the file, else the directory's base name
	Dir  string  // the directory of vmup.json, absolute
	VMs  []envVM // by name

	top    fileConfig // the defaults of every VM: the file's top level
	topRaw map[string]json.RawMessage

	cmd  string   // the command line, from which each VM's Options are made
	args []string //
}

// envVM is one VM of the file: its name there, its groups, its own settings.
type envVM struct {
	Name   string
	Groups []string
	c      fileConfig
	raw    map[string]json.RawMessage
}

// groupRE is a group name ansible takes as it is (no '-', which it warns of).
var groupRE = lazyRE(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// parseEnvironment checks the environment in vmup.json: every name, and
// every VM's settings over the defaults, before anything is created.
func parseEnvironment(c *fileConfig, raw map[string]json.RawMessage) (*Environment, error) {
	dir, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	e := &Environment{Name: filepath.Base(dir), Dir: dir, top: *c, topRaw: maps.Clone(raw)}
	if c.Name != nil {
		e.Name = *c.Name
	}
	if !validName(e.Name) {
		return nil, usagef(fmt.Sprintf("put \"name\": \"NAME\" in %s: 1-63 characters of a-z, 0-9 and '-'", configFile),
			"environment name %q (the directory's, without \"name\" in %s) is not valid", e.Name, configFile)
	}
	e.top.VMs, e.top.Name = nil, nil
	delete(e.topRaw, "vms")
	delete(e.topRaw, "name")
	if err := applyConfig(defaultOptions(), &e.top, e.topRaw); err != nil {
		return nil, err
	}
	if len(c.VMs) == 0 {
		return nil, usagef("give the VMs as \"vms\": {\"web\": {}, \"db\": {\"memory\": 4096}}", "%s: \"vms\" lists no VM", configFile)
	}
	for _, name := range slices.Sorted(maps.Keys(c.VMs)) {
		vm, err := e.parseVM(name, c.VMs[name])
		if err != nil {
			return nil, err
		}
		e.VMs = append(e.VMs, vm)
	}
	return e, nil
}

func (e *Environment) parseVM(name string, data json.RawMessage) (envVM, error) {
	where := fmt.Sprintf("%s: vms.%s", configFile, name)
	full := e.fullName(name)
	switch {
	case !validName(name):
		return envVM{}, usagef("name each VM with 1-63 characters of a-z, 0-9 and '-'", "%s: invalid VM name %q", configFile, name)
	case !validName(full):
		return envVM{}, usagef("choose shorter names: a VM is ENVIRONMENT-NAME, at most 63 characters",
			"%s: VM %s of environment %s would be %s, longer than 63 characters", configFile, name, e.Name, full)
	case strings.HasPrefix(full, basePrefix):
		return envVM{}, usagef(fmt.Sprintf("choose an environment name that does not start with %q", basePrefix),
			"%s: VM %s would be named like a base volume", configFile, full)
	}
	vm := envVM{Name: name, raw: map[string]json.RawMessage{}}
	if err := decodeStrict(data, &vm.c); err != nil {
		return envVM{}, usagef("give a VM the same settings as the top level, and \"groups\"", "%s: %v", where, err)
	}
	json.Unmarshal(data, &vm.raw)
	if vm.c.VMs != nil || vm.c.Name != nil {
		return envVM{}, usagef("leave out \"vms\" and \"name\" in a VM: its name is its key in \"vms\"", "%s: a VM has no \"vms\" or \"name\"", where)
	}
	for _, g := range vm.c.Groups {
		if !groupRE.MatchString(g) || g == "all" || g == "ungrouped" {
			return envVM{}, usagef("name groups with letters, digits and '_' (not all or ungrouped)", "%s: invalid group %q", where, g)
		}
	}
	vm.Groups = slices.Compact(slices.Sorted(slices.Values(vm.c.Groups)))
	vm.c.Groups = nil
	delete(vm.raw, "groups")
	o := defaultOptions()
	applyConfig(o, &e.top, e.topRaw)
	if err := applyConfig(o, &vm.c, vm.raw); err != nil {
		return envVM{}, fmt.Errorf("vms.%s: %w", name, err)
	}
	return vm, nil
}

// fullName is the VM as libvirt and every other directory know it.
func (e *Environment) fullName(name string) string { return e.Name + "-" + name }

// names are the VMs' names in the file.
func (e *Environment) names() []string {
	var n []string
	for _, vm := range e.VMs {
		n = append(n, vm.Name)
	}
	return n
}

// lookup finds a VM by its name in the file, or by its full name.
func (e *Environment) lookup(name string) (envVM, bool) {
	for _, vm := range e.VMs {
		if vm.Name == name {
			return vm, true
		}
	}
	for _, vm := range e.VMs {
		if e.fullName(vm.Name) == name {
			return vm, true
		}
	}
	return envVM{}, false
}

// envCommands act on the VMs of an environment: those named, or every VM
// of the file. ssh and logs take one VM, which they run as a single VM's.
var envCommands = map[string]bool{"up": true, "run": true, "down": true, "destroy": true, "status": true, "reset": true,
	"provision": true, "inventory": true, "ssh-config": true}

// command finishes parseCommand in an environment's directory: o.Names are
// the VMs named (their names in the file), checked against the file.
func (e *Environment) command(cmd string, o *Options, positional, rest, args []string) (*Options, []string, error) {
	e.cmd, e.args = cmd, args
	if !envCommands[cmd] && cmd != "ssh" && cmd != "logs" {
		// images, prune: the top level's settings, as without "vms".
		o = defaultOptions()
		applyConfig(o, &e.top, e.topRaw)
		if _, _, err := parseArgs(cmd, o, args); err != nil {
			return nil, nil, err
		}
		if len(positional) > 0 {
			return nil, nil, usagef(fmt.Sprintf("run `vmup %s --help` to see its arguments", cmd), "too many arguments: %s", strings.Join(positional, " "))
		}
		return o, rest, nil
	}
	o.Env = e
	for _, n := range positional {
		vm, ok := e.lookup(n)
		if !ok {
			return nil, nil, usagef(fmt.Sprintf("give one of the VMs of %s: %s", configFile, strings.Join(e.names(), ", ")),
				"no VM %q in %s (environment %s)", n, configFile, e.Name)
		}
		if !slices.Contains(o.Names, vm.Name) {
			o.Names = append(o.Names, vm.Name)
		}
	}
	if envCommands[cmd] {
		if cmd == "up" || cmd == "provision" {
			o.PlaybookArgs, rest = rest, nil
		}
		return o, rest, nil
	}
	// ssh and logs: one VM.
	switch {
	case len(o.Names) > 1:
		return nil, nil, usagef(fmt.Sprintf("run `vmup %s --help` to see its arguments", cmd), "too many arguments: %s", strings.Join(positional, " "))
	case len(o.Names) == 0 && len(e.VMs) > 1:
		return nil, nil, usagef(fmt.Sprintf("give one of them: `vmup %s %s`", cmd, e.VMs[0].Name),
			"vmup %s needs a NAME: environment %s has %d VMs (%s)", cmd, e.Name, len(e.VMs), strings.Join(e.names(), ", "))
	case len(o.Names) == 0:
		o.Names = []string{e.VMs[0].Name}
	}
	vm, _ := e.lookup(o.Names[0])
	vo, err := e.options(vm)
	return vo, rest, err
}

// options are VM vm's settings for the command: the defaults, the file's top
// level, the VM's own keys, then the flags.
func (e *Environment) options(vm envVM) (*Options, error) {
	o := defaultOptions()
	applyConfig(o, &e.top, e.topRaw)
	applyConfig(o, &vm.c, vm.raw)
	_, rest, err := parseArgs(e.cmd, o, e.args)
	if err != nil {
		return nil, err
	}
	if (e.cmd == "up" || e.cmd == "provision") && len(rest) > 0 {
		o.PlaybookArgs = rest
	}
	o.Name, o.Env, o.EnvVM, o.Groups = e.fullName(vm.Name), e, vm.Name, vm.Groups
	return o, nil
}

// acted are the VMs a command acts on: those named, else every VM of the file.
func (e *Environment) acted(o *Options) []envVM {
	if len(o.Names) == 0 {
		return e.VMs
	}
	var vms []envVM
	for _, n := range o.Names {
		vm, _ := e.lookup(n)
		vms = append(vms, vm)
	}
	return vms
}
