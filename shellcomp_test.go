package main

import (
	"errors"
	"flag"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// completionHome is a VMUP_HOME with the VMs web and db (valid journals), a
// directory without a journal and one whose name no VM can have.
func completionHome(t *testing.T) string {
	t.Helper()
	home := filepath.Join(t.TempDir(), "home")
	for _, name := range []string{"web", "db"} {
		paths := pathsFor(home, name)
		if err := os.MkdirAll(paths.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		j := &Journal{Name: name, Phase: Stopped, FirstBootDone: true, User: "vmup", Network: "user",
			Connect: "qemu:///session", Pool: "vmup", CPUs: 2, MemoryMiB: 2048, DiskGiB: 20}
		if err := writeJournal(paths, j); err != nil {
			t.Fatal(err)
		}
		if _, err := readJournal(paths); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(home, "vms", "nojournal"), 0o700)
	os.MkdirAll(filepath.Join(home, "vms", "Bad Name"), 0o700)
	os.WriteFile(filepath.Join(home, "vms", "Bad Name", "state.json"), []byte("{}"), 0o600)
	return home
}

// vmupOutput runs the built vmup with VMUP_HOME set and returns its stdout,
// stderr and exit code.
func vmupOutput(t *testing.T, home string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(vmupBinary, args...)
	cmd.Env = append(os.Environ(), "VMUP_HOME="+home)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// bashCompleter sources `vmup completion bash` in a bash that finds the built
// vmup on PATH, and completes a command line there.
type bashCompleter struct {
	t      *testing.T
	script string
	home   string
	dir    string // the working directory
}

func newBashCompleter(t *testing.T) *bashCompleter {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	home := completionHome(t)
	script, stderr, code := vmupOutput(t, home, "completion", "bash")
	if code != 0 {
		t.Fatalf("vmup completion bash: exit %d\n%s", code, stderr)
	}
	c := &bashCompleter{t: t, script: filepath.Join(t.TempDir(), "vmup.bash"), home: home, dir: t.TempDir()}
	if err := os.WriteFile(c.script, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// complete sets COMP_WORDS to words (the last one the word being completed),
// calls the function `complete -p vmup` names, and returns COMPREPLY.
func (c *bashCompleter) complete(words ...string) []string {
	c.t.Helper()
	const driver = `source "$VMUP_COMPLETION" || exit 97
spec=$(complete -p vmup) || exit 98
fn=${spec##*-F }; fn=${fn%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$fn" vmup "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"`
	cmd := exec.Command("bash", append([]string{"--norc", "--noprofile", "-c", driver, "bash"}, words...)...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "VMUP_HOME="+c.home, "VMUP_COMPLETION="+c.script,
		"PATH="+filepath.Dir(vmupBinary)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("completing %q: %v\n%s", words, err, out)
	}
	var reply []string
	for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if l != "" {
			reply = append(reply, l)
		}
	}
	slices.Sort(reply)
	return reply
}

// usageCommands are the commands `vmup --help` lists.
func usageCommands() []string {
	var cmds []string
	for _, m := range regexp.MustCompile(`(?m)^  vmup ([a-z][a-z-]*)`).FindAllStringSubmatch(usage, -1) {
		if !slices.Contains(cmds, m[1]) {
			cmds = append(cmds, m[1])
		}
	}
	return cmds
}

// registeredFlags are the flags flagsFor registers for cmd, as typed.
func registeredFlags(cmd string) []string {
	var flags []string
	flagsFor(cmd, defaultOptions()).VisitAll(func(f *flag.Flag) {
		if len(f.Name) == 1 {
			flags = append(flags, "-"+f.Name)
		} else {
			flags = append(flags, "--"+f.Name)
		}
	})
	return flags
}

// Bash completes vmup's commands, each command's flags (every one flagsFor
// registers), the names of the VMs in the state dir, and flags' values.
func TestBashCompletesCommandsFlagsAndVMNames(t *testing.T) {
	c := newBashCompleter(t)
	os.WriteFile(filepath.Join(c.dir, "disk.qcow2"), nil, 0o600)
	os.WriteFile(filepath.Join(c.dir, "site.yml"), nil, 0o600)

	cmds := c.complete("vmup", "")
	for _, want := range usageCommands() {
		if !slices.Contains(cmds, want) {
			t.Errorf("vmup <TAB> lacks the command %q: %q", want, cmds)
		}
	}
	for _, hidden := range cmds {
		if strings.HasPrefix(hidden, "_") {
			t.Errorf("vmup <TAB> offers the hidden command %q", hidden)
		}
	}
	// Every flag flagsFor registers is offered where it belongs, so a new flag
	// is completed without touching the completion.
	for _, cmd := range usageCommands() {
		if cmd == "version" || cmd == "completion" {
			if got := c.complete("vmup", cmd, "-"); len(got) != 0 {
				t.Errorf("vmup %s -<TAB> offers %q; it takes no flags", cmd, got)
			}
			continue
		}
		got := c.complete("vmup", cmd, "-")
		for _, f := range registeredFlags(cmd) {
			if !slices.Contains(got, f) {
				t.Errorf("vmup %s -<TAB> lacks %s: %q", cmd, f, got)
			}
		}
	}

	for _, tc := range []struct {
		words []string
		want  []string
	}{
		{[]string{"vmup", "st"}, []string{"status"}},
		{[]string{"vmup", "up", "--ima"}, []string{"--image", "--image-sha256"}},
		{[]string{"vmup", "down", "--s"}, []string{"--shutdown-timeout", "--suspend"}},
		{[]string{"vmup", "ssh", ""}, []string{"db", "web"}},
		{[]string{"vmup", "destroy", "w"}, []string{"web"}},
		{[]string{"vmup", "ssh", "web", ""}, nil},
		{[]string{"vmup", "up", "--image", "disk.qcow2", "web", ""}, nil},
		{[]string{"vmup", "up", "--cpus", "4", ""}, []string{"db", "web"}},
		{[]string{"vmup", "up", "-d", "--json", "d"}, []string{"db"}},
		{[]string{"vmup", "up", "--cpus", ""}, nil},
		{[]string{"vmup", "up", "--network", ""}, []string{"nat", "user"}},
		{[]string{"vmup", "up", "--firmware", "u"}, []string{"uefi"}},
		{[]string{"vmup", "up", "--image", ""}, withImageNames("", "disk.qcow2", "site.yml")},
		{[]string{"vmup", "up", "--image", "d"}, withImageNames("d", "disk.qcow2")},
		{[]string{"vmup", "up", "--image", "=", ""}, withImageNames("", "disk.qcow2", "site.yml")},
		{[]string{"vmup", "up", "--playbook", "s"}, []string{"site.yml"}},
		{[]string{"vmup", "provision", "web", "--playbook", "s"}, []string{"site.yml"}},
		{[]string{"vmup", "completion", ""}, []string{"bash", "fish", "zsh"}},
		{[]string{"vmup", "completion", "bash", ""}, nil},
		{[]string{"vmup", "version", ""}, nil},
		{[]string{"vmup", "ssh", "web", "--", ""}, nil},
		{[]string{"vmup", "nosuchcommand", ""}, nil},
	} {
		if got := c.complete(tc.words...); !slices.Equal(got, tc.want) {
			t.Errorf("%q<TAB> = %q, want %q", strings.Join(tc.words, " "), got, tc.want)
		}
	}
}

// The bash script parses (bash -n), and so do the zsh and fish ones where
// those shells are installed.
func TestCompletionScriptsParse(t *testing.T) {
	for _, sh := range []struct{ shell, check string }{{"bash", "bash"}, {"zsh", "zsh"}, {"fish", "fish"}} {
		t.Run(sh.shell, func(t *testing.T) {
			script, stderr, code := vmupOutput(t, t.TempDir(), "completion", sh.shell)
			if code != 0 || script == "" {
				t.Fatalf("vmup completion %s: exit %d, %d bytes\n%s", sh.shell, code, len(script), stderr)
			}
			// Every flag is in each script, whichever shell runs the test.
			for _, cmd := range usageCommands() {
				if cmd == "version" || cmd == "completion" {
					continue
				}
				for _, f := range registeredFlags(cmd) {
					word := f
					if sh.shell == "fish" {
						word = "-l " + strings.TrimPrefix(f, "--")
						if len(f) == 2 {
							word = "-s " + f[1:]
						}
					}
					if !strings.Contains(script, word) {
						t.Errorf("the %s script lacks %q (of vmup %s)", sh.shell, word, cmd)
					}
				}
			}
			if _, err := exec.LookPath(sh.check); err != nil {
				t.Skipf("%s is not installed: its script is not parsed", sh.check)
			}
			file := filepath.Join(t.TempDir(), "vmup."+sh.shell)
			os.WriteFile(file, []byte(script), 0o600)
			if out, err := exec.Command(sh.check, "-n", file).CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v\n%s", sh.check, err, out)
			}
		})
	}
}

// The hidden command the scripts call lists the VMs of $VMUP_HOME: a
// directory with a journal and a name a VM can have.
func TestCompleteNamesListsTheVMsOfTheStateDir(t *testing.T) {
	home := completionHome(t)
	stdout, stderr, code := vmupOutput(t, home, "__complete-names")
	if code != 0 || stdout != "db\nweb\n" || stderr != "" {
		t.Errorf("vmup __complete-names: exit %d, stdout %q, stderr %q; want 0, \"db\\nweb\\n\", nothing", code, stdout, stderr)
	}
	// No state dir yet: nothing, quietly.
	stdout, stderr, code = vmupOutput(t, filepath.Join(t.TempDir(), "none"), "__complete-names")
	if code != 0 || stdout != "" || stderr != "" {
		t.Errorf("without a state dir: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if stdout, _, code := vmupOutput(t, home, "__complete-images"); code != 0 || strings.Contains(stdout, "\n\n") {
		t.Errorf("vmup __complete-images: exit %d, %q", code, stdout)
	}
}

// A shell vmup cannot complete for, or none, is a usage error (exit 2).
func TestCompletionOfAnUnknownShellIsAUsageError(t *testing.T) {
	for _, args := range [][]string{{"completion", "tcsh"}, {"completion"}, {"completion", "bash", "zsh"}, {"completion", "--json"}} {
		stdout, stderr, code := vmupOutput(t, t.TempDir(), args...)
		if code != exitUsage || stdout != "" {
			t.Errorf("vmup %s: exit %d, stdout %q; want 2 and nothing", strings.Join(args, " "), code, stdout)
		}
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "vmup: error: ") || lines[1] != "vmup: hint: choose bash, zsh or fish: `vmup completion bash`" {
			t.Errorf("vmup %s printed\n%s\nwant one error and the hint", strings.Join(args, " "), stderr)
		}
	}
	if _, stderr, _ := vmupOutput(t, t.TempDir(), "completion", "tcsh"); !strings.Contains(stderr, `vmup: error: cannot complete for the shell "tcsh"`) {
		t.Errorf("no error naming the shell:\n%s", stderr)
	}
}

// zshDriver runs _vmup outside a completion widget, with compadd, _files and
// compset replaced by functions that print what the real ones would offer.
const zshDriver = `compdef() { : }
source "$VMUP_COMPLETION" || exit 97
compadd() {
    [[ $1 == -- ]] && shift
    local w
    for w in "$@"; do [[ $w == ${PREFIX}* ]] && print -r -- "$w"; done
}
_files() {
    local f
    for f in *(N); do [[ $f == ${PREFIX}* ]] && print -r -- "$f"; done
}
compset() { PREFIX=${PREFIX#*=} }
words=("$@"); CURRENT=$#; PREFIX=${words[CURRENT]}
_vmup`

// zsh and fish, where installed, complete as bash does.
func TestZshAndFishCompleteCommandsFlagsAndVMNames(t *testing.T) {
	home := completionHome(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "disk.qcow2"), nil, 0o600)
	for _, shell := range []string{"zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			if _, err := exec.LookPath(shell); err != nil {
				t.Skipf("%s is not installed", shell)
			}
			script, _, code := vmupOutput(t, home, "completion", shell)
			file := filepath.Join(t.TempDir(), "vmup."+shell)
			if err := os.WriteFile(file, []byte(script), 0o600); code != 0 || err != nil {
				t.Fatalf("vmup completion %s: exit %d, %v", shell, code, err)
			}
			complete := func(words ...string) []string {
				t.Helper()
				var cmd *exec.Cmd
				if shell == "zsh" {
					cmd = exec.Command("zsh", append([]string{"-f", "-c", zshDriver, "zsh"}, words...)...)
				} else {
					cmd = exec.Command("fish", "--no-config", "-c", "source $argv[1]; and complete -C $argv[2]", file, strings.Join(words, " "))
				}
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "VMUP_HOME="+home, "VMUP_COMPLETION="+file,
					"PATH="+filepath.Dir(vmupBinary)+string(os.PathListSeparator)+os.Getenv("PATH"))
				out, err := cmd.Output()
				if err != nil && shell == "fish" {
					t.Fatalf("completing %q: %v\n%s", words, err, out)
				}
				var reply []string
				for l := range strings.Lines(string(out)) {
					if l, _, _ = strings.Cut(strings.TrimSuffix(l, "\n"), "\t"); l != "" {
						reply = append(reply, l)
					}
				}
				slices.Sort(reply)
				return reply
			}
			cmds := complete("vmup", "")
			for _, want := range usageCommands() {
				if !slices.Contains(cmds, want) {
					t.Errorf("vmup <TAB> lacks the command %q: %q", want, cmds)
				}
			}
			for _, cmd := range []string{"up", "down", "provision"} {
				want := registeredFlags(cmd)
				slices.Sort(want)
				if got := complete("vmup", cmd, "-"); !slices.Equal(got, want) {
					t.Errorf("vmup %s -<TAB> = %q, want %q", cmd, got, want)
				}
			}
			for _, tc := range []struct {
				words []string
				want  []string
			}{
				{[]string{"vmup", "st"}, []string{"status"}},
				{[]string{"vmup", "up", "--ima"}, []string{"--image", "--image-sha256"}},
				{[]string{"vmup", "ssh", ""}, []string{"db", "web"}},
				{[]string{"vmup", "up", "--network", ""}, []string{"nat", "user"}},
				{[]string{"vmup", "up", "--image", "d"}, withImageNames("d", "disk.qcow2")},
				{[]string{"vmup", "completion", ""}, []string{"bash", "fish", "zsh"}},
				{[]string{"vmup", "ssh", "web", "--", ""}, nil},
				{[]string{"vmup", "ssh", "web", ""}, nil},
				{[]string{"vmup", "up", "--cpus", ""}, nil},
				{[]string{"vmup", "up", "--cpus", "4", ""}, []string{"db", "web"}},
			} {
				if got := complete(tc.words...); !slices.Equal(got, tc.want) {
					t.Errorf("%q<TAB> = %q, want %q", strings.Join(tc.words, " "), got, tc.want)
				}
			}
		})
	}
}

