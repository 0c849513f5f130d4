package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Endpoint is where the guest's sshd is reached from this host.
type Endpoint struct {
	Host string
	Port int
}

func (e Endpoint) String() string { return fmt.Sprintf("%s:%d", e.Host, e.Port) }

// SSH builds every ssh command vmup runs for one VM, all pinned to the VM's
// own host key (never StrictHostKeyChecking=no) and sharing one ControlMaster.
type SSH struct {
	r     Runner
	prog  string
	name  string
	user  string
	paths Paths
	ep    Endpoint
	// control is the ControlMaster's socket; "" means none (ssh connects by itself).
	control string
	// keyFinal: the guest's sshd serves its pinned host key already (a
	// clone after its identity), so another key ends WaitMaster at once.
	keyFinal bool
	// restored: the guest runs from a memory state, its sshd answers at
	// once: WaitMaster sends no banner probes to it.
	restored bool
}

func newSSH(r Runner, name, user string, paths Paths, ep Endpoint) *SSH {
	return &SSH{r: r, prog: programFor("VMUP_SSH", "ssh"), name: name, user: user, paths: paths, ep: ep,
		control: controlPath(paths, nil)}
}

func hostKeyAlias(name string) string { return "vmup-" + name }

// maxSocketPath keeps a socket's path within the kernel's 108 bytes, with
// room for the ".XXXXXXXXXXXXXXXX" that ssh's master appends while it binds.
const maxSocketPath = 90

// controlPath says where the ControlMaster's socket is: in the VM's state dir,
// or, when that path is too long for a socket, in the private dir the journal
// names, if it passes validControlDir. "" means no master to use.
func controlPath(p Paths, j *Journal) string {
	if sock := p.ControlSocket(); len(sock) < maxSocketPath {
		return sock
	}
	if j != nil && validControlDir(j.ControlDir) == nil {
		return filepath.Join(j.ControlDir, "ssh.sock")
	}
	return ""
}

// newControlDir makes a private dir for the socket with a random name: a
// predictable name in the world-writable temp dir is another user's to take.
func newControlDir() (string, error) {
	dir, err := os.MkdirTemp(os.TempDir(), "vmup-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.Remove(dir)
		return "", err
	}
	return dir, nil
}

// validControlDir accepts only what newControlDir makes: a vmup-* dir right
// in the temp dir, a real dir (no symlink), this user's, mode 0700. A journal
// naming anything else is not followed, for ssh nor for removal.
func validControlDir(dir string) error {
	tmp := filepath.Clean(os.TempDir())
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || filepath.Dir(dir) != tmp ||
		!strings.HasPrefix(filepath.Base(dir), "vmup-") {
		return fmt.Errorf("control dir %q is not a vmup-* dir in %s", dir, tmp)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.IsDir():
		return fmt.Errorf("control dir %s is no directory", dir)
	case !ok || int(sys.Uid) != os.Getuid():
		return fmt.Errorf("control dir %s is not owned by uid %d", dir, os.Getuid())
	case st.Mode().Perm() != 0o700:
		return fmt.Errorf("control dir %s has mode %v, not 0700", dir, st.Mode().Perm())
	}
	return nil
}

// pinOptions make a connection vmup's: the VM's key alone, and the guest's
// host key pinned under the VM's alias. `vmup inventory` hands them to ansible.
func (s *SSH) pinOptions() []string {
	return []string{
		"-o", "IdentitiesOnly=yes", "-o", "IdentityFile=" + s.paths.Key(),
		"-o", "UserKnownHostsFile=" + s.paths.KnownHosts(), "-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + hostKeyAlias(s.name),
	}
}

// Options are the -o settings every vmup ssh (and ansible) connection uses.
func (s *SSH) Options() []string {
	opts := s.pinOptions()
	if s.control != "" {
		opts = append(opts, "-o", "ControlPath="+s.control)
	}
	return append(opts,
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
		"-o", "LogLevel=ERROR",
	)
}

func (s *SSH) target() []string {
	return []string{"-p", strconv.Itoa(s.ep.Port), s.user + "@" + s.ep.Host}
}

// argv is an ssh command that uses a running master if there is one.
func (s *SSH) argv(extra ...string) []string {
	args := append([]string{s.prog, "-F", "none"}, s.Options()...)
	args = append(args, "-o", "ControlMaster=no")
	args = append(args, extra...)
	return append(args, s.target()...)
}

