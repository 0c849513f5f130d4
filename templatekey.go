package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A provisioned template's key names what decides the guest a first boot
// makes (issue 17), so that two VMs of one key would be the same guest but
// for what is each VM's own.
//
// In the key:
//   - the image's content: the sha256 of the image file's bytes, the hash
//     base volumes are named by (vmup-base-<its first 16 digits>);
//   - the domain type, resolved (kvm or qemu): the CPU the guest sees
//     (host-passthrough under KVM), and the memory a template keeps;
//   - cpus, memory, disk (cloud-init grows the root filesystem to the
//     disk's size), firmware (bios or uefi), and the boot settings: the
//     kernel's and initrd's content, never their paths, and the cmdline;
//   - the network, nat or user: the NIC the guest's network config was
//     rendered for, and the template's kind (on nat its disk alone, which
//     clones boot; on user its memory too);
//   - the login user;
//   - the cloud-init data vmup writes (seedKeyData): meta-data and
//     user-data as they are for every VM, with placeholders for what is
//     the VM's own;
//   - seedVersion (seed.go);
//   - when a playbook runs in the first boot (one is given and not
//     --no-provision): its file's name and content (a symlink to it is
//     followed: it names the playbook), the tree of its directory
//     (playbookTree), the arguments after `--` verbatim (a path in them as
//     written), and the content of each file an `-e @FILE` among them names;
//   - the VM's groups in an environment, in any order: they choose the
//     group_vars that apply.
//
// Out of it: the VM's name (hostname, local-hostname, inventory host), its
// cloud-init instance-id, its login key and host key (each VM's own), its
// forwards and SSH port, --restrict-network, connect URI, pool,
// the image's path or URL and its --image-sha256 pin (its content is in),
// the kernel's and initrd's paths, timeouts, --cloud-init-errors, --detach
// and the like. Also out, as nothing vmup can see whole: what the playbook
// reads beyond its directory (roles_path, collections, a role at ../,
// ansible.cfg, ANSIBLE_* variables), the host's ansible version, and files
// --vault-password-file and the like name; in an environment, the other
// VMs its playbook sees. A playbook that reads the name of its inventory
// host (inventory_hostname, host_vars/NAME.yml: every file there is in the
// key, but the name that picks one is not) makes the guest of the VM that
// made the template: the name is the VM's own by the contract.
//
// The key is the hex SHA-256 of a canonical form: templateKeyFormat, then
// each field in templateKey's fixed order, each its name, the count of its
// values and the values, every string prefixed by its length (8 bytes, big
// endian). Lists are written in their given order, but for groups, sorted,
// and the tree, sorted by path; no map is ever iterated.

// templateKeyFormat begins the canonical form: a change to what the key
// covers, or how it is written, makes it /2.
const templateKeyFormat = "vmup-template-key/2"

// The playbook's directory is hashed whole: beyond these it is refused, as
// one that is not the playbook's own (a home directory, say). (Variables
// for the tests only.)
var (
	maxKeyTreeFiles       = 10000 // files, directories, links
	maxKeyTreeBytes int64 = 256 << 20
)

// keyTreeSkipped are names never in a playbook's tree: version control's
// own (which every fetch changes) and Python's bytecode cache (which a
// run of the playbook's own plugins writes).
var keyTreeSkipped = []string{".git", ".hg", ".svn", "__pycache__"}

// templateKeyInput is what a template's key is made from.
type templateKeyInput struct {
	ImageSHA256              string // the image file's sha256, hex (BaseImage.SHA256)
	DomainType               string // kvm or qemu: resolved, never auto
	CPUs, MemoryMiB, DiskGiB int
	Firmware                 string // bios or uefi
	// Network is nat or user: the NIC the guest's network config was made
	// for, and the template's kind (nat: its disk alone, clones boot).
	Network            string
	Kernel, Initrd     string // paths, "" for none: their content is in the key
	Cmdline            string
	User               string
	MetaData, UserData []byte // seedKeyData(User)
	SeedVersion        int
	Playbook           string   // path, "" when no playbook runs in the first boot
	PlaybookArgs       []string // after `--`, verbatim
	Groups             []string
	// Exclude are paths left out of the playbook's tree: vmup's own config
	// file and results directory, which may sit beside the playbook.
	Exclude []string
}

