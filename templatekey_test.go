package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

const (
	keyImageA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	keyImageB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// keyFixture is a playbook's directory and the files a key reads, in a
// directory of their own.
type keyFixture struct {
	dir, pb string // dir holds the playbook's directory pb and the files beside it
}

// playbookFiles is a playbook's tree: path, content; a path ending in "*" is executable.
var playbookFiles = []struct{ path, content string }{
	{"site.yml", "- hosts: all\n  roles: [web]\n"},
	{"roles/web/tasks/main.yml", "- copy: {src: motd, dest: /etc/motd}\n"},
	{"roles/web/files/motd", "hello\n"},
	{"roles/web/templates/conf.j2", "port={{ port }}\n"},
	{"group_vars/all.yml", "port: 80\n"},
	{"host_vars/a.yml", "colour: blue\n"},
	{"files/setup.sh*", "#!/bin/sh\ntrue\n"},
}

func writeKeyFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

func newKeyFixture(t *testing.T) keyFixture {
	t.Helper()
	dir := t.TempDir()
	fx := keyFixture{dir: dir, pb: filepath.Join(dir, "pb")}
	for _, f := range playbookFiles {
		path, mode := strings.TrimSuffix(f.path, "*"), os.FileMode(0o644)
		if path != f.path {
			mode = 0o755
		}
		writeKeyFile(t, filepath.Join(fx.pb, path), f.content, mode)
	}
	writeKeyFile(t, fx.path("vars.yml"), "extra: 1\n", 0o644)
	writeKeyFile(t, fx.path("vmlinuz"), "kernel", 0o644)
	writeKeyFile(t, fx.path("initrd.img"), "initrd", 0o644)
	return fx
}

// path is a file beside the playbook's directory.
func (fx keyFixture) path(name string) string { return filepath.Join(fx.dir, name) }

// options are a VM's options using the fixture's files.
func (fx keyFixture) options() *Options {
	return &Options{
		Name: "a", Image: "debian-12", Playbook: filepath.Join(fx.pb, "site.yml"),
		PlaybookArgs: []string{"-e", "@" + fx.path("vars.yml"), "--tags", "web"},
		CPUs:         2, MemoryMiB: 2048, DiskGiB: 20, Network: "nat", Connect: "qemu:///system", Pool: "vmup",
		DomainType: "auto", Firmware: "bios", Kernel: fx.path("vmlinuz"), Initrd: fx.path("initrd.img"),
		Cmdline: "console=ttyS0 root=/dev/vda1", User: "vmup", Results: filepath.Join(fx.dir, "vmup-results"),
		BootTimeout: 5 * time.Minute, ShutdownTimeout: time.Minute, CloudInitErrors: "warn",
		set: map[string]bool{},
	}
}

func (fx keyFixture) input() templateKeyInput {
	return templateKeyInputFor(fx.options(), keyImageA, "kvm")
}

func mustTemplateKey(t *testing.T, in templateKeyInput) string {
	t.Helper()
	key, err := templateKey(in)
	if err != nil {
		t.Fatalf("templateKey: %v", err)
	}
	return key
}

// Every input of the key changes it, each to a key of its own; and the
// playbook's tree counts by relative path, never where it lies.
func TestTemplateKeyEachInputChangesIt(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(t *testing.T, fx keyFixture, in *templateKeyInput)
	}{
		{"image hash", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.ImageSHA256 = keyImageB }},
		{"domain type", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.DomainType = "qemu" }},
		{"cpus", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.CPUs = 4 }},
		{"memory", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.MemoryMiB = 1024 }},
		{"disk", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.DiskGiB = 40 }},
		{"firmware", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.Firmware = "uefi" }},
		// The guest's NIC, and the template's kind: nat keeps the disk alone.
		{"network", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.Network = "user" }},
		{"kernel content", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, fx.path("vmlinuz"), "kernel 2", 0o644)
		}},
		{"no kernel", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.Kernel, in.Initrd, in.Cmdline = "", "", "" }},
		{"initrd content", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, fx.path("initrd.img"), "initrd 2", 0o644)
		}},
		{"no initrd", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.Initrd = "" }},
		{"cmdline", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.Cmdline += " quiet" }},
		{"user", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			o := fx.options()
			o.User = "alice"
			*in = templateKeyInputFor(o, keyImageA, "kvm")
		}},
		{"cloud-init user-data", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			in.UserData = append(in.UserData, "package_upgrade: true\n"...)
		}},
		{"cloud-init meta-data", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			in.MetaData = append(in.MetaData, "public-keys: []\n"...)
		}},
		{"seed version", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.SeedVersion++ }},
		{"playbook content", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "site.yml"), "- hosts: all\n  roles: [web, db]\n", 0o644)
		}},
		{"playbook renamed", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.Rename(in.Playbook, filepath.Join(fx.pb, "main.yml"))
			in.Playbook = filepath.Join(fx.pb, "main.yml")
		}},
		{"no playbook", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			o := fx.options()
			o.NoProvision = true
			*in = templateKeyInputFor(o, keyImageA, "kvm")
		}},
		{"role's task", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "roles/web/tasks/main.yml"), "- debug: {}\n", 0o644)
		}},
		{"role's file", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "roles/web/files/motd"), "hello!\n", 0o644)
		}},
		{"role's template", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "roles/web/templates/conf.j2"), "port={{ port }}\nx=1\n", 0o644)
		}},
		{"group_vars", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "group_vars/all.yml"), "port: 8080\n", 0o644)
		}},
		{"host_vars", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "host_vars/a.yml"), "colour: red\n", 0o644)
		}},
		{"file added", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "group_vars/vmup.yml"), "x: 1\n", 0o644)
		}},
		{"empty file added", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, filepath.Join(fx.pb, "roles/web/meta/main.yml"), "", 0o644)
		}},
		{"file removed", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.Remove(filepath.Join(fx.pb, "host_vars/a.yml"))
		}},
		{"file moved", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.MkdirAll(filepath.Join(fx.pb, "host_vars/b"), 0o755)
			os.Rename(filepath.Join(fx.pb, "host_vars/a.yml"), filepath.Join(fx.pb, "host_vars/b/a.yml"))
		}},
		{"exec bit cleared", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.Chmod(filepath.Join(fx.pb, "files/setup.sh"), 0o644)
		}},
		{"exec bit set", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.Chmod(filepath.Join(fx.pb, "roles/web/files/motd"), 0o744)
		}},
		{"symlink added", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.Symlink("motd", filepath.Join(fx.pb, "roles/web/files/issue"))
		}},
		{"file replaced by a symlink to it", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			os.Remove(filepath.Join(fx.pb, "host_vars/a.yml"))
			os.Symlink("../group_vars/all.yml", filepath.Join(fx.pb, "host_vars/a.yml"))
		}},
		{"extra arg", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			in.PlaybookArgs = append(in.PlaybookArgs, "-v")
		}},
		{"extra args' order", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			in.PlaybookArgs = append(in.PlaybookArgs[2:], in.PlaybookArgs[:2]...)
		}},
		{"extra arg split differently", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			in.PlaybookArgs = []string{"-e", "@" + fx.path("vars.yml"), "--tags web"}
		}},
		{"-e @file's content", func(t *testing.T, fx keyFixture, in *templateKeyInput) {
			writeKeyFile(t, fx.path("vars.yml"), "extra: 2\n", 0o644)
		}},
		{"groups", func(t *testing.T, fx keyFixture, in *templateKeyInput) { in.Groups = []string{"web"} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newKeyFixture(t)
			in := fx.input()
			before := mustTemplateKey(t, in)
			c.change(t, fx, &in)
			if after := mustTemplateKey(t, in); after == before {
				t.Errorf("the key stayed %s", before)
			}
		})
	}
}

