package main

import (
	"archive/tar"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeSSHScript is the ssh of the cp tests: it logs its arguments and runs
// the remote command, the words after "--" joined by spaces as ssh joins
// them, with sh in $VMUP_FAKE_GUEST, the guest's home.
const fakeSSHScript = `#!/bin/sh
printf '%s\n' "$*" >> "$VMUP_FAKE_SSH_LOG"
while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done
shift
cd "$VMUP_FAKE_GUEST" || exit 255
exec /bin/sh -c "$*"
`

// cpWorld is a VMUP_HOME with the running VMs web and env1-web (both reached
// by the fake ssh, whose guest is one directory) and a working directory.
type cpWorld struct {
	t                *testing.T
	home, guest, dir string
	log              string
	env              []string
}

func newCpWorld(t *testing.T) *cpWorld {
	t.Helper()
	root := t.TempDir()
	w := &cpWorld{t: t, home: filepath.Join(root, "state"), guest: filepath.Join(root, "guest"),
		dir: filepath.Join(root, "work"), log: filepath.Join(root, "ssh.log")}
	os.Mkdir(w.guest, 0o755)
	os.Mkdir(w.dir, 0o755)
	for _, name := range []string{"web", "env1-web"} {
		paths := pathsFor(w.home, name)
		if err := os.MkdirAll(paths.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		j := &Journal{Name: name, Phase: Detached, FirstBootDone: true, User: "vmup", Network: "user",
			Connect: "qemu:///session", Pool: "vmup", CPUs: 2, MemoryMiB: 2048, DiskGiB: 20,
			SSHHost: "127.0.0.1", SSHPort: 2222}
		if err := writeJournal(paths, j); err != nil {
			t.Fatal(err)
		}
	}
	ssh := filepath.Join(root, "ssh")
	if err := os.WriteFile(ssh, []byte(fakeSSHScript), 0o755); err != nil {
		t.Fatal(err)
	}
	w.env = append(os.Environ(), "VMUP_HOME="+w.home, "VMUP_SSH="+ssh, "VMUP_FAKE_GUEST="+w.guest, "VMUP_FAKE_SSH_LOG="+w.log)
	return w
}

// vmup runs `vmup ARGS` in the working directory: stdout, stderr, exit code.
func (w *cpWorld) vmup(args ...string) (string, string, int) {
	w.t.Helper()
	cmd := exec.Command(vmupBinary, args...)
	cmd.Dir, cmd.Env = w.dir, w.env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		w.t.Fatal(err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

func (w *cpWorld) sshCalls() string {
	data, _ := os.ReadFile(w.log)
	return string(data)
}

// vmup cp copies into the VM and back out, each SRC under its own name in
// DEST, and says nothing when all went well.
func TestCpCopiesIntoAndOutOfAVM(t *testing.T) {
	w := newCpWorld(t)
	sampleTree(t, filepath.Join(w.dir, "proj"))
	os.WriteFile(filepath.Join(w.dir, "notes:1.txt"), []byte("n"), 0o600)
	stdout, stderr, code := w.vmup("cp", "proj", "./notes:1.txt", "web:~/in")
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("cp in: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if diff := cmp.Diff(listTree(t, filepath.Join(w.dir, "proj")), listTree(t, filepath.Join(w.guest, "in", "proj"))); diff != "" {
		t.Errorf("in the guest (-host +guest):\n%s", diff)
	}
	if got := listTree(t, filepath.Join(w.guest, "in"))["notes:1.txt"]; got != `file 0600 "n"` {
		t.Errorf("notes:1.txt in the guest: %s", got)
	}
	if n := strings.Count(w.sshCalls(), "\n"); n != 1 {
		t.Errorf("%d ssh runs for two SRCs into the VM, want one stream:\n%s", n, w.sshCalls())
	}
	if !strings.Contains(w.sshCalls(), "HostKeyAlias=vmup-web ") {
		t.Errorf("ssh not pinned to VM web's key:\n%s", w.sshCalls())
	}
	stdout, stderr, code = w.vmup("cp", "web:in/proj", "web:"+filepath.Join(w.guest, "in", "notes:1.txt"), "out/here")
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("cp out: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if diff := cmp.Diff(listTree(t, filepath.Join(w.dir, "proj")), listTree(t, filepath.Join(w.dir, "out", "here", "proj"))); diff != "" {
		t.Errorf("back on the host (-host +back):\n%s", diff)
	}
	if names := dirNames(t, filepath.Join(w.dir, "out", "here")); !cmp.Equal(names, []string{"notes:1.txt", "proj"}) {
		t.Errorf("out/here holds %q", names)
	}
}

// What fails after the arguments passed exits 1 with one error: a path the
// guest does not have, a VM vmup does not know.
func TestCpFailuresExitOne(t *testing.T) {
	w := newCpWorld(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cp", "web:no/such", "out"}, "vmup: error: no/such: no such file or directory in VM web\n"},
		{[]string{"cp", "db:/x", "out"}, "vmup: error: no VM named db\n"},
	} {
		_, stderr, code := w.vmup(c.args...)
		if first, _, _ := strings.Cut(stderr, "vmup: hint:"); code != 1 || first != c.want {
			t.Errorf("vmup %s: exit %d, stderr %q; want 1 and %q", strings.Join(c.args, " "), code, stderr, c.want)
		}
	}
	if names := dirNames(t, w.dir); len(names) != 1 || names[0] != "out" {
		t.Errorf("the working directory holds %q, want out (made, and empty)", names)
	}
	if names := dirNames(t, filepath.Join(w.dir, "out")); len(names) != 0 {
		t.Errorf("out holds %q", names)
	}
}

// Every argument error is a usage error (exit 2) with one error line,
// found before anything is copied: no ssh runs, nothing is made.
func TestCpArgumentErrorsExitTwo(t *testing.T) {
	w := newCpWorld(t)
	os.WriteFile(filepath.Join(w.dir, "file"), nil, 0o644)
	os.Mkdir(filepath.Join(w.dir, "bad"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(w.dir, "bad", "pw"))
	syscall.Mkfifo(filepath.Join(w.dir, "fifo"), 0o644)
	for _, args := range [][]string{
		{"cp"},
		{"cp", "file"},
		{"cp", "file", "elsewhere"},
		{"cp", "web:/a", "web:/b"},
		{"cp", "file", "web:/a", "web:/b"},
		{"cp", "web:/a", "db:/b", "out"},
		{"cp", "web:/a", "file", "out"},
		{"cp", "no-such-file", "web:/x"},
		{"cp", "bad", "web:/x"},
		{"cp", "fifo", "web:/x"},
		{"cp", "web:/", "out"},
		{"cp", "web:", "out"},
		{"cp", "web:~", "out"},
		{"cp", "web:/a/x", "web:/b/x", "out"},
		{"cp", "file", "./file", "web:/x"},
		{"cp", "web:/x", "file"},
		{"cp", "--json", "file", "web:/x"},
		{"cp", "--", "file", "web:/x"},
		{"cp", "Web:/x", "out"},
	} {
		stdout, stderr, code := w.vmup(args...)
		if code != exitUsage || stdout != "" || strings.Count(stderr, "vmup: error: ") != 1 || !strings.HasPrefix(stderr, "vmup: error: ") {
			t.Errorf("vmup %q: exit %d, stdout %q, stderr:\n%s\nwant 2 and one error", args, code, stdout, stderr)
		}
	}
	if calls := w.sshCalls(); calls != "" {
		t.Errorf("ssh ran:\n%s", calls)
	}
	if names := dirNames(t, w.dir); !cmp.Equal(names, []string{"bad", "fifo", "file"}) {
		t.Errorf("the working directory holds %q", names)
	}
}

// In an environment's directory NAME is a VM of its vmup.json, as for
// `vmup ssh`: web is env1-web; a VM not in the file is a usage error.
func TestCpInAnEnvironmentNamesItsVMs(t *testing.T) {
	w := newCpWorld(t)
	os.WriteFile(filepath.Join(w.dir, configFile), []byte(`{"name": "env1", "vms": {"web": {}}}`), 0o644)
	os.WriteFile(filepath.Join(w.dir, "f"), []byte("f"), 0o644)
	if _, stderr, code := w.vmup("cp", "f", "web:"); code != 0 {
		t.Fatalf("cp f web: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(w.sshCalls(), "HostKeyAlias=vmup-env1-web ") {
		t.Errorf("not VM env1-web's ssh:\n%s", w.sshCalls())
	}
	if _, err := os.Stat(filepath.Join(w.guest, "f")); err != nil {
		t.Error(err)
	}
	_, stderr, code := w.vmup("cp", "f", "db:")
	if code != exitUsage || !strings.HasPrefix(stderr, `vmup: error: no VM "db" in vmup.json (environment env1)`) {
		t.Errorf("cp f db: exit %d\n%s", code, stderr)
	}
}

// Bash completes file names for vmup cp's paths.
func TestBashCompletesFilesForCp(t *testing.T) {
	c := newBashCompleter(t)
	os.WriteFile(filepath.Join(c.dir, "data.txt"), nil, 0o600)
	os.Mkdir(filepath.Join(c.dir, "dir"), 0o755)
	for _, words := range [][]string{{"vmup", "cp", "d"}, {"vmup", "cp", "data.txt", "d"}} {
		if got := c.complete(words...); !cmp.Equal(got, []string{"data.txt", "dir"}) {
			t.Errorf("%q<TAB> = %q, want the files", words, got)
		}
	}
}

// Ctrl+C while a copy comes out of the VM stops it at once (exit 130) and
// leaves nothing of it: the temporary directory is removed before vmup exits.
func TestCpInterruptedLeavesNothingBehind(t *testing.T) {
	w := newCpWorld(t)
	// The guest's tar sends the start of a stream and then hangs.
	bin := t.TempDir()
	stream := tarOf(t, tarEntry{name: "./data/", typ: tar.TypeDir}, tarEntry{name: "./data/f", typ: tar.TypeReg, body: "f"})
	os.WriteFile(filepath.Join(bin, "start.tar"), stream[:len(stream)-1024], 0o644)
	os.WriteFile(filepath.Join(bin, "tar"), []byte("#!/bin/sh\ncat \"$(dirname \"$0\")/start.tar\"\nexec sleep 60\n"), 0o755)
	w.env = append(w.env, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	os.Mkdir(filepath.Join(w.guest, "data"), 0o755)

	cmd := exec.Command(vmupBinary, "cp", "web:data", "out")
	cmd.Dir, cmd.Env = w.dir, w.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		tmps, _ := filepath.Glob(filepath.Join(w.dir, "out", ".vmup-cp-*", "data", "f"))
		if len(tmps) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy never started\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(signalDeadline):
		t.Fatalf("vmup cp did not end within %s of SIGINT\n%s", signalDeadline, stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != exitSIGINT {
		t.Errorf("exit %d, want 130\n%s", code, stderr.String())
	}
	if names := dirNames(t, filepath.Join(w.dir, "out")); len(names) != 0 {
		t.Errorf("out holds %q after the interrupted copy", names)
	}
}
