package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// envDir makes a directory named dir holding vmup.json with data, and works in it.
func envDir(t *testing.T, dir, data string) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), dir)
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, configFile), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(d)
	return d
}

// Top-level keys are every VM's defaults, a VM's own keys win, flags win over both.
func TestEnvSettingsLayers(t *testing.T) {
	envDir(t, "shop", `{"memory": 1024, "cpus": 1, "forward": ["8080:80"],
		"vms": {"web1": {"cpus": 4, "groups": ["web"]}, "db": {"memory": 4096, "forward": [], "groups": ["db", "db"]}}}`)
	o, _, err := parseCommand("up", []string{"--cpus", "3", "--", "-e", "x=1"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Env == nil || o.Env.Name != "shop" || len(o.Names) != 0 {
		t.Fatalf("env %+v names %v; want environment shop, no names", o.Env, o.Names)
	}
	type got struct {
		Name, VM       string
		CPUs, Memory   int
		Forwards       int
		Groups, PBArgs []string
		SetCPUs        bool
	}
	var all []got
	for _, vm := range o.Env.VMs {
		vo, err := o.Env.options(vm)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got{vo.Name, vo.EnvVM, vo.CPUs, vo.MemoryMiB, len(vo.Forwards), vo.Groups, vo.PlaybookArgs, vo.set["cpus"]})
	}
	want := []got{
		{"shop-db", "db", 3, 4096, 0, []string{"db"}, []string{"-e", "x=1"}, true},
		{"shop-web1", "web1", 3, 1024, 1, []string{"web"}, []string{"-e", "x=1"}, true},
	}
	if diff := cmp.Diff(want, all); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}
}

// The environment's name is "name" in the file, else the directory's, and is a VM name's.
func TestEnvName(t *testing.T) {
	envDir(t, "lab", `{"name": "shop", "vms": {"web": {}}}`)
	if o, _, err := parseCommand("status", nil); err != nil || o.Env.Name != "shop" {
		t.Errorf("named environment: %v, %v", o, err)
	}
	envDir(t, "My Lab", `{"vms": {"web": {}}}`)
	_, _, err := parseCommand("status", nil)
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(ue.hint, `"name"`) {
		t.Errorf("directory name \"My Lab\": %v; want a usage error that hints at \"name\"", err)
	}
}

// Every mistake in the file is a usage error before anything is made.
func TestEnvFileMistakes(t *testing.T) {
	for _, data := range []string{
		`{"vms": {}}`,
		`{"vms": {"Web": {}}}`,
		`{"vms": {"web": {"memroy": 1}}}`,
		`{"vms": {"web": {"name": "x"}}}`,
		`{"vms": {"web": {"groups": ["a-b"]}}}`,
		`{"vms": {"web": {"groups": ["all"]}}}`,
		`{"vms": {"web": {"forward": ["x"]}}}`,
		`{"groups": ["web"]}`,
		`{"vms": {"web": {"vms": {}}}}`,
		`{"name": "` + strings.Repeat("a", 60) + `", "vms": {"web": {}}}`,
	} {
		t.Run(data, func(t *testing.T) {
			envDir(t, "shop", data)
			_, _, err := parseCommand("up", nil)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Errorf("err %v, want a usage error", err)
			}
		})
	}
}

// Inside the directory a VM is its name in the file (or its full name); any
// other NAME is exit 2. ssh needs a NAME when there are several VMs.
func TestEnvNames(t *testing.T) {
	envDir(t, "shop", `{"vms": {"web": {}, "db": {}}}`)
	o, _, err := parseCommand("down", []string{"web", "shop-db", "web"})
	if err != nil || !slices.Equal(o.Names, []string{"web", "db"}) {
		t.Errorf("down web shop-db web: %v, %v; want names web, db", o, err)
	}
	for _, args := range [][]string{{"down", "cache"}, {"ssh"}, {"ssh", "web", "db"}, {"logs"}, {"destroy", "v1"}} {
		_, _, err := parseCommand(args[0], args[1:])
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: err %v, want a usage error", args, err)
		}
	}
	o, rest, err := parseCommand("ssh", []string{"db", "--", "uptime"})
	if err != nil || o.Name != "shop-db" || !slices.Equal(rest, []string{"uptime"}) {
		t.Errorf("ssh db -- uptime: %+v %v %v", o, rest, err)
	}
	envDir(t, "one", `{"vms": {"web": {}}}`)
	if o, _, err := parseCommand("ssh", nil); err != nil || o.Name != "one-web" {
		t.Errorf("ssh in an environment of one VM: %v, %v", o, err)
	}
}