// Each change makes a key of its own: no two fields' values run together.
func TestTemplateKeyChangesAreDistinct(t *testing.T) {
	fx := newKeyFixture(t)
	seen := map[string]int{}
	for i, change := range []func(in *templateKeyInput){
		func(in *templateKeyInput) {},
		func(in *templateKeyInput) { in.CPUs = 3 },
		func(in *templateKeyInput) { in.MemoryMiB = 3 },
		func(in *templateKeyInput) { in.DiskGiB = 3 },
		func(in *templateKeyInput) { in.SeedVersion = 3 },
		func(in *templateKeyInput) { in.Kernel = "" },
		func(in *templateKeyInput) { in.Initrd = "" },
		func(in *templateKeyInput) { in.Kernel, in.Initrd = in.Initrd, in.Kernel },
		func(in *templateKeyInput) { in.Cmdline = "" },
		func(in *templateKeyInput) { in.Firmware = "" },
		func(in *templateKeyInput) { in.User = "" },
		func(in *templateKeyInput) { in.PlaybookArgs = nil },
		func(in *templateKeyInput) { in.PlaybookArgs = []string{""} },
		func(in *templateKeyInput) { in.Groups = []string{""} },
		func(in *templateKeyInput) { in.Groups = []string{"web", "db"} },
		func(in *templateKeyInput) { in.Groups = []string{"webdb"} },
		func(in *templateKeyInput) { in.Groups = []string{"db", "web", "web"} },
		func(in *templateKeyInput) { in.Playbook = "" },
		func(in *templateKeyInput) { in.MetaData, in.UserData = in.UserData, in.MetaData },
		func(in *templateKeyInput) { in.MetaData = append(in.MetaData, in.UserData...) },
		func(in *templateKeyInput) { in.MetaData, in.UserData = nil, append(in.MetaData, in.UserData...) },
	} {
		in := fx.input()
		change(&in)
		key := mustTemplateKey(t, in)
		if j, ok := seen[key]; ok {
			t.Errorf("changes %d and %d give one key %s", j, i, key)
		}
		seen[key] = i
	}
}

