package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// addVM writes the journal of a VM reached at host:port (port 0: no SSH
// endpoint yet), as an up that got that far leaves it.
func addVM(t *testing.T, home, name, host string, port int) Paths {
	t.Helper()
	paths := pathsFor(home, name)
	if err := ensureDir(paths.Dir); err != nil {
		t.Fatal(err)
	}
	network := "user"
	if host != "127.0.0.1" {
		network = "nat"
	}
	j := &Journal{Name: name, Phase: Stopped, FailedIn: noPhase, FirstBootDone: port != 0, User: "vmup",
		Network: network, Connect: "qemu:///session", Pool: "vmup", SSHPort: port}
	if port != 0 {
		j.SSHHost = host
	}
	if err := writeJournal(paths, j); err != nil {
		t.Fatal(err)
	}
	return paths
}

// inventory runs `vmup inventory ARGS…` and returns its stdout, stderr and exit code.
func inventory(t *testing.T, home string, args ...string) (string, string, int) {
	t.Helper()
	o, _, err := parseCommand("inventory", args)
	var stderr bytes.Buffer
	env := Env{Home: home, Out: newOutput(&stderr, nil, "")}
	if err != nil {
		code := reportError(env.Out, err)
		return "", stderr.String(), code
	}
	var stdout bytes.Buffer
	code := printInventory(&stdout, env, o)
	return stdout.String(), stderr.String(), code
}

// ansibleInventory is what ansible makes of an inventory file placed in a
// project dir that may hold group_vars/ and host_vars/: `ansible-inventory --list`.
type ansibleInventory struct {
	Meta struct {
		HostVars map[string]map[string]any `json:"hostvars"`
	} `json:"_meta"`
	Vmup struct {
		Hosts []string `json:"hosts"`
	} `json:"vmup"`
}

func readWithAnsible(t *testing.T, project, file string) ansibleInventory {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "ansible.cfg")
	os.WriteFile(cfg, nil, 0o600)
	cmd := exec.Command("ansible-inventory", "-i", file, "--list")
	cmd.Dir = project
	// No ansible.cfg of the machine's, and a source ansible cannot parse is an error, not an empty inventory.
	cmd.Env = append(os.Environ(), "ANSIBLE_CONFIG="+cfg, "ANSIBLE_LOCAL_TEMP="+t.TempDir(),
		"ANSIBLE_INVENTORY_UNPARSED_FAILED=True", "ANSIBLE_INVENTORY_ENABLED=yaml")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ansible-inventory -i %s: %v\n%s", file, err, stderr.String())
	}
	var inv ansibleInventory
	if err := json.Unmarshal(out, &inv); err != nil {
		t.Fatalf("ansible-inventory's output: %v\n%s", err, out)
	}
	return inv
}

// shlexSplit splits as ansible splits ansible_ssh_common_args (Python's shlex).
func shlexSplit(t *testing.T, s string) []string {
	t.Helper()
	out, err := exec.Command("python3", "-c", "import json, shlex, sys; print(json.dumps(shlex.split(sys.argv[1])))", s).Output()
	if err != nil {
		t.Fatalf("python3 shlex: %v", err)
	}
	var words []string
	json.Unmarshal(out, &words)
	return words
}

