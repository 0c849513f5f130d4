// Command vmup brings up a libvirt VM from a cloud image, provisions it with
// ansible-playbook on its first boot, and handles an interruption at any moment.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

const usage = `vmup brings up a libvirt VM from a cloud image, provisions it with
ansible-playbook on its first boot, and shuts it down on Ctrl+C.

Usage:
  vmup up [NAME] [flags] [-- ANSIBLE-PLAYBOOK-ARGS...]
  vmup run [NAME...] [flags] -- CMD [ARGS...]
  vmup run [NAME...] [flags] --workload PLAYBOOK
  vmup down [NAME] [--force | --suspend] [--shutdown-timeout D] [--json]
  vmup reset [NAME] [--boot-timeout D] [--json]
  vmup destroy [NAME] [--json]
  vmup status [NAME] [--json]
  vmup ssh [NAME] [-- CMD...]
  vmup ssh-config [NAME] [--json]
  vmup cp [NAME:]SRC... [NAME:]DEST
  vmup inventory [NAME...] [--format yaml|json] [--json]
  vmup logs [NAME] [-f | --follow]
  vmup provision [NAME] [--playbook FILE] [--json] [-- ANSIBLE-PLAYBOOK-ARGS...]
  vmup images [--json]
  vmup prune [--dry-run] [--keep-templates D] [--connect URI] [--pool NAME] [--json]
  vmup version
  vmup completion bash|zsh|fish

Flags of up:
  --image PATH|URL|NAME   base image (qcow2 or raw); needed only to create. A NAME
                          (debian-12, ubuntu-24.04, fedora-44, …: vmup images)
                          is the distributor's cloud image, checked against its
                          published checksum file
  --image-sha256 HEX      verify the image (wins over the published checksum)
  --playbook FILE         run on the first boot only
  --cpus N --memory MIB --disk GIB        (defaults 2, 2048, 20)
  --forward [ADDR:]HOST:GUEST             repeatable; ADDR defaults to 127.0.0.1
  --network nat|user      nat: libvirt network "default"; user: QEMU user-mode
                          networking with loopback forwards
  --restrict-network      with --network user: the guest reaches only its forwards
  --connect URI           libvirt URI (default: libvirt's own, as virsh picks it:
                          $LIBVIRT_DEFAULT_URI, uri_default in libvirt.conf,
                          else qemu:///system for root, qemu:///session for others)
  --pool NAME             storage pool for the VM's volumes (default vmup)
  --domain-type auto|kvm|qemu             qemu is software emulation (TCG)
  --kernel F --initrd F --cmdline S       direct kernel boot
  --firmware bios|uefi    how a disk without --kernel boots (default bios;
                          x86_64 guests; uefi uses the host's OVMF)
  --user NAME             guest login made by cloud-init (default vmup)
  -d, --detach            exit once the VM runs, and leave it running
  --no-provision          skip the playbook
  --template              a first boot is kept as a template of its recipe; a VM of
                          a recipe with one is cloned from it in seconds (user network)
  --reset                 destroy this VM's domain, volumes and state first
  --boot-timeout D        (default 5m)
  --cloud-init-errors warn|fail           what a failed cloud-init module does in
                          the first boot: warn and go on (default), or fail (VM kept)
  --shutdown-timeout D    (default 60s; also bounds a save)
  --suspend-on-stop       foreground: Ctrl+C, SIGTERM, SIGHUP save the VM's state
                          (as down --suspend) instead of shutting it down
  --discard-saved         a saved VM boots afresh (its memory is lost), so new
                          settings apply
  --parallel N            an environment: how many VMs prepare and boot at once
                          (default: as this host's cores and memory take)
  --json                  JSON Lines events on stdout (also of down, destroy,
                          provision, reset, status, ssh-config and images:
                          their data, errors and an exit event last)

Flags of run (and every flag of up):
  --sync HOST_DIR[:GUEST_DIR]   repeatable; HOST_DIR's contents land in GUEST_DIR
                          (default: a directory of HOST_DIR's name in the home)
  --collect GUEST_PATH    repeatable; copied back into --results DIR/RUN_ID/VM/,
                          also after a failed or stopped workload
  --results DIR           (default ./vmup-results)
  --workload PLAYBOOK     the workload is this playbook over the VMs, run from
                          this host (instead of CMD in each VM)
  --teardown PLAYBOOK     run over the VMs after the workload and the collection
  --destroy passing|always|never  which VMs the run made are destroyed at its
                          end (default passing: when the workload passed, or
                          a confirmed stop aborted the run)
  --stop-timeout D        how long each guest's runner takes to stop the
                          workload: SIGINT, SIGTERM, then SIGKILL (default 30s)

run brings its VMs up as up -d does (one it names itself without NAME and
without vmup.json), syncs, runs CMD in every VM at once under a runner in
the guest that outlives a dropped connection, streams its output, collects,
tears down and cleans up; it exits with the workload's status (see Runs in
the README). Ctrl+C in the workload warns; a second asks every runner to
stop and waits for each one's confirmation.

down --suspend saves a running VM's memory; the next up resumes it in seconds.
reset brings a VM back to the state its first boot completed in (kept then).
status lists each VM's phase, domain (running, shut off, saved, undefined, ...),
SSH address and age, asking libvirt once per connection.
images lists the image names, the URL each stands for, and what is cached.
prune removes the base volumes of the pool (default vmup) that no volume is
backed by, and the cached downloads that no base volume and no VM's journal
uses; --dry-run lists them and removes nothing. It removes the templates no
VM is backed by that a newer one of the same image and playbook replaced or
that were not used for --keep-templates (default 168h).
completion prints a script that completes vmup's commands, flags, VM names
and image names: source <(vmup completion bash), or see the README.
ssh-config also keeps what it prints as ssh.config in the VM's state dir,
for ssh -F. inventory prints an ansible inventory of the VMs (all without
names; --json: ansible's JSON, not events): group vmup, and only what ansible
needs to reach them. logs shows the last playbook log and the console log;
-f follows the console log until Ctrl+C. cp copies files and directories
between this host and a VM over its ssh: exactly one side is NAME:PATH (a
relative PATH is in the login's home), DEST is a directory (made if missing)
that each SRC lands in under its own name, symlinks and modes are kept, and a
symlink that points outside what is copied is refused.

NAME and flags may come in any order. A vmup.json in the working directory
may hold the same settings by their long names; flags win.

Environments: a vmup.json with "vms": {"web": {..., "groups": [...]}, ...}
makes the directory an environment ("name", default the directory's name).
Its top-level keys are every VM's defaults; VM web is the VM ENV-web. There,
down, destroy, status, reset, provision, inventory and ssh-config without
NAME act on every VM of the file (with NAMEs, on those), and a NAME is a VM
of the file (else exit 2). up brings them up as one: first boots in parallel
(--parallel N), then one ansible-playbook over all of them, limited to the
VMs whose first boot is new; provision likewise runs one playbook.

Ctrl+C during the first boot warns; a second one within 10s destroys the VM.
Once the VM ran, Ctrl+C shuts it down (ACPI) and never destroys anything.

Exit codes:
  0    ok                          3    provisioning failed, VM kept running
  1    failed, VM kept; or an          (status: VM not running)
       environment error           4    stop failed (status: no such VM)
  2    usage or config error,      5    VM busy (another vmup holds it)
       nothing created             130/143/129  aborted by SIGINT/SIGTERM/SIGHUP

Examples:
  vmup up web --image debian-12-genericcloud-amd64.qcow2 --playbook site.yml
  vmup up web -d && vmup ssh web -- uptime && vmup down web
  vmup up db --image ubuntu-24.04 -d
  vmup inventory > inv.yml && ansible all -i inv.yml -m ping
`