// A vmup.json without vms works as before: its "name" is the VM's.
func TestConfigWithoutVMsUnchanged(t *testing.T) {
	t.Chdir(t.TempDir())
	os.WriteFile(configFile, []byte(`{"name": "web", "cpus": 3}`), 0o600)
	o, _, err := parseCommand("up", nil)
	if err != nil || o.Env != nil || o.Name != "web" || o.CPUs != 3 {
		t.Errorf("%+v, %v", o, err)
	}
}

// envHarness is a harness working in an environment's directory.
func envHarness(t *testing.T, vms string) *harness {
	h := newHarness(t)
	envDir(t, "shop", `{"image": "`+h.image+`", "playbook": "`+h.play+`", "domain-type": "qemu", "network": "user", "disk": 4,
		"vms": `+vms+`}`)
	return h
}

// makeEnvVM brings one VM of the environment up detached, as a single VM.
func (h *harness) makeEnvVM(name string) {
	h.t.Helper()
	o, _, err := parseCommand("up", []string{"-d"})
	if err != nil {
		h.t.Fatal(err)
	}
	vm, _ := o.Env.lookup(name)
	vo, err := o.Env.options(vm)
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	if code := runUp(env, vo); code != 0 {
		h.t.Fatalf("up %s: exit %d\n%s", name, code, h.stderr)
	}
}

func (h *harness) runEnv(cmd string, args ...string) int {
	h.t.Helper()
	o, _, err := parseCommand(cmd, args)
	if err != nil {
		h.t.Fatal(err)
	}
	env := h.env
	env.Out = h.out()
	code := runEnv(cmd, env, o)
	env.Out.Exit(code, "exit")
	return code
}

// down and destroy without NAME act on every VM of the file, each line
// naming its VM; one never made is skipped; a VM removed from the file is
// not touched, and status shows it as outside the file.
func TestEnvCommandsActOnEveryVM(t *testing.T) {
	h := envHarness(t, `{"web": {"groups": ["web"]}, "db": {}, "old": {}}`)
	for _, vm := range []string{"web", "db", "old"} {
		h.makeEnvVM(vm)
	}
	j, _ := readJournal(pathsFor(h.env.Home, "shop-web"))
	if j == nil || j.Env == nil || *j.Env != (JournalEnv{Name: "shop", Dir: mustGetwd(t), VM: "web"}) {
		t.Fatalf("journal of shop-web: %+v; want its environment", j)
	}
	os.WriteFile(configFile, []byte(`{"vms": {"web": {}, "db": {}, "cache": {}}}`), 0o600)
	h.stderr.Reset()
	if code := h.runEnv("down"); code != 0 {
		t.Fatalf("down: exit %d\n%s", code, h.stderr)
	}
	for _, want := range []string{"web | VM shop-web is", "db | VM shop-db is", "cache | VM cache (shop-cache) was never made"} {
		if !strings.Contains(h.stderr.String(), want) {
			t.Errorf("down's output lacks %q:\n%s", want, h.stderr)
		}
	}
	if st := h.fake.world.Domains; st["shop-web"] != "shut off" || st["shop-db"] != "shut off" || st["shop-old"] != "running" {
		t.Errorf("domains after down: %v; want web and db shut off, old (outside the file) running", st)
	}
	var exit jsonEvent
	for _, ev := range h.events.events {
		if ev.Event == "exit" {
			exit = ev
		}
	}
	wantVMs := []vmOutcome{{VM: "shop-db", Phase: "stopped", Outcome: "kept"}, {VM: "shop-web", Phase: "stopped", Outcome: "kept"}}
	if diff := cmp.Diff(wantVMs, exit.VMs); diff != "" {
		t.Errorf("exit event's vms (-want +got):\n%s", diff)
	}
	if code := h.runEnv("status", "--json"); code != 0 {
		t.Errorf("status: exit %d", code)
	}
	var outside []string
	for _, ev := range h.events.events {
		if ev.Event == "vm" && ev.OutsideFile {
			outside = append(outside, ev.VM)
		}
	}
	out := captureStdout(t, func() { h.runEnv("status") })
	if !strings.Contains(out, "shop-old *") {
		t.Errorf("status's table does not mark shop-old as outside the file:\n%s", out)
	}
	if !slices.Equal(outside, []string{"shop-old"}) {
		t.Errorf("status: outside the file %v; want [shop-old]\n%s", outside, out)
	}
	if code := h.runEnv("destroy", "db"); code != 0 {
		t.Fatalf("destroy db: exit %d\n%s", code, h.stderr)
	}
	if _, ok := h.fake.world.Domains["shop-db"]; ok || !made(pathsFor(h.env.Home, "shop-web")) {
		t.Errorf("destroy db: domains %v; want shop-db gone, shop-web kept", h.fake.world.Domains)
	}
}

