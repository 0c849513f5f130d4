package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const (
	oldIID = "vmup-a-1700000000000000000"
	oldMID = "0123456789abcdef0123456789abcdef"
)

// guestShell is a login shell the tests run identityCommand's line with,
// and the PATH its commands come from.
type guestShell struct {
	name string
	argv []string
	path string
}

// guestShells are dash (sh) with the host's tools, and busybox sh with
// busybox's applets alone (a small guest's userland); withBash, bash too, as
// the login shell reading the line (the script still runs in sh).
func guestShells(t *testing.T, withBash bool) []guestShell {
	t.Helper()
	shells := []guestShell{{"sh", []string{"sh"}, os.Getenv("PATH")}}
	if bash, err := exec.LookPath("bash"); err == nil && withBash {
		shells = append(shells, guestShell{"bash", []string{bash}, os.Getenv("PATH")})
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Log("no busybox: busybox sh not tried")
		return shells
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	dir := t.TempDir()
	for _, applet := range strings.Fields(string(out)) {
		if err := os.Symlink(bb, filepath.Join(dir, applet)); err != nil {
			t.Fatal(err)
		}
	}
	return append(shells, guestShell{"busybox", []string{bb, "sh"}, dir})
}

// guestOpts shapes a fake guest tree.
type guestOpts struct {
	dbusFile bool   // var/lib/dbus/machine-id a file, not a link to /etc/machine-id
	hosts    string // etc/hosts
	noCloud  bool   // no var/lib/cloud
	noSSHDir bool   // the login has no ~/.ssh
	passwd   string // etc/passwd, with %[1]d and %[2]d for this test's uid and gid
}

// identityGuest lays out a Debian cloud guest after its first boot as VM "a",
// with login vmup (this test's uid, so chown works), under a fresh root.
// guestMAC is the NIC's MAC in identityGuest's sysfs.
const guestMAC = "52:54:00:aa:bb:cc"

func identityGuest(t *testing.T, o guestOpts) string {
	t.Helper()
	root := t.TempDir()
	hosts := o.hosts
	if hosts == "" {
		hosts = "127.0.0.1 localhost\n127.0.1.1 a.localdomain a\n10.0.0.1\tab a-b b.a\n\n::1 localhost ip6-localhost ip6-loopback\n"
	}
	passwd := o.passwd
	if passwd == "" {
		passwd = "root:x:0:0:root:/root:/bin/bash\nvmup:x:%[1]d:%[2]d::/home/vmup:/bin/bash\n"
	}
	files := map[string]string{
		"etc/hostname":               "a\n",
		"etc/hosts":                  hosts,
		"etc/machine-id":             oldMID + "\n",
		"etc/passwd":                 fmt.Sprintf(passwd, os.Getuid(), os.Getgid()),
		"etc/ssh/sshd_config":        "Include /etc/ssh/sshd_config.d/*.conf\n",
		"sys/class/net/lo/address":   "00:00:00:00:00:00\n",
		"sys/class/net/ens3/address": guestMAC + "\n",
	}
	for _, k := range []string{"ed25519", "rsa", "ecdsa"} {
		files["etc/ssh/ssh_host_"+k+"_key"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nold " + k + "\n"
		files["etc/ssh/ssh_host_"+k+"_key.pub"] = "ssh-" + k + " OLD root@a\n"
	}
	if o.dbusFile {
		files["var/lib/dbus/machine-id"] = oldMID + "\n"
	}
	if !o.noSSHDir {
		files["home/vmup/.ssh/authorized_keys"] = "ssh-ed25519 AAAAold vmup-a\nssh-ed25519 AAAAother x\n"
	}
	if !o.noCloud {
		ci := "var/lib/cloud/"
		for name, content := range map[string]string{
			"instances/" + oldIID + "/sem/config_ssh":     "1\n",
			"instances/" + oldIID + "/sem/config_users":   "1\n",
			"instances/" + oldIID + "/obj.pkl":            "pickle " + oldIID,
			"instances/" + oldIID + "/user-data.txt":      "#cloud-config\nssh_keys: a's\n",
			"instances/" + oldIID + "/user-data.txt.i":    "a's\n",
			"instances/" + oldIID + "/cloud-config.txt":   "a's\n",
			"instances/" + oldIID + "/datasource":         "DataSourceNoCloud: DataSourceNoCloud [seed=/dev/vdb]\n",
			"instances/" + oldIID + "/boot-finished":      "1 2\n",
			"data/instance-id":                            oldIID + "\n",
			"data/previous-instance-id":                   oldIID + "\n",
			"data/previous-hostname":                      "a\n",
			"data/set-hostname":                           "{\n \"fqdn\": \"a.localdomain\",\n \"hostname\": \"a\"\n}\n",
			"data/result.json":                            "{}\n",
			"instances/" + oldIID + "/scripts/per-boot/x": "",
		} {
			files[ci+name] = content
		}
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, "_key") || strings.Contains(name, "authorized_keys") {
			mode = 0o600
		}
		if strings.HasSuffix(name, "machine-id") {
			mode = 0o444 // as Debian has it; the script writes it in place, keeping that
		}
		writeKeyFile(t, filepath.Join(root, name), content, mode)
	}
	os.MkdirAll(filepath.Join(root, "home/vmup"), 0o755)
	if !o.dbusFile {
		os.MkdirAll(filepath.Join(root, "var/lib/dbus"), 0o755)
		if err := os.Symlink("/etc/machine-id", filepath.Join(root, "var/lib/dbus/machine-id")); err != nil {
			t.Fatal(err)
		}
	}
	if !o.noCloud {
		if err := os.Symlink("/var/lib/cloud/instances/"+oldIID, filepath.Join(root, "var/lib/cloud/instance")); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func testIdentity(t *testing.T, name string) cloneIdentity {
	t.Helper()
	login, err := newSSHKey("vmup-" + name)
	if err != nil {
		t.Fatal(err)
	}
	in, err := newCloneIdentity(name, "vmup", login.Public)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// runIdentity runs identityCommand's line as root's login shell would,
// ROOT set to root, and env; it returns stdout and stderr and the exit code.
func runIdentity(t *testing.T, sh guestShell, root string, in cloneIdentity, env ...string) (string, int) {
	t.Helper()
	remote, stdin, err := identityCommand("root", in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh.argv[0], append(sh.argv[1:], "-c", remote)...)
	cmd.Env = append([]string{"ROOT=" + root, "PATH=" + sh.path}, env...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatal(err)
	}
	return string(out), code
}

func readGuest(t *testing.T, root, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

func modeOf(t *testing.T, root, name string) fs.FileMode {
	t.Helper()
	st, err := os.Lstat(filepath.Join(root, name))
	if err != nil {
		t.Error(err)
		return 0
	}
	return st.Mode()
}

func exists(root, name string) bool {
	_, err := os.Lstat(filepath.Join(root, name))
	return err == nil
}

// checkIdentity asserts that the guest under root is in's, once VM oldName's.
func checkIdentity(t *testing.T, root string, in cloneIdentity, o guestOpts, wantHosts string) {
	t.Helper()
	want := func(name, content string, mode fs.FileMode) {
		t.Helper()
		if got := readGuest(t, root, name); got != content {
			t.Errorf("%s:\n%s", name, cmp.Diff(content, got))
		}
		if got := modeOf(t, root, name); got != mode {
			t.Errorf("%s: mode %v, want %v", name, got, mode)
		}
	}
	gone := func(name string) {
		t.Helper()
		if exists(root, name) {
			t.Errorf("%s is still there", name)
		}
	}
	want("etc/hostname", in.Name+"\n", 0o644)
	want("etc/hosts", wantHosts, 0o644)
	want("etc/machine-id", in.MachineID+"\n", 0o444)
	if o.dbusFile {
		want("var/lib/dbus/machine-id", in.MachineID+"\n", 0o444)
	} else if target, err := os.Readlink(filepath.Join(root, "var/lib/dbus/machine-id")); err != nil || target != "/etc/machine-id" {
		t.Errorf("var/lib/dbus/machine-id: link to %q (%v), want it left a link to /etc/machine-id", target, err)
	}
	want("etc/ssh/ssh_host_ed25519_key", string(in.Host.Private), 0o600)
	want("etc/ssh/ssh_host_ed25519_key.pub", in.Host.Public+"\n", 0o644)
	for _, k := range []string{"rsa", "ecdsa"} {
		gone("etc/ssh/ssh_host_" + k + "_key")
		gone("etc/ssh/ssh_host_" + k + "_key.pub")
	}
	want("etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n", 0o644)
	want("home/vmup/.ssh/authorized_keys", in.LoginPub+"\n", 0o600)
	if got := modeOf(t, root, "home/vmup/.ssh"); got != fs.ModeDir|0o700 && !(got == fs.ModeDir|0o755 && !o.noSSHDir) {
		t.Errorf("home/vmup/.ssh: mode %v", got)
	}

	if o.noCloud {
		gone("var/lib/cloud")
	} else {
		ci := "var/lib/cloud/"
		inst := ci + "instances/" + in.InstanceID + "/"
		for _, f := range []string{"sem/config_ssh", "sem/config_users", "datasource", "boot-finished", "scripts/per-boot/x"} {
			if !exists(root, inst+f) {
				t.Errorf("%s is gone", inst+f)
			}
		}
		for _, f := range []string{"obj.pkl", "user-data.txt", "user-data.txt.i", "cloud-config.txt"} {
			gone(inst + f)
		}
		if entries, _ := os.ReadDir(filepath.Join(root, ci, "instances")); len(entries) != 1 {
			t.Errorf("instances: %d dirs, want only %s", len(entries), in.InstanceID)
		}
		if target, err := os.Readlink(filepath.Join(root, ci, "instance")); err != nil || target != "/var/lib/cloud/instances/"+in.InstanceID {
			t.Errorf("var/lib/cloud/instance links to %q (%v)", target, err)
		}
		want(ci+"data/instance-id", in.InstanceID+"\n", 0o644)
		want(ci+"data/previous-instance-id", in.InstanceID+"\n", 0o644)
		want(ci+"data/previous-hostname", in.Name+"\n", 0o644)
		want(ci+"data/set-hostname", "{\n \"fqdn\": \""+in.Name+".localdomain\",\n \"hostname\": \""+in.Name+"\"\n}\n", 0o644)
		want(ci+"data/result.json", "{}\n", 0o644)
	}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if strings.HasSuffix(path, ".vmup-new") {
			t.Errorf("%s is left", path)
		}
		return nil
	})
}

func TestIdentityScript(t *testing.T) {
	cases := []struct {
		name      string
		o         guestOpts
		wantHosts string
	}{
		{"debian", guestOpts{},
			"127.0.0.1 localhost\n127.0.1.1 b.localdomain b\n10.0.0.1\tab a-b b.a\n\n::1 localhost ip6-localhost ip6-loopback\n"},
		{"dbus file", guestOpts{dbusFile: true, hosts: "127.0.0.1\tlocalhost\n127.0.1.1\ta\n"},
			"127.0.0.1\tlocalhost\n127.0.1.1 b\n"},
		{"no 127.0.1.1", guestOpts{hosts: "127.0.0.1 localhost a\n"}, "127.0.0.1 localhost a\n127.0.1.1 b\n"},
		{"passwd: a longer name first, the login last with no newline", guestOpts{
			passwd: "vmupx:x:0:0::/nonexistent:/bin/sh\nvmu:x:0:0::/root:/bin/sh\nvmup:x:%[1]d:%[2]d:a b c:/home/vmup:/bin/bash"},
			"127.0.0.1 localhost\n127.0.1.1 b.localdomain b\n10.0.0.1\tab a-b b.a\n\n::1 localhost ip6-localhost ip6-loopback\n"},
		{"no cloud-init, no .ssh", guestOpts{noCloud: true, noSSHDir: true}, "127.0.0.1 localhost\n127.0.1.1 b.localdomain b\n10.0.0.1\tab a-b b.a\n\n::1 localhost ip6-localhost ip6-loopback\n"},
	}
	for _, sh := range guestShells(t, true) {
		for _, c := range cases {
			t.Run(sh.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				root := identityGuest(t, c.o)
				in := testIdentity(t, "b")
				if !c.o.noCloud {
					in.MAC = guestMAC // on nat; on the user network none is checked
				}
				out, code := runIdentity(t, sh, root, in)
				if code != 0 || !strings.HasSuffix(out, "vmup-identity done sshd=skipped\n") {
					t.Fatalf("exit %d:\n%s", code, out)
				}
				checkIdentity(t, root, in, c.o, c.wantHosts)
			})
		}
	}
}

// A login that is not in the guest's passwd is an identity not given.
func TestIdentityScriptNoLogin(t *testing.T) {
	for _, sh := range guestShells(t, false) {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			root := identityGuest(t, guestOpts{passwd: "root:x:0:0:root:/root:/bin/bash\nvmupx:x:%[1]d:%[2]d::/home/vmup:/bin/bash\n"})
			out, code := runIdentity(t, sh, root, testIdentity(t, "b"))
			if _, err := identityOutcome([]byte(out), code); code != 2 || err == nil || !strings.Contains(out, "no user vmup in /etc/passwd") {
				t.Errorf("exit %d (%v):\n%s", code, err, out)
			}
			if got := readGuest(t, root, "home/vmup/.ssh/authorized_keys"); !strings.Contains(got, "AAAAold") {
				t.Errorf("authorized_keys: %q", got)
			}
		})
	}
}

