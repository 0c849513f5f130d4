package main

// Shell completion. `vmup completion SHELL` prints a script that is static:
// commands and flags are written into it from the usage text and flagsFor,
// and what changes (VM names, image names) it asks the hidden commands
// __complete-names and __complete-images for, one name a line, as it
// completes. Every word written into a script is checked to need no quoting.

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
)

var completionShells = []string{"bash", "zsh", "fish"}

// Values of these flags complete as file names (--image also as image names).
var fileFlags = map[string]bool{"image": true, "playbook": true, "kernel": true, "initrd": true}

// Values of these flags complete as one of their words.
var flagChoices = map[string][]string{
	"network":           {"nat", "user"},
	"domain-type":       {"auto", "kvm", "qemu"},
	"firmware":          {"bios", "uefi"},
	"cloud-init-errors": {"warn", "fail"},
}

// completionImageNames are the image names --image completes besides files.
func completionImageNames() []string { return imageNames() }

// compCommand is what a script knows of one command.
type compCommand struct {
	name   string
	names  int      // how many VM names it takes: 0, 1, or -1 for any number
	files  bool     // its arguments are paths ([NAME:]SRC of cp): files complete
	words  []string // the words its arguments are (completion: the shells)
	flags  []string // as typed: --image, -d
	values []string // those of flags that take a value
}

// compFlagValue says how a flag's value completes: "files", "images" (files
// and image names), words, or "" (nothing).
func compFlagValue(flagName string) (kind string, words []string) {
	name := strings.TrimLeft(flagName, "-")
	switch {
	case name == "image":
		return "images", nil
	case fileFlags[name]:
		return "files", nil
	}
	return "", flagChoices[name]
}

var (
	usageCommandRE = lazyRE(`^  vmup ([a-z][a-z-]*)(.*)$`)
	manyNamesRE    = lazyRE(`NAME(…|\.\.\.)`)
	// safeWordRE is what a script may hold unquoted.
	safeWordRE = lazyRE(`^-{0,2}[a-z0-9][a-z0-9.-]*$`)
)

// completionCommands are the commands of the Usage section of the usage text
// help, with the flags flagsFor registers for each: a new command or flag is
// completed without a change here.
func completionCommands(help string) []compCommand {
	_, section, _ := strings.Cut(help, "\nUsage:\n")
	section, _, _ = strings.Cut(section, "\n\n")
	var cmds []compCommand
	for _, line := range strings.Split(section, "\n") {
		m := usageCommandRE.FindStringSubmatch(line)
		if m == nil || slices.ContainsFunc(cmds, func(c compCommand) bool { return c.name == m[1] }) {
			continue
		}
		c := compCommand{name: m[1]}
		switch {
		case strings.Contains(m[2], "[NAME:]"):
			c.files = true
		case manyNamesRE.MatchString(m[2]):
			c.names = -1
		case strings.Contains(m[2], "NAME"):
			c.names = 1
		}
		switch c.name {
		case "completion":
			c.words = completionShells
		case "version":
		default:
			flagsFor(c.name, &Options{set: map[string]bool{}}).VisitAll(func(f *flag.Flag) {
				typed := "--" + f.Name
				if len(f.Name) == 1 {
					typed = "-" + f.Name
				}
				c.flags = append(c.flags, typed)
				if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
					c.values = append(c.values, typed)
				}
			})
		}
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		for _, w := range slices.Concat([]string{c.name}, c.words, c.flags) {
			mustBeSafe(w)
		}
		for _, f := range c.values {
			_, words := compFlagValue(f)
			for _, w := range words {
				mustBeSafe(w)
			}
		}
	}
	return cmds
}

func mustBeSafe(w string) {
	if !safeWordRE.MatchString(w) {
		panic(fmt.Sprintf("completion: %q cannot be written into a script unquoted", w))
	}
}

