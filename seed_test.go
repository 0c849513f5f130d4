package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/google/go-cmp/cmp"
)

// readJoliet reads the root directory of an ISO's Joliet tree back: the names
// Linux shows and the files' contents.
func readJoliet(t *testing.T, img []byte) (label string, files map[string]string) {
	t.Helper()
	svd := img[17*sector : 18*sector]
	if svd[0] != 2 || string(svd[1:6]) != "CD001" || string(svd[88:91]) != "%/E" {
		t.Fatalf("sector 17 is no Joliet descriptor: % x", svd[:8])
	}
	label = strings.TrimRight(fromUCS2(svd[40:72]), " ")
	root := svd[156:]
	extent := binary.LittleEndian.Uint32(root[2:])
	size := binary.LittleEndian.Uint32(root[10:])
	dir := img[extent*sector : extent*sector+size]
	files = map[string]string{}
	for off := 0; off < len(dir) && dir[off] != 0; off += int(dir[off]) {
		rec := dir[off:]
		nameLen := int(rec[32])
		name := rec[33 : 33+nameLen]
		if nameLen == 1 && (name[0] == 0 || name[0] == 1) {
			continue // . and ..
		}
		ext := binary.LittleEndian.Uint32(rec[2:])
		n := binary.LittleEndian.Uint32(rec[10:])
		if binary.BigEndian.Uint32(rec[6:]) != ext || binary.BigEndian.Uint32(rec[14:]) != n {
			t.Errorf("record %q: big- and little-endian fields differ", fromUCS2(name))
		}
		files[fromUCS2(name)] = string(img[ext*sector : ext*sector+n])
	}
	return label, files
}

func fromUCS2(b []byte) string {
	var u []uint16
	for i := 0; i+1 < len(b); i += 2 {
		u = append(u, binary.BigEndian.Uint16(b[i:]))
	}
	return string(utf16.Decode(u))
}

func TestSeedISO(t *testing.T) {
	want := map[string]string{"meta-data": "instance-id: x\n", "user-data": strings.Repeat("#cloud-config\n", 300)}
	img := buildISO("cidata", map[string][]byte{"meta-data": []byte(want["meta-data"]), "user-data": []byte(want["user-data"])})
	if len(img)%sector != 0 {
		t.Fatalf("image is %d bytes, not whole sectors", len(img))
	}
	pvd := img[16*sector:]
	if pvd[0] != 1 || string(pvd[1:6]) != "CD001" || strings.TrimRight(string(pvd[40:72]), " ") != "cidata" {
		t.Fatalf("primary volume descriptor: type %d id %q label %q", pvd[0], pvd[1:6], pvd[40:72])
	}
	if total := binary.LittleEndian.Uint32(pvd[80:]); int(total)*sector != len(img) {
		t.Errorf("volume space size %d sectors, image has %d", total, len(img)/sector)
	}
	label, files := readJoliet(t, img)
	if label != "cidata" {
		t.Errorf("Joliet label %q, want cidata", label)
	}
	if diff := cmp.Diff(want, files); diff != "" {
		t.Errorf("files mismatch (-want +got):\n%s", diff)
	}
	// Where the host can mount-check ISOs, let it read the file names too.
	if isoinfo, err := exec.LookPath("isoinfo"); err == nil {
		file := filepath.Join(t.TempDir(), "seed.iso")
		os.WriteFile(file, img, 0o600)
		out, err := exec.Command(isoinfo, "-J", "-f", "-i", file).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "/meta-data") || !strings.Contains(string(out), "/user-data") {
			t.Errorf("isoinfo -J -f: %v\n%s", err, out)
		}
	}
}

func TestUserDataPinsHostKeyAndUser(t *testing.T) {
	host, err := newSSHKey("host")
	if err != nil {
		t.Fatal(err)
	}
	ud := string(userData("web", "vmup", "ssh-ed25519 AAAAC3 vmup-web", host))
	for _, want := range []string{
		"#cloud-config\n", "  - name: vmup\n", `sudo: "ALL=(ALL) NOPASSWD:ALL"`, `- "ssh-ed25519 AAAAC3 vmup-web"`,
		"ssh_deletekeys: true\n", "ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n",
		"ssh_pwauth: false\n",
	} {
		if !strings.Contains(ud, want) {
			t.Errorf("user-data lacks %q:\n%s", want, ud)
		}
	}
	// cloud-init's schema wants at least one type there; with ssh_keys it generates none anyway.
	if strings.Contains(ud, "ssh_genkeytypes") {
		t.Errorf("user-data sets ssh_genkeytypes, which is either a schema error ([]) or makes keys vmup does not pin:\n%s", ud)
	}
}