// A second clone identity on the same guest moves instances/NEW1 to NEW2;
// the same one again changes nothing.
func TestIdentityScriptAgain(t *testing.T) {
	for _, sh := range guestShells(t, false) {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			root := identityGuest(t, guestOpts{})
			first, second := testIdentity(t, "b"), testIdentity(t, "b")
			second.InstanceID = first.InstanceID + "1" // made within the same nanosecond, maybe
			hosts := "127.0.0.1 localhost\n127.0.1.1 b.localdomain b\n10.0.0.1\tab a-b b.a\n\n::1 localhost ip6-localhost ip6-loopback\n"
			for i, in := range []cloneIdentity{first, second, second} {
				if out, code := runIdentity(t, sh, root, in); code != 0 {
					t.Fatalf("run %d: exit %d:\n%s", i+1, code, out)
				}
				checkIdentity(t, root, in, guestOpts{}, hosts)
			}
			// And once more as another VM: b's names go.
			c := testIdentity(t, "c")
			if out, code := runIdentity(t, sh, root, c); code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			checkIdentity(t, root, c, guestOpts{}, strings.ReplaceAll(hosts, "b.localdomain b", "c.localdomain c"))
		})
	}
}

// Nothing changes unless the private key came on stdin, and the script
// checks its arguments itself too.
func TestIdentityScriptRefuses(t *testing.T) {
	in := testIdentity(t, "b")
	args := []string{in.Name, in.MachineID, in.InstanceID, in.User, in.LoginPub, in.Host.Public, "1700000000", guestMAC}
	bad := map[string]func([]string) []string{
		"no key on stdin": func(a []string) []string { return a },
		"name":            func(a []string) []string { a[0] = "../b"; return a },
		"machine-id":      func(a []string) []string { a[1] = strings.ToUpper(a[1]); return a },
		"instance-id":     func(a []string) []string { a[2] = "vmup-b-1/../../x"; return a },
		"other instance":  func(a []string) []string { a[2] = "vmup-c-1"; return a },
		"user":            func(a []string) []string { a[3] = "-r"; return a },
		"key":             func(a []string) []string { a[5] = in.Host.Public + "\nssh-rsa AAAA"; return a },
		"time":            func(a []string) []string { a[6] = "1+1"; return a },
		"six args":        func(a []string) []string { return a[:6] },
		"seven args":      func(a []string) []string { return a[:7] },
		"bad MAC":         func(a []string) []string { a[7] = "52:54:00:AA:BB:CC"; return a },
		// The lease led to another guest: its MAC is not this clone's.
		"another guest": func(a []string) []string { a[7] = "52:54:00:00:00:01"; return a },
	}
	for what, mutate := range bad {
		t.Run(what, func(t *testing.T) {
			t.Parallel()
			root := identityGuest(t, guestOpts{})
			stdin := in.Host.Private
			if what == "no key on stdin" {
				stdin = []byte("ssh-ed25519 AAAA\n")
			}
			cmd := exec.Command("sh", append([]string{"-c", identityScript, "sh"}, mutate(append([]string(nil), args...))...)...)
			cmd.Env = []string{"ROOT=" + root, "PATH=" + os.Getenv("PATH")}
			cmd.Stdin = bytes.NewReader(stdin)
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 2 {
				t.Errorf("exit %d, want 2:\n%s", code, out)
			}
			if got := readGuest(t, root, "etc/hostname"); got != "a\n" {
				t.Errorf("etc/hostname is %q", got)
			}
			if got := readGuest(t, root, "etc/ssh/ssh_host_ed25519_key"); !strings.Contains(got, "old ed25519") {
				t.Errorf("host key is %q", got)
			}
		})
	}
}