// Master runs the ControlMaster until ctx ends. started is closed once the
// ssh process runs; the returned error says why it ended. connectTimeout,
// when not 0, bounds its connect and banner exchange in place of the
// options' ConnectTimeout (ssh takes an option's first value).
func (s *SSH) Master(ctx context.Context, started chan<- struct{}, connectTimeout time.Duration) error {
	args := []string{s.prog, "-F", "none"}
	if connectTimeout > 0 {
		args = append(args, "-o", fmt.Sprintf("ConnectTimeout=%d", int(connectTimeout.Seconds())))
	}
	args = append(args, s.Options()...)
	args = append(args, "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N")
	args = append(args, s.target()...)
	_, err := s.r.Run(ctx, Cmd{Args: args, Started: func(int) { close(started) }})
	return err
}

func (s *SSH) Check(ctx context.Context) error {
	_, err := s.r.Run(ctx, Cmd{Args: s.argv("-O", "check")})
	return err
}

// Exit closes the master; with none running it is a no-op.
func (s *SSH) Exit(ctx context.Context) {
	if s.control == "" {
		return
	}
	if _, err := os.Stat(s.control); err != nil {
		return
	}
	s.r.Run(ctx, Cmd{Args: s.argv("-O", "exit")})
}

// Exec runs a command in the guest (argv joined by ssh, as ssh always does).
func (s *SSH) Exec(ctx context.Context, command ...string) (Result, error) {
	return s.r.Run(ctx, Cmd{Args: append(s.argv(), append([]string{"--"}, command...)...)})
}

// ExecWith runs a command in the guest with the caller's stdin and stdout
// (a copy's tar stream, a runner's script); stderr is captured.
func (s *SSH) ExecWith(ctx context.Context, stdin io.Reader, stdout io.Writer, command ...string) (Result, error) {
	return s.r.Run(ctx, Cmd{Args: append(s.argv(), append([]string{"--"}, command...)...), Stdin: stdin, Stdout: stdout})
}

// WaitMaster keeps starting the ControlMaster until it holds a connection or
// ctx ends. The master then runs until masterCtx ends; its result goes to done.
func (s *SSH) WaitMaster(ctx, masterCtx context.Context, poll time.Duration, alive func(context.Context) error) (done <-chan error, err error) {
	// Short tries, a quarter second apart, as by hand: a booting guest
	// behind QEMU's user network holds a connection for seconds after its
	// sshd listens (the SYN it missed is sent again late). Once a banner
	// was seen, tries wait the whole ConnectTimeout: an sshd is there, too
	// busy to answer within two seconds. A long try before that would wait
	// out the late SYN too, seconds after sshd listens.
	bannerCtx, stopBanner := context.WithCancel(ctx)
	defer stopBanner()
	var banner atomic.Bool
	if !s.restored { // a restored guest's sshd answers at once
		go watchBanner(bannerCtx, s.ep, &banner)
	}
	first := true
	for {
		timeout := waitConnectTimeout
		if banner.Load() {
			timeout = 0
		}
		started := make(chan struct{})
		ended := make(chan error, 1)
		go func() { ended <- s.Master(masterCtx, started, timeout) }()
		select {
		case <-started:
		case err := <-ended:
			return nil, err
		}
		// The first try asks at once (a master that was there already);
		// later ones wait for the socket, or masterCheckEvery.
		checked := time.Now()
		if first {
			checked, first = time.Time{}, false
		}
		for {
			select {
			case err := <-ended:
				if s.keyFinal && hostKeyRefused(err) {
					return nil, errors.New("the guest's sshd serves another host key than the one vmup pinned")
				}
				if s.keyFinal && loginRefused(err) {
					return nil, errors.New("the guest's sshd refuses the login key")
				}
				goto retry // sshd not up yet: the master gave up
			case <-ctx.Done():
				return nil, ctx.Err()
			default:
			}
			// ssh makes its socket once logged in: a stat is cheap, an `ssh -O
			// check` is a process (20 ms of host CPU) that takes a core from
			// the guest being waited for. It still asks now and then: a
			// socket made elsewhere.
			since := time.Since(checked)
			if since >= masterCheckEvery || since >= 100*time.Millisecond && socketMade(s.control) {
				checked = time.Now()
				if s.Check(ctx) == nil {
					return ended, nil
				}
			}
			if err := sleepCtx(ctx, min(poll, 20*time.Millisecond)); err != nil {
				return nil, err
			}
		}
	retry:
		if err := alive(ctx); err != nil {
			return nil, err
		}
		if err := sleepCtx(ctx, min(poll, 250*time.Millisecond)); err != nil {
			return nil, err
		}
	}
}