// templateKeyInputFor gathers the key's input from a VM's options, the
// sha256 of its image file, and its domain type once auto is resolved.
func templateKeyInputFor(o *Options, imageSHA256, domainType string) templateKeyInput {
	meta, user := seedKeyData(o.User)
	in := templateKeyInput{
		ImageSHA256: imageSHA256, DomainType: domainType,
		CPUs: o.CPUs, MemoryMiB: o.MemoryMiB, DiskGiB: o.DiskGiB, Firmware: o.Firmware, Network: o.Network,
		Kernel: absPath(o.Kernel), Initrd: absPath(o.Initrd), Cmdline: o.Cmdline,
		User: o.User, MetaData: meta, UserData: user, SeedVersion: seedVersion,
		Groups: slices.Clone(o.Groups),
	}
	if o.Playbook != "" && !o.NoProvision { // as provision (vm.go) decides
		in.Playbook, in.PlaybookArgs = absPath(o.Playbook), slices.Clone(o.PlaybookArgs)
		in.Exclude = []string{absPath(configFile)}
		if o.Results != "" {
			in.Exclude = append(in.Exclude, absPath(o.Results))
		}
	}
	return in
}

// seedKeyData is the seed's meta-data and user-data as writeSeed makes
// them, with placeholders for what is each VM's own: its name (hostname,
// local-hostname), instance-id, login key and host key.
func seedKeyData(user string) (meta, userdata []byte) {
	host := SSHKey{Public: "HOST-PUBLIC-KEY", Private: []byte("HOST-PRIVATE-KEY")}
	return metaData("NAME", "INSTANCE-ID"), userData("NAME", user, "LOGIN-PUBLIC-KEY", host)
}

var sha256HexRE = lazyRE(`^[0-9a-f]{64}$`)

// templateKey returns the key of the template in would make: 64 hex digits.
func templateKey(in templateKeyInput) (string, error) {
	image := strings.ToLower(in.ImageSHA256)
	if !sha256HexRE.MatchString(image) {
		return "", fmt.Errorf("template key: the image's hash %q is no sha256", in.ImageSHA256)
	}
	if in.DomainType != "kvm" && in.DomainType != "qemu" {
		return "", fmt.Errorf("template key: domain type %q: want kvm or qemu", in.DomainType)
	}
	kernel, err := optionalDigest(in.Kernel)
	if err != nil {
		return "", err
	}
	initrd, err := optionalDigest(in.Initrd)
	if err != nil {
		return "", err
	}
	w := keyWriter{sha256.New()}
	w.field("format", templateKeyFormat)
	w.field("image", image)
	w.field("domain-type", in.DomainType)
	w.field("cpus", strconv.Itoa(in.CPUs))
	w.field("memory-mib", strconv.Itoa(in.MemoryMiB))
	w.field("disk-gib", strconv.Itoa(in.DiskGiB))
	w.field("firmware", in.Firmware)
	w.field("network", in.Network)
	w.field("kernel", kernel...)
	w.field("initrd", initrd...)
	w.field("cmdline", in.Cmdline)
	w.field("user", in.User)
	w.field("meta-data", string(in.MetaData))
	w.field("user-data", string(in.UserData))
	w.field("seed-version", strconv.Itoa(in.SeedVersion))
	w.field("groups", slices.Sorted(slices.Values(in.Groups))...)
	if err := w.playbook(in); err != nil {
		return "", err
	}
	return hex.EncodeToString(w.h.Sum(nil)), nil
}

// keyWriter writes the key's canonical form into its hash.
type keyWriter struct{ h hash.Hash }

func (w keyWriter) str(s string) {
	w.h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(s))))
	io.WriteString(w.h, s)
}

func (w keyWriter) field(name string, values ...string) {
	w.str(name)
	w.h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(values))))
	for _, v := range values {
		w.str(v)
	}
}

// playbook writes the playbook's fields: none when no playbook runs.
func (w keyWriter) playbook(in templateKeyInput) error {
	if in.Playbook == "" {
		w.field("playbook")
		return nil
	}
	path := absPath(in.Playbook)
	sum, err := fileDigest(path, true)
	if err != nil {
		return err
	}
	w.field("playbook", filepath.Base(path), sum)
	w.field("playbook-args", in.PlaybookArgs...)
	for _, f := range extraVarsFiles(in.PlaybookArgs) {
		sum, err := fileDigest(absPath(f), true)
		if err != nil {
			return fmt.Errorf("extra vars file %s (-e @%s after --): %w", f, f, err)
		}
		w.field("extra-vars-file", sum) // its path is in the arguments

	}
	tree, err := playbookTree(filepath.Dir(path), in.Exclude)
	if err != nil {
		return err
	}
	w.field("tree", strconv.Itoa(len(tree)))
	for _, e := range tree {
		w.field("entry", e.path, e.kind, e.value)
	}
	return nil
}