var version = "" // set by -ldflags "-X main.version=…"

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}

func main() {
	surviveClosedOutput()
	code := run(os.Args[1:])
	virshSessions.Close()
	os.Exit(code)
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "-h", "--help", "help":
		fmt.Print(usage)
		return exitOK
	case "version", "--version":
		fmt.Println("vmup", versionString())
		return exitOK
	case "completion", "__complete-names", "__complete-images":
		return runCompletion(cmd, rest)
	case "up", "down", "destroy", "status", "ssh", "ssh-config", "cp", "provision", "reset", "images", "inventory", "logs", "prune", "run":
	default:
		return reportError(newOutput(os.Stderr, nil, ""), usagef("run `vmup --help` to see the commands", "unknown command %q", cmd))
	}

	// Signals are caught from the start, in every command, so none is lost
	// before the controller runs and none kills vmup unheard: until a
	// command commits to a change, one ends it (abort.go).
	sigs := make(chan os.Signal, 8)
	stop := notifySignals(sigs)
	defer stop()
	if cmd == "up" {
		notifyRequests(sigs) // what `vmup down` and `destroy` send a foreground up
	}

	o, sshArgs, err := parseCommand(cmd, rest)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(usage)
		return exitOK
	}
	var jsonOut io.Writer
	switch {
	case !speaksJSON[cmd]:
	case o != nil && o.JSON, o == nil && wantsJSON(rest):
		jsonOut = os.Stdout
	}
	name := ""
	if o != nil {
		name = o.Name
	}
	out := newOutput(os.Stderr, jsonOut, name)
	if err != nil {
		return finishWith(out, reportError(out, err))
	}
	home, err := vmupHome()
	if err != nil {
		return finishWith(out, reportError(out, err))
	}
	env := Env{
		Runner:        mainRunner(home),
		Clock:         realClock{},
		Out:           out,
		Home:          home,
		Poll:          time.Second,
		ConfirmWindow: 10 * time.Second,
		Signals:       sigs,
	}
	if d, err := time.ParseDuration(os.Getenv("VMUP_POLL")); err == nil && d > 0 {
		env.Poll = d // tests poll faster
	}
	exitFor := abortExit
	if cmd == "logs" && o.Follow {
		exitFor = followExit
	}
	env.Abort = newAbortGuard(sigs, out, exitFor)
	runs := map[string]func(Env, *Options) int{"up": runUp, "down": runDown, "destroy": runDestroy,
		"status": runStatus, "ssh-config": runSSHConfig, "provision": runProvision, "reset": runReset,
		"images": runImages, "inventory": runInventory, "logs": runLogs, "prune": runPrune, "cp": runCp,
		"ssh": func(env Env, o *Options) int { return runSSH(env, o, sshArgs) }}
	if cmd == "run" {
		return finishWith(out, env.Abort.run(func() int { return cmdRun(env, o, sshArgs) }))
	}
	if o.Env != nil && envCommands[cmd] {
		return finishWith(out, env.Abort.run(func() int { return runEnv(cmd, env, o) }))
	}
	return finishWith(out, env.Abort.run(func() int { return runs[cmd](env, o) }))
}

// speaksJSON names the commands whose --json is JSON Lines events on stdout
// (inventory's --json is ansible's JSON, not events).
var speaksJSON = map[string]bool{"up": true, "run": true, "down": true, "destroy": true, "provision": true, "reset": true,
	"status": true, "ssh-config": true, "images": true, "prune": true}

// wantsJSON finds --json before `--` without the flag parser, so a script
// gets its error and exit events even when the arguments or vmup.json are wrong.
func wantsJSON(args []string) bool {
	on := false
	for _, a := range args {
		if a == "--" {
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "json" {
			continue
		}
		if b, err := strconv.ParseBool(val); !hasVal || err == nil {
			on = !hasVal || b
		}
	}
	return on
}

// finishWith ends a command with the exit event (once: an up's controller may
// have sent it), so every JSON stream closes with one.
func finishWith(out *Output, code int) int {
	out.Exit(code, fmt.Sprint("exit ", code))
	return code
}