func TestIdentityCommand(t *testing.T) {
	in := testIdentity(t, "b")
	remote, stdin, err := identityCommand("vmup", in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(remote, "sudo -n sh -c '") || !bytes.Equal(stdin, in.Host.Private) {
		t.Errorf("remote %.40q…, stdin %q", remote, stdin)
	}
	in.MAC = guestMAC
	remote, _, _ = identityCommand("vmup", in)
	tail := fmt.Sprintf("' sh 'b' '%s' '%s' 'vmup' '%s' '%s' '%d' '%s'", in.MachineID, in.InstanceID, in.LoginPub, in.Host.Public, in.Time.Unix(), guestMAC)
	if !strings.HasSuffix(remote, tail) {
		t.Errorf("remote ends %q, want %q", remote[len(remote)-len(tail):], tail)
	}
	if body := strings.Split(string(in.Host.Private), "\n")[1]; strings.Contains(remote, body) {
		t.Error("the private key is in the command line")
	}
	if root, _, _ := identityCommand("root", in); !strings.HasPrefix(root, "sh -c '") {
		t.Errorf("root's command is %.40q…", root)
	}
	if in.Time.Before(time.Now().Add(-time.Minute)) || !strings.HasPrefix(in.InstanceID, "vmup-b-") || in.MachineID[12] != '4' {
		t.Errorf("fresh identity: %+v", in)
	}
}

// Hostile or malformed values never reach a shell.
func TestIdentityCommandRefuses(t *testing.T) {
	good := testIdentity(t, "b")
	other, _ := newSSHKey("other")
	cases := map[string]func(*cloneIdentity){
		"name with a command":      func(in *cloneIdentity) { in.Name = "a;touch /tmp/x" },
		"name uppercase":           func(in *cloneIdentity) { in.Name = "B" },
		"name empty":               func(in *cloneIdentity) { in.Name = "" },
		"machine-id uppercase":     func(in *cloneIdentity) { in.MachineID = strings.ToUpper(in.MachineID) },
		"machine-id short":         func(in *cloneIdentity) { in.MachineID = in.MachineID[1:] },
		"machine-id zero":          func(in *cloneIdentity) { in.MachineID = strings.Repeat("0", 32) },
		"machine-id substitution":  func(in *cloneIdentity) { in.MachineID = "$(reboot)" + in.MachineID[9:] },
		"instance-id substitution": func(in *cloneIdentity) { in.InstanceID = "vmup-b-$(touch /tmp/x)" },
		"instance-id backquote":    func(in *cloneIdentity) { in.InstanceID = "vmup-b-1`id`" },
		"instance-id other VM":     func(in *cloneIdentity) { in.InstanceID = "vmup-c-123" },
		"instance-id no digits":    func(in *cloneIdentity) { in.InstanceID = "vmup-b-" },
		"instance-id newline":      func(in *cloneIdentity) { in.InstanceID += "\n1" },
		"user":                     func(in *cloneIdentity) { in.User = "vmup;id" },
		"login key newline":        func(in *cloneIdentity) { in.LoginPub += "\nssh-ed25519 AAAA evil" },
		"login key quote":          func(in *cloneIdentity) { in.LoginPub += "'; touch /tmp/x; '" },
		"login key rsa":            func(in *cloneIdentity) { in.LoginPub = "ssh-rsa AAAAB3NzaC1yc2E vmup-b" },
		"login key options":        func(in *cloneIdentity) { in.LoginPub = `command="id" ` + in.LoginPub },
		"login key glued comment":  func(in *cloneIdentity) { in.LoginPub = strings.Replace(in.LoginPub, " vmup-b", "vmup-b", 1) },
		"host key newline":         func(in *cloneIdentity) { in.Host.Public += "\n" },
		"private key of another":   func(in *cloneIdentity) { in.Host.Private = other.Private },
		"private key junk before":  func(in *cloneIdentity) { in.Host.Private = append([]byte("x\n"), in.Host.Private...) },
		"private key two blocks":   func(in *cloneIdentity) { in.Host.Private = append(in.Host.Private, other.Private...) },
		"private key none":         func(in *cloneIdentity) { in.Host.Private = nil },
		"private key rsa type": func(in *cloneIdentity) {
			in.Host.Private = bytes.ReplaceAll(in.Host.Private, []byte("OPENSSH"), []byte("RSA"))
		},
		"time zero": func(in *cloneIdentity) { in.Time = time.Time{} },
	}
	for what, mutate := range cases {
		in := good
		mutate(&in)
		if remote, _, err := identityCommand("vmup", in); err == nil {
			t.Errorf("%s: accepted: %.80q…", what, remote)
		}
	}
	for _, login := range []string{"", "vmup x", "-oProxyCommand=x", "a'b"} {
		if _, _, err := identityCommand(login, good); err == nil {
			t.Errorf("login %q accepted", login)
		}
	}
}

func TestIdentityOutcome(t *testing.T) {
	cases := []struct {
		out      string
		code     int
		reloaded bool
		ok       bool
	}{
		{"vmup-identity done sshd=reloaded\n", 0, true, true},
		{"Welcome!\nvmup-identity done sshd=reloaded\n", 0, true, true},
		{"vmup-identity done sshd=unreloaded\n", 3, false, true},
		{"vmup-identity done sshd=skipped\n", 0, false, true},
		{"vmup-identity done sshd=unreloaded\n", 0, false, false},
		{"vmup-identity done sshd=reloaded\n", 3, false, false},
		{"", 0, false, false},
		{"", 2, false, false},
		{"", 255, false, false},
	}
	for _, c := range cases {
		reloaded, err := identityOutcome([]byte(c.out), c.code)
		if reloaded != c.reloaded || (err == nil) != c.ok {
			t.Errorf("%q exit %d: reloaded %v, err %v", c.out, c.code, reloaded, err)
		}
	}
}

// The whole script parses in each shell: a run with ROOT ends before sshd's part.
func TestIdentityScriptParses(t *testing.T) {
	for _, sh := range guestShells(t, true) {
		cmd := exec.Command(sh.argv[0], append(sh.argv[1:], "-n", "-c", identityScript)...)
		cmd.Env = []string{"PATH=" + sh.path}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh.name, err, out)
		}
	}
}