// extraVarsFiles are the files ansible-playbook's arguments name as
// `-e @FILE`, `-e@FILE`, `--extra-vars @FILE` or `--extra-vars=@FILE`,
// as written (ansible reads a relative one from its working directory,
// which is vmup's).
func extraVarsFiles(args []string) []string {
	var files []string
	for i := 0; i < len(args); i++ {
		var v string
		switch a := args[i]; {
		case a == "-e" || a == "--extra-vars":
			if i+1 < len(args) {
				i++
				v = args[i]
			}
		case strings.HasPrefix(a, "--extra-vars="):
			v = strings.TrimPrefix(a, "--extra-vars=")
		case strings.HasPrefix(a, "-e") && !strings.HasPrefix(a, "--"):
			v = a[2:]
		}
		if f, ok := strings.CutPrefix(v, "@"); ok && f != "" {
			files = append(files, f)
		}
	}
	return files
}

// treeEntry is one file, link or other non-directory of a playbook's tree.
type treeEntry struct {
	path  string // relative to the tree's root, with slashes
	kind  string // file, exec (a regular file with an x bit), symlink, or "other" and its type
	value string // a file's sha256, a link's target
}

// playbookTree lists every entry under dir, which ansible may read by
// relative paths (roles/, group_vars/, host_vars/, templates, files…),
// sorted by path: a file by its content and whether it is executable (as
// git keeps it: the rest of its mode follows the umask), a symbolic link
// by its target's text, never followed (what it points to outside the
// tree is not in the key), anything else by its type alone. Names of
// keyTreeSkipped and the paths of exclude are left out.
func playbookTree(dir string, exclude []string) ([]treeEntry, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("template key: %w", err)
	}
	skip := map[string]bool{}
	for _, p := range exclude {
		skip[resolvedPath(p)] = true
	}
	var (
		tree []treeEntry
		n    int
		size int64
	)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("template key: %w", err)
		}
		if p == root {
			return nil
		}
		if skip[p] || slices.Contains(keyTreeSkipped, d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if n++; n > maxKeyTreeFiles {
			return treeTooBig(dir, fmt.Sprintf("more than %d files", maxKeyTreeFiles))
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("template key: %w", err)
		}
		rel, _ := filepath.Rel(root, p)
		e := treeEntry{path: filepath.ToSlash(rel)}
		switch m := info.Mode(); {
		case m.IsRegular():
			if size += info.Size(); size > maxKeyTreeBytes {
				return treeTooBig(dir, fmt.Sprintf("more than %d MiB of files", maxKeyTreeBytes>>20))
			}
			e.kind = "file"
			if m&0o111 != 0 {
				e.kind = "exec"
			}
		case m&fs.ModeSymlink != 0:
			e.kind = "symlink"
			if e.value, err = os.Readlink(p); err != nil {
				return fmt.Errorf("template key: %w", err)
			}
		default:
			e.kind = "other " + m.Type().String()
		}
		tree = append(tree, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Read only once the walk found the tree within bounds.
	for i, e := range tree {
		if e.kind == "file" || e.kind == "exec" {
			if tree[i].value, err = fileDigest(filepath.Join(root, filepath.FromSlash(e.path)), false); err != nil {
				return nil, err
			}
		}
	}
	slices.SortFunc(tree, func(a, b treeEntry) int { return strings.Compare(a.path, b.path) })
	return tree, nil
}

func treeTooBig(dir, what string) error {
	return usagef("put the playbook, its roles and vars in a directory of their own",
		"the playbook's directory %s holds %s: a template's key covers every file in it", dir, what)
}

// resolvedPath is p absolute with its symbolic links resolved, as far as it exists.
func resolvedPath(p string) string {
	p = absPath(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	if r, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
		return filepath.Join(r, filepath.Base(p))
	}
	return filepath.Clean(p)
}

// optionalDigest is the file's sha256 as a field's one value, none for no file.
func optionalDigest(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	sum, err := fileDigest(absPath(path), true)
	if err != nil {
		return nil, err
	}
	return []string{sum}, nil
}

// fileDigest is a regular file's sha256. It never waits on a FIFO, and
// follows a symbolic link only when told.
func fileDigest(path string, follow bool) (string, error) {
	flags := os.O_RDONLY | unix.O_NONBLOCK
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return "", fmt.Errorf("template key: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return "", fmt.Errorf("template key: %s is not a regular file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("template key: %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