// Item 4: the inventory is one that plain ansible reads, in both formats:
// every VM with an SSH endpoint a host of group vmup, reached as vmup reaches
// it (its key alone, the guest's host key pinned under the VM's alias), and
// nothing else set, so the project's group_vars/ and host_vars/ stay in charge.
func TestInventoryIsWhatAnsibleReads(t *testing.T) {
	if _, err := exec.LookPath("ansible-inventory"); err != nil {
		t.Skip("ansible-inventory is not installed")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	// A home whose path YAML and shlex must quote; names YAML 1.1 reads as a
	// boolean and an octal number unless quoted.
	home := filepath.Join(t.TempDir(), "vmup home's: #state")
	addVM(t, home, "web", "127.0.0.1", 2222)
	addVM(t, home, "yes", "192.168.122.10", 22)
	addVM(t, home, "010", "127.0.0.1", 2223)
	addVM(t, home, "new", "", 0)

	project := t.TempDir()
	os.MkdirAll(filepath.Join(project, "host_vars"), 0o755)
	os.MkdirAll(filepath.Join(project, "group_vars"), 0o755)
	os.WriteFile(filepath.Join(project, "host_vars", "web.yml"), []byte("ansible_user: admin\nansible_python_interpreter: /usr/bin/python3.11\n"), 0o644)
	os.WriteFile(filepath.Join(project, "group_vars", "vmup.yml"), []byte("ansible_become: true\nntp_server: ntp.example\n"), 0o644)
	os.WriteFile(filepath.Join(project, "group_vars", "all.yml"), []byte("ansible_python_interpreter: auto_silent\n"), 0o644)

	abs, _ := filepath.Abs(home)
	want := func(name, host string, port int, user string) map[string]any {
		dir := filepath.Join(abs, "vms", name)
		return map[string]any{
			"ansible_host": host, "ansible_port": float64(port), "ansible_user": user,
			"ansible_ssh_private_key_file": filepath.Join(dir, "id_ed25519"),
			"ansible_ssh_common_args": []string{"-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=" + filepath.Join(dir, "known_hosts"),
				"-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=vmup-" + name},
			// The project's own, untouched by the inventory.
			"ansible_become": true, "ntp_server": "ntp.example", "ansible_python_interpreter": "auto_silent",
		}
	}
	wantVars := map[string]map[string]any{
		"web": want("web", "127.0.0.1", 2222, "admin"),
		"yes": want("yes", "192.168.122.10", 22, "vmup"),
		"010": want("010", "127.0.0.1", 2223, "vmup"),
	}
	wantVars["web"]["ansible_python_interpreter"] = "/usr/bin/python3.11"

	for _, format := range [][]string{{}, {"--format", "yaml"}, {"--format", "json"}, {"--json"}} {
		t.Run(strings.Join(append([]string{"format"}, format...), " "), func(t *testing.T) {
			stdout, stderr, code := inventory(t, home, format...)
			if code != exitOK {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			if !strings.Contains(stderr, "vmup: warning: VM new has no SSH endpoint yet") {
				t.Errorf("no warning that VM new is left out:\n%s", stderr)
			}
			if json.Valid([]byte(stdout)) != (len(format) > 0 && format[len(format)-1] != "yaml") {
				t.Errorf("format %v: output is JSON: %v\n%s", format, json.Valid([]byte(stdout)), stdout)
			}
			file := filepath.Join(project, "inventory")
			os.WriteFile(file, []byte(stdout), 0o600)
			inv := readWithAnsible(t, project, file)
			if diff := cmp.Diff([]string{"010", "web", "yes"}, inv.Vmup.Hosts); diff != "" {
				t.Errorf("group vmup (-want +got):\n%s\n%s", diff, stdout)
			}
			got := inv.Meta.HostVars
			for _, vars := range got {
				if s, ok := vars["ansible_ssh_common_args"].(string); ok {
					vars["ansible_ssh_common_args"] = shlexSplit(t, s)
				}
			}
			if diff := cmp.Diff(wantVars, got); diff != "" {
				t.Errorf("host vars as ansible reads them (-want +got):\n%s\n%s", diff, stdout)
			}
		})
	}

	// Named VMs only, each once.
	stdout, stderr, code := inventory(t, home, "web", "--json", "web")
	var tree map[string]map[string]map[string]map[string]map[string]map[string]any
	if err := json.Unmarshal([]byte(stdout), &tree); code != 0 || err != nil {
		t.Fatalf("exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	if hosts := tree["all"]["children"]["vmup"]["hosts"]; len(hosts) != 1 || hosts["web"] == nil {
		t.Errorf("vmup inventory web: hosts %v, want web alone", hosts)
	}
}

// Item 4: what a user gets wrong is one clear line and the documented code;
// nothing goes to stdout, which a shell may be redirecting into a file.
func TestInventoryRefusesBadInput(t *testing.T) {
	home := t.TempDir()
	addVM(t, home, "web", "127.0.0.1", 2222)
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"web", "nope"}, exitFailed, "vmup: error: no VM named nope"},
		{[]string{"Bad_Name"}, exitUsage, `vmup: error: invalid VM name "Bad_Name"`},
		{[]string{"--format", "toml"}, exitUsage, `vmup: error: --format "toml": want yaml or json`},
		{[]string{"--json", "--format", "yaml"}, exitUsage, "vmup: error: --json is --format json"},
		{[]string{"web", "--", "x"}, exitUsage, "vmup: error: vmup inventory takes no arguments after --"},
	} {
		stdout, stderr, code := inventory(t, home, c.args...)
		if code != c.code || !strings.Contains(stderr, c.err) || stdout != "" {
			t.Errorf("vmup inventory %s: exit %d, stdout %q, stderr:\n%s\nwant exit %d and %q", strings.Join(c.args, " "), code, stdout, stderr, c.code, c.err)
		}
	}
	// A named VM without an endpoint is left out with a warning, as in the whole list.
	addVM(t, home, "new", "", 0)
	if stdout, stderr, code := inventory(t, home, "new"); code != exitOK || !strings.Contains(stderr, "vmup: warning: VM new has no SSH endpoint yet") ||
		strings.Contains(stdout, "new") {
		t.Errorf("vmup inventory new: exit %d\n%s%s", code, stdout, stderr)
	}
	// ansible expands {{ }} in a variable's value: a path that holds it is refused.
	jinja := filepath.Join(t.TempDir(), "{{ lookup('pipe', 'id') }}")
	addVM(t, jinja, "web", "127.0.0.1", 2222)
	if stdout, stderr, code := inventory(t, jinja); code != exitFailed || stdout != "" || !strings.Contains(stderr, "ansible would expand") {
		t.Errorf("a home ansible would template: exit %d\n%s%s", code, stdout, stderr)
	}
	// A damaged journal among all VMs leaves that VM out, with a warning.
	other := addVM(t, home, "broken", "127.0.0.1", 2224)
	os.WriteFile(other.Journal(), []byte("{"), 0o600)
	if stdout, stderr, code := inventory(t, home); code != exitOK || !strings.Contains(stderr, "vmup: warning: VM broken: state.json is damaged") ||
		strings.Contains(stdout, "broken") || !strings.Contains(stdout, "web") {
		t.Errorf("a damaged VM among all: exit %d\n%s%s", code, stdout, stderr)
	}
}

