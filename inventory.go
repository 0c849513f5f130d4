package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// inventoryHost is one VM as `vmup inventory` gives it to ansible: where and
// as whom it is reached, its key, and vmup's ssh options. Nothing else: the
// project's ansible.cfg, group_vars/ and host_vars/ keep every other setting,
// and its host_vars/NAME.yml wins over these too. The YAML and the JSON are
// both written from these fields, in this order.
type inventoryHost struct {
	Host    string `json:"ansible_host"`
	Port    int    `json:"ansible_port"`
	User    string `json:"ansible_user"`
	Key     string `json:"ansible_ssh_private_key_file"`
	SSHArgs string `json:"ansible_ssh_common_args"`
}

func inventoryHostFor(s *SSH) inventoryHost {
	var args []string
	opts := s.pinOptions()
	for i := 0; i+1 < len(opts); i += 2 {
		if strings.HasPrefix(opts[i+1], "IdentityFile=") {
			continue // ansible_ssh_private_key_file says it, and a project may name another key
		}
		args = append(args, opts[i], shellQuote(opts[i+1]))
	}
	return inventoryHost{Host: s.ep.Host, Port: s.ep.Port, User: s.user, Key: s.paths.Key(), SSHArgs: strings.Join(args, " ")}
}

// check refuses what ansible would not take as it is: it expands Jinja2 in
// every variable's value, and reads only UTF-8.
func (h inventoryHost) check(name string) error {
	v := reflect.ValueOf(h)
	for i := range v.NumField() {
		s, ok := v.Field(i).Interface().(string)
		if !ok {
			continue
		}
		field := v.Type().Field(i).Tag.Get("json")
		for _, mark := range []string{"{{", "{%", "{#"} {
			if strings.Contains(s, mark) {
				return &hintedError{msg: fmt.Sprintf("cannot list VM %s: its %s %q holds %q, which ansible would expand", name, field, s, mark),
					hint: "set VMUP_HOME to a directory whose path holds no {{, {% or {#"}
			}
		}
		if !utf8.ValidString(s) {
			return &hintedError{msg: fmt.Sprintf("cannot list VM %s: its %s %q is not UTF-8, which ansible reads", name, field, s),
				hint: "set VMUP_HOME to a directory whose path is UTF-8"}
		}
	}
	return nil
}

// runInventory prints the inventory on stdout.
func runInventory(env Env, o *Options) int { return printInventory(os.Stdout, env, o) }

// printInventory writes an inventory of the named VMs (all without names)
// to w: whole, or nothing when it fails.
func printInventory(w io.Writer, env Env, o *Options) int {
	format := o.Format
	if o.JSON {
		if o.set["format"] && o.Format != "json" {
			return reportError(env.Out, usagef("give one of them", "--json is --format json, and --format says %s", o.Format))
		}
		format = "json"
	}
	if format != "yaml" && format != "json" {
		return reportError(env.Out, usagef("", "--format %q: want yaml or json", o.Format))
	}
	for _, name := range o.Names {
		if err := requireName(&Options{Name: name}, "inventory"); err != nil {
			return reportError(env.Out, err)
		}
	}
	// The paths are used from anywhere the inventory is.
	home, err := filepath.Abs(env.Home)
	if err != nil {
		return reportError(env.Out, err)
	}
	if err := checkOwnDir(filepath.Join(home, "vms")); err != nil {
		return reportError(env.Out, err)
	}
	all := len(o.Names) == 0
	names := slices.Compact(slices.Sorted(slices.Values(o.Names)))
	if all {
		if names, err = listVMs(home); err != nil {
			return reportError(env.Out, err)
		}
	}
	hosts := map[string]inventoryHost{}
	for _, name := range names {
		paths := pathsFor(home, name)
		err := checkStateDirs(paths)
		var j *Journal
		if err == nil {
			j, err = readJournal(paths)
		}
		switch {
		case err != nil && all:
			env.Out.Warn("%v; it is left out of the inventory", err)
			continue
		case err != nil:
			return reportError(env.Out, err)
		case j == nil && all:
			continue // a directory, but no VM
		case j == nil:
			return reportError(env.Out, &hintedError{
				msg:  "no VM named " + name,
				hint: "run `vmup status` to list the VMs",
			})
		case j.SSHPort == 0 || j.SSHHost == "":
			env.Out.Warn("VM %s has no SSH endpoint yet (it never started); it is left out of the inventory", name)
			continue
		}
		h := inventoryHostFor(newSSH(nil, name, j.User, paths, Endpoint{Host: j.SSHHost, Port: j.SSHPort}))
		if err := h.check(name); err != nil {
			return reportError(env.Out, err)
		}
		hosts[name] = h
	}
	var b bytes.Buffer
	if format == "json" {
		tree := map[string]any{"all": map[string]any{"children": map[string]any{"vmup": map[string]any{"hosts": hosts}}}}
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		err = enc.Encode(tree)
	} else {
		writeInventoryYAML(&b, hosts)
	}
	if err == nil {
		_, err = w.Write(b.Bytes())
	}
	if err != nil {
		return reportError(env.Out, fmt.Errorf("cannot write the inventory: %w", err))
	}
	return exitOK
}

// writeInventoryYAML writes the tree the JSON has, in YAML's block style with
// every VM name and string quoted: YAML would read a VM named yes as true,
// and one named 010 as the number 8.
func writeInventoryYAML(b *bytes.Buffer, hosts map[string]inventoryHost) {
	b.WriteString("# Written by `vmup inventory`: vmup's VMs, group vmup, with the settings ansible needs to reach them.\n")
	b.WriteString("all:\n  children:\n    vmup:\n      hosts:")
	if len(hosts) == 0 {
		b.WriteString(" {}")
	}
	b.WriteString("\n")
	for _, name := range slices.Sorted(maps.Keys(hosts)) {
		fmt.Fprintf(b, "        %s:\n", yamlQuote(name))
		v := reflect.ValueOf(hosts[name])
		for i := range v.NumField() {
			val := ""
			switch f := v.Field(i).Interface().(type) {
			case string:
				val = yamlQuote(f)
			case int:
				val = strconv.Itoa(f)
			}
			fmt.Fprintf(b, "          %s: %s\n", v.Type().Field(i).Tag.Get("json"), val)
		}
	}
}

// yamlQuote writes s as a double-quoted YAML scalar that YAML 1.1 (PyYAML,
// as ansible reads it) and 1.2 read back as s: everything but printable
// ASCII escaped, as YAML would fold or refuse some of it (NEL, C1 controls).
func yamlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
