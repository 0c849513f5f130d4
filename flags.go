// The command line: each command's flags, and parsing them over vmup.json's settings.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// forwardList collects --forward flags; the first one replaces vmup.json's list.
type forwardList struct {
	o        *Options
	replaced *bool
}

func (f forwardList) String() string { return "" }
func (f forwardList) Set(s string) error {
	fw, err := parseForward(s)
	if err != nil {
		return err
	}
	if !*f.replaced {
		f.o.Forwards, *f.replaced = nil, true
	}
	f.o.Forwards = append(f.o.Forwards, fw)
	return nil
}

// flagsFor registers the flags command cmd takes.
func flagsFor(cmd string, o *Options) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	switch cmd {
	case "up", "run":
		fs.StringVar(&o.Image, "image", o.Image, "")
		fs.StringVar(&o.ImageSHA256, "image-sha256", o.ImageSHA256, "")
		fs.StringVar(&o.Playbook, "playbook", o.Playbook, "")
		fs.IntVar(&o.CPUs, "cpus", o.CPUs, "")
		fs.IntVar(&o.MemoryMiB, "memory", o.MemoryMiB, "")
		fs.IntVar(&o.DiskGiB, "disk", o.DiskGiB, "")
		fs.Var(forwardList{o, new(bool)}, "forward", "")
		fs.StringVar(&o.Network, "network", o.Network, "")
		fs.StringVar(&o.Pool, "pool", o.Pool, "")
		fs.StringVar(&o.DomainType, "domain-type", o.DomainType, "")
		fs.StringVar(&o.Kernel, "kernel", o.Kernel, "")
		fs.StringVar(&o.Firmware, "firmware", o.Firmware, "")
		fs.StringVar(&o.Initrd, "initrd", o.Initrd, "")
		fs.StringVar(&o.Cmdline, "cmdline", o.Cmdline, "")
		fs.StringVar(&o.User, "user", o.User, "")
		fs.BoolVar(&o.Detach, "detach", o.Detach, "")
		fs.BoolVar(&o.Detach, "d", o.Detach, "")
		fs.BoolVar(&o.NoProvision, "no-provision", o.NoProvision, "")
		fs.BoolVar(&o.Template, "template", o.Template, "")
		fs.BoolVar(&o.Reset, "reset", o.Reset, "")
		fs.BoolVar(&o.RestrictNetwork, "restrict-network", o.RestrictNetwork, "")
		fs.DurationVar(&o.BootTimeout, "boot-timeout", o.BootTimeout, "")
		fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "")
		fs.StringVar(&o.CloudInitErrors, "cloud-init-errors", o.CloudInitErrors, "")
		fs.BoolVar(&o.SuspendOnStop, "suspend-on-stop", o.SuspendOnStop, "")
		fs.BoolVar(&o.DiscardSaved, "discard-saved", o.DiscardSaved, "")
		fs.IntVar(&o.Parallel, "parallel", o.Parallel, "")
		fs.BoolVar(&o.JSON, "json", o.JSON, "")
		if cmd == "run" {
			fs.Var(stringList{&o.Sync}, "sync", "")
			fs.Var(stringList{&o.Collect}, "collect", "")
			fs.StringVar(&o.Results, "results", o.Results, "")
			fs.StringVar(&o.Teardown, "teardown", o.Teardown, "")
			fs.StringVar(&o.Workload, "workload", o.Workload, "")
			fs.StringVar(&o.DestroyWhen, "destroy", o.DestroyWhen, "")
			fs.DurationVar(&o.StopTimeout, "stop-timeout", o.StopTimeout, "")
		}
	case "reset":
		fs.DurationVar(&o.BootTimeout, "boot-timeout", o.BootTimeout, "")
		fs.BoolVar(&o.JSON, "json", o.JSON, "")
	case "down":
		fs.BoolVar(&o.Force, "force", o.Force, "")
		fs.BoolVar(&o.Suspend, "suspend", o.Suspend, "")
		fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "")
		fs.BoolVar(&o.JSON, "json", o.JSON, "")
	case "status", "images", "destroy", "ssh-config":
		fs.BoolVar(&o.JSON, "json", o.JSON, "")
	case "provision":
		fs.StringVar(&o.Playbook, "playbook", o.Playbook, "")
		fs.BoolVar(&o.JSON, "json", o.JSON, "")
	case "inventory":
		fs.StringVar(&o.Format, "format", "yaml", "")
		fs.BoolVar(&o.JSON, "json", o.JSON, "") // ansible's JSON, not events
	case "prune":
		fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "")
		fs.DurationVar(&o.KeepTemplates, "keep-templates", o.KeepTemplates, "")
		fs.StringVar(&o.Pool, "pool", o.Pool, "")
		fs.BoolVar(&o.JSON, "json", o.JSON, "")
	case "logs":
		fs.BoolVar(&o.Follow, "f", o.Follow, "")
		fs.BoolVar(&o.Follow, "follow", o.Follow, "")
	}
	fs.StringVar(&o.Connect, "connect", o.Connect, "")
	return fs
}

