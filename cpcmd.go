// vmup cp: copying files and directories between this host and a VM.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// copySpec is what one `vmup cp` copies where; the VM is Options.Name.
type copySpec struct {
	in   bool     // into the VM: srcs are this host's, dest is the guest's
	srcs []string // as given, without the NAME: of a guest path
	dest string
}

// vmPath splits a VM's path NAME:PATH; false for a local path, one without
// a ':' after a name a VM can have (./a:b is the local a:b).
func vmPath(arg string) (name, p string, ok bool) {
	name, p, found := strings.Cut(arg, ":")
	if !found || !validName(name) {
		return "", arg, false
	}
	return name, p, true
}

// parseCopy reads cp's [NAME:]SRC… [NAME:]DEST into o.Copy and the VM's
// name into o.Name, and checks what needs no VM, so that a usage error
// (exit 2) comes before anything is copied. In an environment's directory
// NAME is a VM of its file, as for `vmup ssh`.
func parseCopy(e *Environment, o *Options, args []string) error {
	const hint = "run `vmup cp --help` to see its arguments"
	if len(args) < 2 {
		return usagef(hint, "vmup cp needs a SRC and a DEST")
	}
	c := &copySpec{}
	dname, dpath, destInVM := vmPath(args[len(args)-1])
	c.in, c.dest = destInVM, args[len(args)-1]
	vm := ""
	if destInVM {
		vm, c.dest = dname, dpath
	}
	for _, a := range args[:len(args)-1] {
		name, p, inVM := vmPath(a)
		switch {
		case inVM && destInVM:
			return usagef("run two copies: out of one VM, then into the other",
				"vmup cp copies between this host and a VM, not from %s to %s", a, args[len(args)-1])
		case !inVM && !destInVM:
			return usagef("name the VM's side as NAME:PATH, such as web:/tmp",
				"neither %s nor %s is in a VM", a, args[len(args)-1])
		case inVM && vm != "" && name != vm:
			return usagef("run `vmup cp` once for each VM", "the SRCs are in two VMs: %s and %s", vm, name)
		case inVM:
			vm = name
		}
		c.srcs = append(c.srcs, p)
	}
	// Each SRC lands in DEST under its base name: two of one name would collide.
	landed := map[string]string{}
	for _, src := range c.srcs {
		base := filepath.Base(absPath(src))
		if !c.in {
			var err error
			if base, err = guestBase(src); err != nil {
				return err
			}
		}
		if other, ok := landed[base]; ok {
			return usagef("run one `vmup cp` for each, into different directories",
				"%s and %s would both land in %s as %s", other, src, args[len(args)-1], base)
		}
		landed[base] = src
	}
	if !c.in {
		if st, err := os.Stat(c.dest); err == nil && !st.IsDir() {
			return usagef("name a directory to copy into", "%s exists and is not a directory", c.dest)
		}
	}
	if e != nil {
		v, ok := e.lookup(vm)
		if !ok {
			return usagef(fmt.Sprintf("give one of the VMs of %s: %s", configFile, strings.Join(e.names(), ", ")),
				"no VM %q in %s (environment %s)", vm, configFile, e.Name)
		}
		vm = e.fullName(v.Name)
	}
	o.Name, o.Copy = vm, c
	return nil
}

// runCp copies over the VM's ssh (transfer.go). Each local SRC and every
// symlink in it is checked before the first byte is sent; all SRCs going into
// the VM are one tar stream. A signal stops the copy: what came out of the
// VM so far is removed (vmup waits for that), what went in so far stays.
func runCp(env Env, o *Options) int {
	c := o.Copy
	var send []upEntry
	if c.in {
		for _, src := range c.srcs {
			entries, err := planUpload(src, true)
			if err != nil {
				return reportError(env.Out, err)
			}
			send = append(send, entries...)
		}
	}
	s, code := sshFor(env, o, "cp")
	if s == nil {
		return code
	}
	defer env.hold()()
	ctx := env.ctx()
	var err error
	if c.in {
		err = sendTar(ctx, s, send, guestPath(c.dest))
	} else {
		for _, src := range c.srcs {
			if err = copyFromGuest(ctx, s, src, c.dest); err != nil {
				break
			}
		}
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return exitFailed // a signal ended it: the guard has its code
	case err != nil:
		return reportError(env.Out, err)
	}
	return exitOK
}