// Nothing but the key's inputs changes it: not the VM's name, forwards,
// ports, restriction of the network, connection, pool, the image's path or pin, nor where or
// when the files were written.
func TestTemplateKeyIgnoresTheRest(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(t *testing.T, fx keyFixture, o *Options)
	}{
		{"nothing", func(t *testing.T, fx keyFixture, o *Options) {}},
		{"name", func(t *testing.T, fx keyFixture, o *Options) { o.Name = "b" }},
		{"environment VM", func(t *testing.T, fx keyFixture, o *Options) {
			o.Name, o.EnvVM, o.Env = "dev-b", "b", &Environment{Name: "dev"}
		}},
		{"forwards", func(t *testing.T, fx keyFixture, o *Options) {
			o.Forwards = []Forward{{Addr: "127.0.0.1", Host: 8080, Guest: 80}}
		}},
		{"restrict-network", func(t *testing.T, fx keyFixture, o *Options) { o.RestrictNetwork = true }},
		{"connect", func(t *testing.T, fx keyFixture, o *Options) { o.Connect = "qemu:///session" }},
		{"pool", func(t *testing.T, fx keyFixture, o *Options) { o.Pool = "other" }},
		{"image path", func(t *testing.T, fx keyFixture, o *Options) { o.Image = "/srv/images/debian.qcow2" }},
		{"image pin", func(t *testing.T, fx keyFixture, o *Options) { o.ImageSHA256 = keyImageA }},
		{"domain type auto", func(t *testing.T, fx keyFixture, o *Options) { o.DomainType = "kvm" }},
		{"timeouts", func(t *testing.T, fx keyFixture, o *Options) {
			o.BootTimeout, o.ShutdownTimeout = time.Minute, time.Second
		}},
		{"cloud-init-errors", func(t *testing.T, fx keyFixture, o *Options) { o.CloudInitErrors = "fail" }},
		{"modes of up", func(t *testing.T, fx keyFixture, o *Options) {
			o.Detach, o.Reset, o.Force, o.SuspendOnStop, o.JSON, o.Parallel = true, true, true, true, true, 3
		}},
		{"run's settings", func(t *testing.T, fx keyFixture, o *Options) {
			o.Sync, o.Collect, o.Results = []string{"."}, []string{"/out"}, fx.path("elsewhere")
			o.Teardown, o.DestroyWhen, o.StopTimeout = "t.yml", "always", time.Second
		}},
		{"kernel and initrd moved", func(t *testing.T, fx keyFixture, o *Options) {
			for _, f := range []*string{&o.Kernel, &o.Initrd} {
				moved := filepath.Join(fx.dir, "boot", filepath.Base(*f))
				os.MkdirAll(filepath.Dir(moved), 0o755)
				if err := os.Rename(*f, moved); err != nil {
					t.Fatal(err)
				}
				*f = moved
			}
		}},
		{"playbook's directory moved", func(t *testing.T, fx keyFixture, o *Options) {
			moved := fx.path("elsewhere/pb2")
			os.MkdirAll(filepath.Dir(moved), 0o755)
			if err := os.Rename(fx.pb, moved); err != nil {
				t.Fatal(err)
			}
			o.Playbook = filepath.Join(moved, "site.yml")
		}},
		{"times", func(t *testing.T, fx keyFixture, o *Options) {
			old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
			filepath.Walk(fx.dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, old, old) })
		}},
		{"modes other than exec", func(t *testing.T, fx keyFixture, o *Options) {
			os.Chmod(filepath.Join(fx.pb, "group_vars/all.yml"), 0o600)
			os.Chmod(filepath.Join(fx.pb, "files/setup.sh"), 0o700)
			os.Chmod(filepath.Join(fx.pb, "roles"), 0o700)
		}},
		{"an empty directory", func(t *testing.T, fx keyFixture, o *Options) {
			os.MkdirAll(filepath.Join(fx.pb, "roles/db"), 0o755)
		}},
		{"version control and bytecode", func(t *testing.T, fx keyFixture, o *Options) {
			writeKeyFile(t, filepath.Join(fx.pb, ".git/HEAD"), "ref: refs/heads/main\n", 0o644)
			writeKeyFile(t, filepath.Join(fx.pb, "roles/web/.git"), "gitdir: ../../.git/modules/web\n", 0o644)
			writeKeyFile(t, filepath.Join(fx.pb, ".hg/store"), "x", 0o644)
			writeKeyFile(t, filepath.Join(fx.pb, "filter_plugins/__pycache__/f.cpython-311.pyc"), "\x00", 0o644)
		}},
		{"vmup's results in the playbook's directory", func(t *testing.T, fx keyFixture, o *Options) {
			o.Results = filepath.Join(fx.pb, "vmup-results")
			writeKeyFile(t, filepath.Join(o.Results, "run-1/exit_code"), "0\n", 0o644)
		}},
		{"symlink's target outside the tree", func(t *testing.T, fx keyFixture, o *Options) {
			// The link is there in both; only what it points to changes.
			writeKeyFile(t, fx.path("outside.yml"), "changed\n", 0o644)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newKeyFixture(t)
			writeKeyFile(t, fx.path("outside.yml"), "x: 1\n", 0o644)
			if err := os.Symlink(fx.path("outside.yml"), filepath.Join(fx.pb, "group_vars/outside.yml")); err != nil {
				t.Fatal(err)
			}
			want := mustTemplateKey(t, fx.input())
			o := fx.options()
			c.change(t, fx, o)
			if got := mustTemplateKey(t, templateKeyInputFor(o, keyImageA, "kvm")); got != want {
				t.Errorf("the key changed from %s to %s", want, got)
			}
		})
	}
}