// takesRest says which commands accept arguments after `--`.
var takesRest = map[string]bool{"up": true, "provision": true, "ssh": true, "run": true}

// parseCommand reads vmup.json and then cmd's arguments, where NAME and flags
// may come in any order and everything after `--` is passed on verbatim.
// In an environment's directory o.Env is set, o.Names are the NAMEs given
// (each a VM of the file), and each VM's own Options come from Env.options.
func parseCommand(cmd string, args []string) (*Options, []string, error) {
	o := defaultOptions()
	env, err := loadConfig(o)
	if err != nil {
		return nil, nil, err
	}
	positional, rest, err := parseArgs(cmd, o, args)
	if err != nil {
		return nil, nil, err
	}
	if cmd == "cp" { // its words are paths, one side NAME:PATH
		if err := parseCopy(env, o, positional); err != nil {
			return nil, nil, err
		}
		return o, nil, nil
	}
	if env != nil {
		return env.command(cmd, o, positional, rest, args)
	}
	if cmd == "inventory" {
		o.Names = positional
		positional = nil
	}
	if len(positional) > 1 {
		return nil, nil, usagef(fmt.Sprintf("run `vmup %s --help` to see its arguments", cmd), "too many arguments: %s", strings.Join(positional, " "))
	}
	if len(positional) == 1 {
		o.Name = positional[0]
	}
	if cmd == "up" || cmd == "provision" {
		if len(rest) > 0 {
			o.PlaybookArgs = rest
		}
		rest = nil
	}
	return o, rest, nil
}

// parseArgs parses cmd's flags in args onto o: the positional words, and
// what follows `--`.
func parseArgs(cmd string, o *Options, args []string) (positional, rest []string, err error) {
	for i, a := range args {
		if a == "--" {
			if !takesRest[cmd] {
				return nil, nil, usagef("", "vmup %s takes no arguments after --", cmd)
			}
			rest = append([]string{}, args[i+1:]...)
			args = args[:i]
			break
		}
	}
	fs := flagsFor(cmd, o)
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, err
			}
			return nil, nil, usagef(fmt.Sprintf("run `vmup %s --help` to see its flags", cmd), "%v", err)
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "d" {
			o.set["detach"] = true
		}
		o.set[f.Name] = true
	})
	return positional, rest, nil
}

// requireName checks the VM name that a command acts on.
func requireName(o *Options, cmd string) error {
	if o.Name == "" {
		return usagef(fmt.Sprintf("give a name (`vmup %s NAME`) or put \"name\" in %s", cmd, configFile), "no VM name")
	}
	if !validName(o.Name) {
		return usagef("choose a name of 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
			"invalid VM name %q", o.Name)
	}
	// Its disk would be named like a base volume, which prune may delete.
	// Only up refuses: a VM an older vmup made so can still be destroyed.
	if cmd == "up" && strings.HasPrefix(o.Name, basePrefix) {
		return usagef(fmt.Sprintf("choose a name that does not start with %q (that is how vmup names base volumes)", basePrefix),
			"VM name %q is reserved for vmup's base volumes", o.Name)
	}
	// The same for a template's disk, which a template's record names.
	if cmd == "up" && strings.HasPrefix(o.Name, templateVolumePrefix) {
		return usagef(fmt.Sprintf("choose a name that does not start with %q (that is how vmup names template disks)", templateVolumePrefix),
			"VM name %q is reserved for vmup's template disks", o.Name)
	}
	return nil
}