// The schema of vmup's own user-data is cloud-init's to judge: run its
// validator where it is installed (the e2e suite checks it in the guest too).
func TestUserDataPassesCloudInitSchema(t *testing.T) {
	if _, err := exec.LookPath("cloud-init"); err != nil {
		t.Skip("cloud-init is not installed here; the e2e suite runs `cloud-init schema --system` in the guest")
	}
	host, err := newSSHKey("host")
	if err != nil {
		t.Fatal(err)
	}
	file := t.TempDir() + "/user-data"
	os.WriteFile(file, userData("web", "vmup", "ssh-ed25519 AAAAC3 vmup-web", host), 0o600)
	out, err := exec.Command("cloud-init", "schema", "--config-file", file).CombinedOutput()
	if err != nil {
		t.Errorf("cloud-init schema --config-file: %v\n%s", err, out)
	}
}

// The private key is a well-formed unencrypted OpenSSH key whose key pair matches.
func TestSSHKeyFormat(t *testing.T) {
	k, err := newSSHKey("c")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(k.Private)
	if block == nil || block.Type != "OPENSSH PRIVATE KEY" {
		t.Fatalf("not an OpenSSH PEM block: %q", k.Private)
	}
	b := block.Bytes
	if !bytes.HasPrefix(b, []byte("openssh-key-v1\x00")) {
		t.Fatal("no openssh-key-v1 magic")
	}
	b = b[len("openssh-key-v1\x00"):]
	next := func() []byte {
		n := binary.BigEndian.Uint32(b)
		v := b[4 : 4+n]
		b = b[4+n:]
		return v
	}
	if c, kdf := string(next()), string(next()); c != "none" || kdf != "none" {
		t.Fatalf("cipher %q kdf %q, want none", c, kdf)
	}
	next() // kdf options
	if n := binary.BigEndian.Uint32(b); n != 1 {
		t.Fatalf("%d keys", n)
	}
	b = b[4:]
	wirePub := next()
	priv := next()
	if len(b) != 0 {
		t.Errorf("%d trailing bytes", len(b))
	}
	if len(priv)%8 != 0 || !bytes.Equal(priv[0:4], priv[4:8]) {
		t.Errorf("private section: length %d, check ints % x", len(priv), priv[:8])
	}
	fields := strings.Fields(k.Public)
	decoded, _ := base64.StdEncoding.DecodeString(fields[1])
	if fields[0] != "ssh-ed25519" || !bytes.Equal(decoded, wirePub) {
		t.Errorf("public line %q does not match the private file's public key", k.Public)
	}
	rest := priv[8+len(wirePub):]
	seedAndPub := rest[4 : 4+64]
	key := ed25519.PrivateKey(seedAndPub)
	sig := ed25519.Sign(key, []byte("m"))
	if !ed25519.Verify(ed25519.PublicKey(wirePub[len(wirePub)-32:]), []byte("m"), sig) {
		t.Error("the private key does not sign for the public key")
	}
	if keygen, err := exec.LookPath("ssh-keygen"); err == nil {
		file := filepath.Join(t.TempDir(), "k")
		os.WriteFile(file, k.Private, 0o600)
		out, err := exec.Command(keygen, "-y", "-f", file).Output()
		if err != nil || !strings.HasPrefix(k.Public, strings.TrimSpace(string(out))) {
			t.Errorf("ssh-keygen -y: %v %q, want %q", err, out, k.Public)
		}
	}
}

func TestDomainXML(t *testing.T) {
	data, err := domainXMLFor(DomainSpec{Name: "web", Type: "qemu", CPUs: 2, MemoryMiB: 1024, Disk: "/p/web.qcow2",
		Seed: "/p/web-seed.iso", Network: "user", SSHPort: 2222, Restrict: true,
		Forwards: []Forward{{"127.0.0.1", 8080, 80}}, ConsoleLog: "/s/console.log"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{
		`<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">`,
		`<vmup:vm xmlns:vmup="` + metadataURI + `">`,
		`<qemu:arg value="user,id=vmupnet,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80"></qemu:arg>`,
		`<target dev="vdb" bus="virtio"></target>`, `<readonly></readonly>`,
		`<log file="/s/console.log" append="on"></log>`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, s)
		}
	}
}

func TestParseCommandAnyOrder(t *testing.T) {
	t.Chdir(t.TempDir())
	os.WriteFile(configFile, []byte(`{"name": "fromfile", "memory": 4096, "forward": ["9090:90"], "boot-timeout": "2m"}`), 0o600)
	o, _, err := parseCommand("up", []string{"--cpus", "4", "web", "--forward", "8080:80", "-d", "--", "-e", "x=1"})
	if err != nil {
		t.Fatal(err)
	}
	got := []any{o.Name, o.CPUs, o.MemoryMiB, o.Forwards, o.Detach, o.PlaybookArgs, o.BootTimeout.String()}
	want := []any{"web", 4, 4096, []Forward{{"127.0.0.1", 8080, 80}}, true, []string{"-e", "x=1"}, "2m0s"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("options mismatch (-want +got):\n%s", diff)
	}
	os.WriteFile(configFile, []byte(`{"memroy": 1}`), 0o600)
	if _, _, err := parseCommand("up", nil); err == nil || !strings.Contains(err.Error(), "memroy") {
		t.Errorf("a misspelt vmup.json field: err %v", err)
	}
}