func mustGetwd(t *testing.T) string {
	d, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// captureStdout runs f with os.Stdout going to a file, and returns what it wrote.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	file, err := os.CreateTemp(t.TempDir(), "stdout")
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = file
	defer func() { os.Stdout = saved }()
	f()
	data, _ := os.ReadFile(file.Name())
	return string(data)
}

// The environment's inventory: every VM in group vmup and in its groups,
// each with its own key and pinned host key, and where the others reach it.
func TestEnvInventoryPerHost(t *testing.T) {
	h := envHarness(t, `{"web": {"groups": ["web"], "forward": ["38081:80", "127.0.0.2:38443:443"]}, "db": {"groups": ["db"]}}`)
	h.makeEnvVM("web")
	h.makeEnvVM("db")
	out := captureStdout(t, func() {
		if code := h.runEnv("inventory", "--format", "json"); code != 0 {
			t.Errorf("inventory: exit %d\n%s", code, h.stderr)
		}
	})
	var tree struct {
		All struct {
			Children map[string]struct {
				Hosts map[string]map[string]any `json:"hosts"`
			} `json:"children"`
		} `json:"all"`
	}
	if err := json.Unmarshal([]byte(out), &tree); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ch := tree.All.Children
	if _, ok := ch["web"].Hosts["web"]; !ok || len(ch["web"].Hosts) != 1 || len(ch["db"].Hosts) != 1 || len(ch["vmup"].Hosts) != 2 {
		t.Fatalf("groups %v; want web: [web], db: [db], vmup: both", ch)
	}
	for _, name := range []string{"web", "db"} {
		host := ch["vmup"].Hosts[name]
		j, _ := readJournal(pathsFor(h.env.Home, "shop-"+name))
		paths := pathsFor(h.env.Home, "shop-"+name)
		args, _ := host["ansible_ssh_common_args"].(string)
		if host["ansible_ssh_private_key_file"] != paths.Key() || !strings.Contains(args, "HostKeyAlias=vmup-shop-"+name) ||
			!strings.Contains(args, "UserKnownHostsFile="+paths.KnownHosts()) || strings.Contains(args, "ControlPath") {
			t.Errorf("%s: key %v, ssh args %q; want its own key, known_hosts and alias, no ControlPath", name, host["ansible_ssh_private_key_file"], args)
		}
		if host["vmup_address"] != "10.0.2.2" || host["vmup_ssh_port"] != float64(j.SSHPort) {
			t.Errorf("%s: vmup_address %v, vmup_ssh_port %v; want 10.0.2.2, %d", name, host["vmup_address"], host["vmup_ssh_port"], j.SSHPort)
		}
	}
	// Only a loopback forward is reached through the gateway.
	if diff := cmp.Diff(map[string]any{"80": float64(38081)}, ch["vmup"].Hosts["web"]["vmup_forwards"]); diff != "" {
		t.Errorf("web's vmup_forwards (-want +got):\n%s", diff)
	}
}

// In an environment's directory, completion offers the file's VM names.
func TestEnvCompletionNames(t *testing.T) {
	d := envDir(t, "shop", `{"vms": {"web": {}, "db": {}}}`)
	cmd := exec.Command(vmupBinary, "__complete-names")
	cmd.Dir = d
	cmd.Env = append(os.Environ(), "VMUP_HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil || string(out) != "db\nweb\n" {
		t.Errorf("__complete-names: %q, %v; want db, web", out, err)
	}
}

// On a NAT network the other VMs reach a VM by its name (the guest's
// hostname) at port 22 and its forwarded guest ports themselves.
func TestEnvHostOnNAT(t *testing.T) {
	j := &Journal{Name: "shop-db", User: "vmup", Network: "nat", SSHHost: "192.168.122.5", SSHPort: 22, Forwards: []string{"127.0.0.1:15432:5432"}}
	h := envHostFor(pathsFor("/h", "shop-db"), j, "")
	if h.Address != "shop-db" || h.SSHPort != 22 || h.Host != "192.168.122.5" || !cmp.Equal(h.Forwards, map[string]int{"5432": 5432}) {
		t.Errorf("%+v; want vmup_address shop-db, port 22, forwards 5432: 5432", h)
	}
}

// ssh-config without NAME prints every VM's.
func TestEnvSSHConfigEveryVM(t *testing.T) {
	h := envHarness(t, `{"web": {}, "db": {}}`)
	h.makeEnvVM("web")
	h.makeEnvVM("db")
	out := captureStdout(t, func() {
		if code := h.runEnv("ssh-config"); code != 0 {
			t.Errorf("ssh-config: exit %d\n%s", code, h.stderr)
		}
	})
	if !strings.Contains(out, "Host shop-web\n") || !strings.Contains(out, "Host shop-db\n") {
		t.Errorf("ssh-config:\n%s", out)
	}
}