// The built binary prints the inventory on stdout and nothing else, and no
// JSON events: --json is ansible's format here.
func TestBinaryInventory(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	cmd := exec.Command(vmupBinary, "inventory", "--json")
	cmd.Env = r.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() != 0 {
		t.Fatalf("vmup inventory --json: %v\n%s", err, stderr.String())
	}
	var tree struct {
		All struct {
			Children struct {
				Vmup struct {
					Hosts map[string]map[string]any `json:"hosts"`
				} `json:"vmup"`
			} `json:"children"`
		} `json:"all"`
	}
	if err := json.Unmarshal(out, &tree); err != nil {
		t.Fatalf("not one JSON inventory: %v\n%s", err, out)
	}
	v1 := tree.All.Children.Vmup.Hosts["v1"]
	j, _ := readJournal(pathsFor(r.home, "v1"))
	if v1 == nil || v1["ansible_host"] != j.SSHHost || v1["ansible_port"] != float64(j.SSHPort) {
		t.Errorf("host v1 %v, want %s:%d", v1, j.SSHHost, j.SSHPort)
	}
	if out, code := r.vmup("inventory", "nope"); code != exitFailed || !strings.Contains(out, "vmup: error: no VM named nope") {
		t.Errorf("vmup inventory nope: exit %d\n%s", code, out)
	}
	if out, _ := r.vmup("--help"); !strings.Contains(out, "vmup inventory [NAME...]") {
		t.Errorf("--help lacks inventory or logs:\n%s", out)
	}
}

// Item 4: `vmup ssh-config NAME` also keeps what it prints in the state dir,
// 0600, so `ssh -F FILE NAME` and tools that take a config file work; a
// symlink planted at that name is replaced, never written through.
func TestBinarySSHConfigWritesAFileForSSHDashF(t *testing.T) {
	r := startVmup(t, "ok", "-d")
	if code := r.exitCode(); code != 0 {
		t.Fatalf("up -d: exit %d", code)
	}
	paths := pathsFor(r.home, "v1")
	file := filepath.Join(paths.Dir, "ssh.config")
	elsewhere := filepath.Join(t.TempDir(), "config")
	os.WriteFile(elsewhere, []byte("precious\n"), 0o644)
	os.Symlink(elsewhere, file)

	cmd := exec.Command(vmupBinary, "ssh-config", "v1")
	cmd.Env = r.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	printed, err := cmd.Output()
	if err != nil {
		t.Fatalf("vmup ssh-config v1: %v\n%s", err, stderr.String())
	}
	st, err := os.Lstat(file)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v; want a regular file 0600", file, st, err)
	}
	kept, _ := os.ReadFile(file)
	if string(kept) != string(printed) || !strings.HasPrefix(string(kept), "Host v1\n") {
		t.Errorf("the file holds\n%s\nbut ssh-config printed\n%s", kept, printed)
	}
	if data, _ := os.ReadFile(elsewhere); string(data) != "precious\n" {
		t.Errorf("written through the symlink: %q", data)
	}
	if !strings.Contains(stderr.String(), file) {
		t.Errorf("stderr does not name the file:\n%s", stderr.String())
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		return
	}
	// What real ssh makes of it, as `ssh -F FILE v1` would connect.
	j, _ := readJournal(paths)
	out, err := exec.Command("ssh", "-G", "-F", file, "v1").Output()
	if err != nil {
		t.Fatalf("ssh -G -F %s v1: %v", file, err)
	}
	resolved := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, " ")
		resolved[k] = v
	}
	for k, v := range map[string]string{
		"hostname": j.SSHHost, "port": fmt.Sprint(j.SSHPort), "user": j.User, "hostkeyalias": "vmup-v1",
		"stricthostkeychecking": "true", "userknownhostsfile": paths.KnownHosts(), "identityfile": paths.Key(),
		"identitiesonly": "yes",
	} {
		if resolved[k] != v {
			t.Errorf("ssh -G: %s %q, want %q", k, resolved[k], v)
		}
	}
}