// runCompletion serves `vmup completion SHELL` and the hidden commands its
// scripts call; these print nothing but names, and never an error, which
// would land in the middle of the user's command line.
func runCompletion(cmd string, args []string) int {
	switch cmd {
	case "__complete-names":
		// In an environment's directory, NAMEs are its file's VMs.
		if e, err := loadConfig(defaultOptions()); err == nil && e != nil {
			for _, n := range e.names() {
				fmt.Println(n)
			}
			return exitOK
		}
		if home, err := vmupHome(); err == nil {
			for _, n := range completionVMNames(home) {
				fmt.Println(n)
			}
		}
		return exitOK
	case "__complete-images":
		for _, n := range completionImageNames() {
			fmt.Println(n)
		}
		return exitOK
	}
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Print(usage)
		return exitOK
	}
	var err error
	hint := "choose bash, zsh or fish: `vmup completion bash`"
	switch {
	case len(args) == 0:
		err = usagef(hint, "no shell named")
	case len(args) > 1:
		err = usagef(hint, "too many arguments: %s", strings.Join(args, " "))
	case strings.HasPrefix(args[0], "-"):
		err = usagef(hint, "vmup completion takes no flags: %s", args[0])
	case !slices.Contains(completionShells, args[0]):
		err = usagef(hint, "cannot complete for the shell %q", args[0])
	}
	if err != nil {
		return reportError(newOutput(os.Stderr, nil, ""), err)
	}
	cmds := completionCommands(usage)
	switch args[0] {
	case "bash":
		fmt.Print(bashCompletion(cmds))
	case "zsh":
		fmt.Print(zshCompletion(cmds))
	case "fish":
		fmt.Print(fishCompletion(cmds))
	}
	return exitOK
}

// completionVMNames are the VMs of home: directories of vms/ with a name a
// VM can have and a journal (every vmup VM has one).
func completionVMNames(home string) []string {
	names, _ := listVMs(home)
	var vms []string
	for _, n := range names {
		if st, err := os.Lstat(pathsFor(home, n).Journal()); err == nil && st.Mode().IsRegular() {
			vms = append(vms, n)
		}
	}
	return vms
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func commandNames(cmds []compCommand) string {
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	return strings.Join(names, " ")
}

// flagValueCases are the shell's case branches that complete flags' values,
// one per kind; each branch's body is body(kind or words).
func flagValueCases(cmds []compCommand, sep string, body func(kind string, words []string) string) string {
	var b strings.Builder
	byBody := map[string][]string{}
	var order []string
	for _, c := range cmds {
		for _, f := range c.values {
			kind, words := compFlagValue(f)
			if kind == "" && words == nil {
				continue
			}
			k := body(kind, words)
			if !slices.Contains(byBody[k], f) {
				if byBody[k] == nil {
					order = append(order, k)
				}
				byBody[k] = append(byBody[k], f)
			}
		}
	}
	for _, k := range order {
		fmt.Fprintf(&b, "        %s) %s ;;\n", strings.Join(byBody[k], sep), k)
	}
	return b.String()
}

func bashCompletion(cmds []compCommand) string {
	var spec strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&spec, "        %s) flags='%s' values='%s' names=%d files=%d words='%s' ;;\n",
			c.name, strings.Join(c.flags, " "), strings.Join(c.values, " "), c.names, boolInt(c.files), strings.Join(c.words, " "))
	}
	values := flagValueCases(cmds, "|", func(kind string, words []string) string {
		switch kind {
		case "images":
			return `_vmup_files "$cur"; _vmup_ask "$cur" __complete-images`
		case "files":
			return `_vmup_files "$cur"`
		}
		return `_vmup_add "$cur" ` + strings.Join(words, " ")
	})
	return fmt.Sprintf(bashTemplate, commandNames(cmds), spec.String(), values)
}