// The config file vmup read (vmup.json in the working directory) is left
// out of the playbook's tree: its name and forwards are no input.
func TestTemplateKeyLeavesOutVmupJSON(t *testing.T) {
	fx := newKeyFixture(t)
	t.Chdir(fx.pb)
	key := func() string { return mustTemplateKey(t, fx.input()) }
	writeKeyFile(t, filepath.Join(fx.pb, configFile), `{"name": "a"}`, 0o644)
	want := key()
	writeKeyFile(t, filepath.Join(fx.pb, configFile), `{"name": "b", "forward": ["8080:80"]}`, 0o644)
	if got := key(); got != want {
		t.Errorf("a changed %s changed the key from %s to %s", configFile, want, got)
	}
	// One in a subdirectory is a file like any other.
	writeKeyFile(t, filepath.Join(fx.pb, "files", configFile), `{}`, 0o644)
	if got := key(); got == want {
		t.Errorf("files/%s is not in the key", configFile)
	}
}

// The same inputs give the same key, however the files were made and
// listed; and the canonical form is pinned: a change to it changes every
// template's key, so it must be meant (raise templateKeyFormat).
func TestTemplateKeyStable(t *testing.T) {
	build := func(reverse bool) templateKeyInput {
		dir := t.TempDir()
		files := []struct{ path, content string }{
			{"site.yml", "- hosts: all\n"}, {"b/x", "1"}, {"a/y", "2"}, {"a/b/z", "3"}, {"a.b", "4"}, {"a-c", "5"},
		}
		for i := range files {
			if reverse {
				i = len(files) - 1 - i
			}
			writeKeyFile(t, filepath.Join(dir, files[i].path), files[i].content, 0o644)
		}
		os.Symlink("a/y", filepath.Join(dir, "l"))
		return templateKeyInput{
			ImageSHA256: strings.ToUpper(keyImageA), DomainType: "qemu", CPUs: 1, MemoryMiB: 1024, DiskGiB: 8,
			Firmware: "bios", User: "vmup", MetaData: []byte("m\n"), UserData: []byte("#cloud-config\n"), SeedVersion: 1,
			Playbook: filepath.Join(dir, "site.yml"), PlaybookArgs: []string{"-v"},
			Groups: map[bool][]string{false: {"web", "db"}, true: {"db", "web"}}[reverse],
		}
	}
	a, b := build(false), build(true)
	ka := mustTemplateKey(t, a)
	if again := mustTemplateKey(t, a); again != ka {
		t.Errorf("one input, two keys: %s, %s", ka, again)
	}
	if kb := mustTemplateKey(t, b); kb != ka {
		t.Errorf("the same tree made in another order: key %s, not %s", kb, ka)
	}
	// Format /1 was checked by a script of its own (Python's hashlib,
	// struct.pack(">Q")) from the form templatekey.go describes; /2 adds the
	// network field (empty here), its golden taken from this code.
	const golden = "412c70d8d140897c0568f9611b09d9569e0bf8baafa4be1dd6663b48c99bb790"
	if ka != golden {
		t.Errorf("the key's canonical form changed: %s, was %s", ka, golden)
	}
}