// A command's usage line says how many VM names it takes: [NAME] one,
// [NAME...] or NAME… any number, none without NAME.
func TestCompletionReadsCommandsAndNamesFromTheUsage(t *testing.T) {
	help := "vmup does things.\n\nUsage:\n  vmup up [NAME] [flags]\n  vmup inventory [NAME...] [--json]\n" +
		"  vmup logs NAME… [-f]\n  vmup images\n  vmup up --image X\n  vmup completion bash|zsh|fish\n\n" +
		"Examples:\n  vmup example web\n"
	got := map[string]int{}
	var order []string
	for _, c := range completionCommands(help) {
		got[c.name], order = c.names, append(order, c.name)
	}
	if want := []string{"up", "inventory", "logs", "images", "completion"}; !slices.Equal(order, want) {
		t.Errorf("commands %q, want %q", order, want)
	}
	if want := map[string]int{"up": 1, "inventory": -1, "logs": -1, "images": 0, "completion": 0}; !maps.Equal(got, want) {
		t.Errorf("names taken %v, want %v", got, want)
	}
}

// --help and the README tell how to load each shell's script.
func TestHelpAndReadmeDescribeCompletion(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(usage, "  vmup completion bash|zsh|fish\n") {
		t.Errorf("--help lacks `vmup completion bash|zsh|fish`")
	}
	for _, sh := range completionShells {
		if !strings.Contains(string(readme), "vmup completion "+sh) {
			t.Errorf("the README does not tell how to load the %s script", sh)
		}
	}
}

// withImageNames is files plus the built-in image names starting with prefix, sorted.
func withImageNames(prefix string, files ...string) []string {
	out := append([]string{}, files...)
	for _, n := range imageNames() {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