const bashTemplate = `# bash completion for vmup, made by ` + "`vmup completion bash`" + `.
# Load it with: source <(vmup completion bash)

# _vmup_add CUR WORD...: the words that begin with CUR
_vmup_add() {
    local cur=$1 w
    shift
    for w in "$@"; do
        [[ $w == "$cur"* ]] && COMPREPLY+=("$w")
    done
}

# _vmup_ask CUR COMMAND: the names vmup COMMAND prints that begin with CUR
_vmup_ask() {
    local cur=$1 w
    while IFS= read -r w; do
        [[ -n $w && $w == "$cur"* ]] && COMPREPLY+=("$w")
    done < <(command vmup "$2" 2>/dev/null)
}

_vmup_files() {
    local w
    compopt -o filenames 2>/dev/null
    while IFS= read -r w; do
        COMPREPLY+=("$w")
    done < <(compgen -f -- "$1")
}

_vmup() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local cmd flags values names files words flag= w i n=0
    COMPREPLY=()
    if (( COMP_CWORD == 1 )); then
        _vmup_add "$cur" %s
        return 0
    fi
    cmd=${COMP_WORDS[1]}
    case $cmd in
%s        *) return 0 ;;
    esac
    # bash splits --flag=value at '=': its words are --flag, =, value.
    if [[ $cur == = ]]; then
        flag=$prev cur=
    elif [[ $prev == = ]] && (( COMP_CWORD > 2 )); then
        flag=${COMP_WORDS[COMP_CWORD-2]}
    elif [[ " $values " == *" $prev "* ]]; then
        flag=$prev
    fi
    # Count the arguments before this word; after --, vmup passes words on.
    for (( i = 2; i < COMP_CWORD; i++ )); do
        w=${COMP_WORDS[i]}
        if [[ $w == -- ]]; then
            return 0
        elif [[ $w == = ]]; then
            (( i++ ))
        elif [[ " $values " == *" $w "* ]]; then
            [[ ${COMP_WORDS[i+1]} == = ]] || (( i++ ))
        elif [[ $w != -* ]]; then
            (( n++ ))
        fi
    done
    if [[ -n $flag ]]; then
        case $flag in
%s        esac
        return 0
    fi
    if [[ $cur == -* ]]; then
        _vmup_add "$cur" $flags
    elif (( names < 0 || n < names )); then
        _vmup_ask "$cur" __complete-names
    elif (( files )); then
        _vmup_files "$cur"
    elif (( n == 0 )); then
        _vmup_add "$cur" $words
    fi
    return 0
}

complete -F _vmup vmup
`

func zshCompletion(cmds []compCommand) string {
	var spec strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&spec, "        %s) flags=(%s) values=(%s) names=%d files=%d args=(%s) ;;\n",
			c.name, strings.Join(c.flags, " "), strings.Join(c.values, " "), c.names, boolInt(c.files), strings.Join(c.words, " "))
	}
	values := flagValueCases(cmds, "|", func(kind string, words []string) string {
		switch kind {
		case "images":
			return `_files; compadd -- ${(f)"$(command vmup __complete-images 2>/dev/null)"}`
		case "files":
			return `_files`
		}
		return `compadd -- ` + strings.Join(words, " ")
	})
	return fmt.Sprintf(zshTemplate, commandNames(cmds), spec.String(), values)
}

const zshTemplate = `#compdef vmup
# zsh completion for vmup, made by ` + "`vmup completion zsh`" + `.
# Load it with: source <(vmup completion zsh)   (after compinit)
# or save it as _vmup in a directory of $fpath.

_vmup() {
    local cur=${words[CURRENT]} prev=${words[CURRENT-1]} cmd=${words[2]}
    local -a flags values args vms
    local names=0 files=0 flag= w i n=0
    if (( CURRENT == 2 )); then
        compadd -- %s
        return
    fi
    case $cmd in
%s        *) return 1 ;;
    esac
    for (( i = 3; i < CURRENT; i++ )); do
        w=${words[i]}
        if [[ $w == -- ]]; then
            return 1
        elif (( ${values[(Ie)$w]} )); then
            (( i++ ))
        elif [[ $w != -* ]]; then
            (( n++ ))
        fi
    done
    if [[ $cur == -*=* ]]; then
        flag=${cur%%%%=*}
        compset -P '*='
    elif (( ${values[(Ie)$prev]} )); then
        flag=$prev
    fi
    if [[ -n $flag ]]; then
        case $flag in
%s        esac
        return
    fi
    if [[ $cur == -* ]]; then
        compadd -- $flags
    elif (( names < 0 || n < names )); then
        vms=(${(f)"$(command vmup __complete-names 2>/dev/null)"})
        compadd -- $vms
    elif (( files )); then
        _files
    elif (( n == 0 )); then
        compadd -- $args
    fi
}

if [[ $funcstack[1] == _vmup ]]; then
    _vmup "$@"
else
    compdef _vmup vmup
fi
`