// A symbolic link is hashed by its target's text, never followed: one out
// of the tree reads nothing there, not even a directory too big to hash.
// The playbook itself is read through a link: it is the input.
func TestTemplateKeySymlinks(t *testing.T) {
	fx := newKeyFixture(t)
	outside := fx.path("outside")
	writeKeyFile(t, filepath.Join(outside, "vars.yml"), "x: 1\n", 0o644)
	big, err := os.Create(filepath.Join(outside, "big"))
	if err != nil {
		t.Fatal(err)
	}
	big.Truncate(maxKeyTreeBytes + 1) // sparse
	big.Close()
	for _, l := range []struct{ target, link string }{
		{outside, "roles/outside"}, {filepath.Join(outside, "vars.yml"), "group_vars/all/outside.yml"},
		{"../../pb", "roles/loop"}, {"missing", "dangling"},
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(fx.pb, l.link)), 0o755)
		if err := os.Symlink(l.target, filepath.Join(fx.pb, l.link)); err != nil {
			t.Fatal(err)
		}
	}
	want := mustTemplateKey(t, fx.input())
	writeKeyFile(t, filepath.Join(outside, "vars.yml"), "x: 2\n", 0o644)
	if got := mustTemplateKey(t, fx.input()); got != want {
		t.Errorf("a file a link points to out of the tree changed the key")
	}
	tree, err := playbookTree(fx.pb, nil)
	if err != nil {
		t.Fatal(err)
	}
	var links []treeEntry
	for _, e := range tree {
		if e.kind == "symlink" {
			links = append(links, e)
		}
	}
	wantLinks := []treeEntry{
		{"dangling", "symlink", "missing"},
		{"group_vars/all/outside.yml", "symlink", filepath.Join(outside, "vars.yml")},
		{"roles/loop", "symlink", "../../pb"},
		{"roles/outside", "symlink", outside},
	}
	if diff := cmp.Diff(wantLinks, links, cmp.AllowUnexported(treeEntry{})); diff != "" {
		t.Errorf("links (-want +got):\n%s", diff)
	}
	os.Remove(filepath.Join(fx.pb, "roles/outside"))
	os.Symlink(outside+"/", filepath.Join(fx.pb, "roles/outside"))
	if got := mustTemplateKey(t, fx.input()); got == want {
		t.Errorf("a link's new target did not change the key")
	}

	// The playbook as a link out of its directory: its content counts.
	writeKeyFile(t, filepath.Join(outside, "site.yml"), "- hosts: all\n", 0o644)
	os.Remove(filepath.Join(fx.pb, "site.yml"))
	os.Symlink(filepath.Join(outside, "site.yml"), filepath.Join(fx.pb, "site.yml"))
	want = mustTemplateKey(t, fx.input())
	writeKeyFile(t, filepath.Join(outside, "site.yml"), "- hosts: all\n  tasks: []\n", 0o644)
	if got := mustTemplateKey(t, fx.input()); got == want {
		t.Errorf("the playbook's content, through a link, did not change the key")
	}

	// The playbook's directory as a link: its tree is what it points to.
	linked := fx.path("pb-link")
	os.Symlink(fx.pb, linked)
	in := fx.input()
	want = mustTemplateKey(t, in)
	in.Playbook = filepath.Join(linked, "site.yml")
	if got := mustTemplateKey(t, in); got != want {
		t.Errorf("the playbook through a linked directory: key %s, not %s", got, want)
	}
}