// masterCheckEvery is how often WaitMaster asks a master without a socket
// yet. At 0.5 s, and at each try's start, a re-up's 35 s boot ran 73-82.
const masterCheckEvery = 5 * time.Second

// socketMade: path is a socket (an ssh master's, once it logged in).
func socketMade(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// waitConnectTimeout bounds most of WaitMaster's tries (see there).
const waitConnectTimeout = 2 * time.Second

// watchBanner sets seen once something at ep sends an SSH banner. Its own
// connections, one a second and at most two at once, each waiting up to
// 10 s, so a late one does not hold up the next (each costs the guest an
// unauthenticated connection).
func watchBanner(ctx context.Context, ep Endpoint, seen *atomic.Bool) {
	addr := net.JoinHostPort(ep.Host, strconv.Itoa(ep.Port))
	slots := make(chan struct{}, 2)
	for !seen.Load() {
		select {
		case slots <- struct{}{}:
			go func() {
				if sshBanner(ctx, addr, 10*time.Second) {
					seen.Store(true)
				}
				<-slots
			}()
		default:
		}
		if sleepCtx(ctx, time.Second) != nil {
			return
		}
	}
}

// sshBanner says whether addr answers with an SSH identification line
// within d (RFC 4253: lines before it may come first).
func sshBanner(ctx context.Context, addr string, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReaderSize(c, 256)
	for range 20 {
		line, err := r.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte("SSH-")) {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// loginRefusedRE is ssh's line for a server that took no authentication
// offered ("user@host: Permission denied (publickey)."), not a local
// connect's "Permission denied".
var loginRefusedRE = lazyRE(`(?m)^\S+@\S+: Permission denied \(`)

// loginRefused: the host key passed, then the server refused the login.
func loginRefused(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && loginRefusedRE.MatchString(ee.Stderr)
}

// hostKeyRefused: ssh gave up because the host key is not the pinned one.
func hostKeyRefused(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "Host key verification failed")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// knownHostsLine pins the guest's host key under the VM's alias.
func knownHostsLine(name, hostPublic string) string {
	f := strings.Fields(hostPublic)
	return hostKeyAlias(name) + " " + f[0] + " " + f[1] + "\n"
}

// sshConfig is what `vmup ssh-config` prints, for ssh -F or ~/.ssh/config.
func (s *SSH) Config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Host %s\n", s.name)
	fmt.Fprintf(&b, "  HostName %s\n  Port %d\n  User %s\n", s.ep.Host, s.ep.Port, s.user)
	opts := s.Options()
	for i := 1; i < len(opts); i += 2 {
		k, v, _ := strings.Cut(opts[i], "=")
		if k == "BatchMode" || k == "LogLevel" {
			continue
		}
		// A config is kept: a socket in the temp dir has a name another user
		// may take once this up ended and removed its dir.
		if k == "ControlPath" && v != s.paths.ControlSocket() {
			continue
		}
		fmt.Fprintf(&b, "  %s %s\n", k, quoteSSHConfig(v))
	}
	return b.String()
}

func quoteSSHConfig(v string) string {
	if strings.ContainsAny(v, " \t\"") {
		return `"` + strings.ReplaceAll(v, `"`, ``) + `"`
	}
	return v
}

// ProveHostKey connects to the guest's sshd and authenticates nothing: ssh
// checks the host key served against the pinned one, then is refused. A
// proof of the key without a login's cost (an emulated guest takes most of a
// second for a session). An sshd that lets in without authentication passes
// too: ssh checked the key first.
func (s *SSH) ProveHostKey(ctx context.Context) error {
	args := append([]string{s.prog, "-F", "none"}, s.pinOptions()...)
	args = append(args, "-o", "ControlPath=none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=no",
		"-o", "KbdInteractiveAuthentication=no", "-o", "HostbasedAuthentication=no")
	args = append(append(args, s.target()...), "--", "true")
	for tries := 1; ; tries++ {
		// ConnectTimeout ends at the banner: a key exchange that stalls ends here.
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := s.r.Run(tctx, Cmd{Args: args})
		cancel()
		var ee *ExitError
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case hostKeyRefused(err):
			return errors.New("the guest's sshd serves another host key than the one vmup pinned")
		case loginRefused(err):
			return nil
		case !errors.As(err, &ee) || tries == 5:
			return fmt.Errorf("the host key the guest's sshd serves is not known: %w", err)
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
}