func fishCompletion(cmds []compCommand) string {
	var b strings.Builder
	fmt.Fprintf(&b, "complete -c vmup -n '__vmup_command' -a '%s'\n", commandNames(cmds))
	for _, c := range cmds {
		cond := fmt.Sprintf("-n '__vmup_command %s'", c.name)
		for _, f := range c.flags {
			opt := "-l " + strings.TrimPrefix(f, "--")
			if len(f) == 2 {
				opt = "-s " + f[1:]
			}
			if !slices.Contains(c.values, f) {
				fmt.Fprintf(&b, "complete -c vmup %s %s\n", cond, opt)
				continue
			}
			switch kind, words := compFlagValue(f); {
			case kind == "images":
				fmt.Fprintf(&b, "complete -c vmup %s %s -r -F -a '(command vmup __complete-images 2>/dev/null)'\n", cond, opt)
			case kind == "files":
				fmt.Fprintf(&b, "complete -c vmup %s %s -r -F\n", cond, opt)
			case words != nil:
				fmt.Fprintf(&b, "complete -c vmup %s %s -x -a '%s'\n", cond, opt, strings.Join(words, " "))
			default:
				fmt.Fprintf(&b, "complete -c vmup %s %s -x\n", cond, opt)
			}
		}
		// How many arguments it takes, and the flags whose value is no argument.
		takes := c.names
		if len(c.words) > 0 {
			takes = 1 // completion: one shell
		}
		args := fmt.Sprintf("-n '__vmup_takes %s %d %s'", c.name, takes, strings.Join(c.values, " "))
		if c.names != 0 {
			fmt.Fprintf(&b, "complete -c vmup %s -a '(command vmup __complete-names 2>/dev/null)'\n", args)
		}
		if len(c.words) > 0 {
			fmt.Fprintf(&b, "complete -c vmup %s -a '%s'\n", args, strings.Join(c.words, " "))
		}
		if c.files {
			fmt.Fprintf(&b, "complete -c vmup %s -F\n", cond)
		}
	}
	return fishHeader + b.String()
}

const fishHeader = `# fish completion for vmup, made by ` + "`vmup completion fish`" + `.
# Load it with: vmup completion fish | source
# or save it as ~/.config/fish/completions/vmup.fish.

# __vmup_command [CMD]: the command line is vmup CMD (no CMD: vmup alone), and
# no -- came yet
function __vmup_command
    set -l tokens (commandline -opc)
    if test (count $argv) -eq 0
        test (count $tokens) -eq 1
        return
    end
    test (count $tokens) -ge 2; and test "$tokens[2]" = "$argv[1]"; or return 1
    not contains -- -- $tokens[3..-1]
end

# __vmup_takes CMD MAX VALUE-FLAG...: the command line is vmup CMD with fewer
# than MAX arguments before this word (MAX -1: any number)
function __vmup_takes
    __vmup_command $argv[1]; or return
    set -l n 0
    set -l skip 0
    for t in (commandline -opc)[3..-1]
        if test $skip -eq 1
            set skip 0
        else if contains -- $t $argv[3..-1]
            set skip 1
        else if not string match -q -- '-*' $t
            set n (math $n + 1)
        end
    end
    test $argv[2] -lt 0; or test $n -lt $argv[2]
end

complete -c vmup -f
`