// A directory beyond the bounds is refused, naming it, before a file is read.
// The bound of files is 100 here (10000 really: makes 10000 files take seconds).
func TestTemplateKeyCaps(t *testing.T) {
	if maxKeyTreeFiles != 10000 || maxKeyTreeBytes != 256<<20 {
		t.Fatalf("bounds %d files, %d bytes; want 10000 and 256 MiB", maxKeyTreeFiles, maxKeyTreeBytes)
	}
	defer func(n int) { maxKeyTreeFiles = n }(maxKeyTreeFiles)
	maxKeyTreeFiles = 100
	t.Run("files", func(t *testing.T) {
		fx := newKeyFixture(t)
		dir := filepath.Join(fx.pb, "many")
		os.MkdirAll(dir, 0o755)
		for i := range maxKeyTreeFiles {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		checkTreeTooBig(t, fx, "more than 100 files")
	})
	t.Run("directories", func(t *testing.T) {
		fx := newKeyFixture(t)
		for i := range maxKeyTreeFiles {
			if err := os.Mkdir(filepath.Join(fx.pb, fmt.Sprint("d", i)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		checkTreeTooBig(t, fx, "more than 100 files")
	})
	t.Run("bytes", func(t *testing.T) {
		fx := newKeyFixture(t)
		f, err := os.Create(filepath.Join(fx.pb, "disk.img"))
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(maxKeyTreeBytes - 100) // sparse; with the playbook's files, beyond
		f.Close()
		start := time.Now()
		checkTreeTooBig(t, fx, "more than 256 MiB of files")
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("refusing took %v: the files were read", d)
		}
	})
	t.Run("within", func(t *testing.T) {
		fx := newKeyFixture(t)
		dir := filepath.Join(fx.pb, "many")
		os.MkdirAll(dir, 0o755)
		// The fixture's 7 files and 8 directories, this directory, and these: the bound.
		for i := range maxKeyTreeFiles - 16 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		mustTemplateKey(t, fx.input())
		os.WriteFile(filepath.Join(dir, "one more"), nil, 0o644)
		checkTreeTooBig(t, fx, "more than 100 files")
	})
}

func checkTreeTooBig(t *testing.T, fx keyFixture, what string) {
	t.Helper()
	_, err := templateKey(fx.input())
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want a usage error", err)
	}
	want := fmt.Sprintf("the playbook's directory %s holds %s: a template's key covers every file in it", fx.pb, what)
	if ue.Error() != want || !strings.Contains(ue.Hint(), "directory of their own") {
		t.Errorf("err = %q (hint %q), want %q", ue.Error(), ue.Hint(), want)
	}
}

// A FIFO never blocks the key: in the tree it counts by its type; named as
// an @file it is refused.
func TestTemplateKeyFIFO(t *testing.T) {
	fx := newKeyFixture(t)
	if err := unix.Mkfifo(filepath.Join(fx.pb, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		in := fx.input()
		if _, err := templateKey(in); err != nil {
			done <- err
			return
		}
		in.PlaybookArgs = []string{"-e@" + filepath.Join(fx.pb, "fifo")}
		_, err := templateKey(in)
		if err == nil || !strings.Contains(err.Error(), "is not a regular file") {
			done <- fmt.Errorf("a FIFO as @file: err = %v", err)
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("templateKey blocked on a FIFO")
	}
}

func TestTemplateKeyRefuses(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(fx keyFixture, in *templateKeyInput)
		want   string
	}{
		{"no image hash", func(fx keyFixture, in *templateKeyInput) { in.ImageSHA256 = "" }, `the image's hash "" is no sha256`},
		{"short image hash", func(fx keyFixture, in *templateKeyInput) { in.ImageSHA256 = keyImageA[:16] }, "is no sha256"},
		{"auto domain type", func(fx keyFixture, in *templateKeyInput) { in.DomainType = "auto" }, `domain type "auto": want kvm or qemu`},
		{"missing playbook", func(fx keyFixture, in *templateKeyInput) { os.Remove(in.Playbook) }, "no such file"},
		{"missing kernel", func(fx keyFixture, in *templateKeyInput) { os.Remove(in.Kernel) }, "vmlinuz: no such file"},
		{"missing @file", func(fx keyFixture, in *templateKeyInput) { os.Remove(fx.path("vars.yml")) },
			"extra vars file " + "VARS" + " (-e @VARS after --)"},
		{"unreadable file in the tree", func(fx keyFixture, in *templateKeyInput) {
			os.Chmod(filepath.Join(fx.pb, "host_vars/a.yml"), 0)
		}, "host_vars/a.yml: permission denied"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newKeyFixture(t)
			in := fx.input()
			c.change(fx, &in)
			want := strings.ReplaceAll(c.want, "VARS", fx.path("vars.yml"))
			if os.Geteuid() == 0 && strings.Contains(want, "permission") {
				t.Skip("root reads any file")
			}
			if _, err := templateKey(in); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want one saying %q", err, want)
			}
		})
	}
}

func TestExtraVarsFiles(t *testing.T) {
	got := extraVarsFiles([]string{
		"-e", "@a.yml", "-e@b.yml", "--extra-vars", "@c.json", "--extra-vars=@d.yml",
		"-e", "x=1", "-ex=@y", "--extra-vars=x=1", "@e.yml", "--tags", "@f", "-e", "@", "-e",
	})
	want := []string{"a.yml", "b.yml", "c.json", "d.yml"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A relative @file is read from the working directory, as ansible does.
func TestTemplateKeyRelativeExtraVars(t *testing.T) {
	fx := newKeyFixture(t)
	t.Chdir(fx.dir)
	in := fx.input()
	in.PlaybookArgs = []string{"--extra-vars", "@vars.yml"}
	want := mustTemplateKey(t, in)
	writeKeyFile(t, fx.path("vars.yml"), "extra: 3\n", 0o644)
	if got := mustTemplateKey(t, in); got == want {
		t.Errorf("a relative @file's content did not change the key")
	}
}

// templateKeyInputFor takes exactly the inputs from the options.
func TestTemplateKeyInputFor(t *testing.T) {
	fx := newKeyFixture(t)
	o := fx.options()
	o.Groups = []string{"web", "db"}
	meta, user := seedKeyData("vmup")
	want := templateKeyInput{
		ImageSHA256: keyImageA, DomainType: "kvm", CPUs: 2, MemoryMiB: 2048, DiskGiB: 20, Firmware: "bios",
		Kernel: fx.path("vmlinuz"), Initrd: fx.path("initrd.img"), Cmdline: "console=ttyS0 root=/dev/vda1",
		Network: "nat", User: "vmup", MetaData: meta, UserData: user, SeedVersion: seedVersion,
		Playbook: filepath.Join(fx.pb, "site.yml"), PlaybookArgs: o.PlaybookArgs, Groups: []string{"web", "db"},
		Exclude: []string{absPath(configFile), fx.path("vmup-results")},
	}
	if diff := cmp.Diff(want, templateKeyInputFor(o, keyImageA, "kvm")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	o.NoProvision = true
	want.Playbook, want.PlaybookArgs, want.Exclude = "", nil, nil
	if diff := cmp.Diff(want, templateKeyInputFor(o, keyImageA, "kvm")); diff != "" {
		t.Errorf("--no-provision (-want +got):\n%s", diff)
	}
	// Without a playbook run, its arguments are no input.
	o.NoProvision, o.Playbook = false, ""
	if diff := cmp.Diff(want, templateKeyInputFor(o, keyImageA, "kvm")); diff != "" {
		t.Errorf("no playbook (-want +got):\n%s", diff)
	}
}

// The seed's data in the key is what writeSeed writes, but for what is the
// VM's own; no key nor name is in it.
func TestSeedKeyData(t *testing.T) {
	meta, user := seedKeyData("alice")
	host, err := newSSHKey("vmup-host-a")
	if err != nil {
		t.Fatal(err)
	}
	actual := string(userData("a", "alice", "ssh-ed25519 AAAA vmup-a", host))
	placeholders := strings.NewReplacer("hostname: NAME", "hostname: a", `"LOGIN-PUBLIC-KEY"`, `"ssh-ed25519 AAAA vmup-a"`,
		"HOST-PUBLIC-KEY", strings.TrimSpace(host.Public))
	got := placeholders.Replace(string(user))
	got = strings.Replace(got, "    HOST-PRIVATE-KEY\n", indentLines(string(host.Private)), 1)
	if diff := cmp.Diff(actual, got); diff != "" {
		t.Errorf("user-data with the VM's own filled in (-actual +got):\n%s", diff)
	}
	if diff := cmp.Diff("instance-id: INSTANCE-ID\nlocal-hostname: NAME\n", string(meta)); diff != "" {
		t.Errorf("meta-data (-want +got):\n%s", diff)
	}
}

func indentLines(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
