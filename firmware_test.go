package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --firmware: bios or uefi, and uefi only for a disk that boots itself.
func TestFirmwareFlagChecked(t *testing.T) {
	dir := t.TempDir()
	image, kernel := filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "vmlinuz")
	os.WriteFile(image, []byte("x"), 0o644)
	os.WriteFile(kernel, []byte("x"), 0o644)
	for _, c := range []struct {
		args []string
		want string // "" for accepted
	}{
		{[]string{"--firmware", "uefi"}, ""},
		{[]string{"--firmware", "bios", "--kernel", kernel}, ""},
		{[]string{"--firmware", "efi"}, `--firmware "efi": want bios or uefi`},
		{[]string{"--firmware", "uefi", "--kernel", kernel}, "--firmware uefi with --kernel"},
	} {
		o, _, err := parseCommand("up", append([]string{"v1", "--image", image}, c.args...))
		if err == nil {
			err = validateUp(o)
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		case c.want != "":
			if _, ok := err.(*usageError); !ok {
				t.Errorf("%v: %T is no usage error (exit 2)", c.args, err)
			}
		}
	}
}

// UEFI: libvirt's firmware auto-selection with Secure Boot pinned off; BIOS
// (and direct kernel boot) name no firmware.
func TestUEFIDomainXML(t *testing.T) {
	spec := DomainSpec{Name: "v1", Type: "qemu", CPUs: 1, MemoryMiB: 512, Disk: "/d.qcow2", Network: "user", SSHPort: 2222, ConsoleLog: "/c"}
	bios, _ := domainXMLFor(spec)
	spec.UEFI = true
	uefi, _ := domainXMLFor(spec)
	for _, want := range []string{`<os firmware="efi">`, `<feature enabled="no" name="secure-boot">`, `<boot dev="hd">`} {
		if !strings.Contains(string(uefi), want) {
			t.Errorf("UEFI XML lacks %s:\n%s", want, uefi)
		}
	}
	if strings.Contains(string(bios), "firmware") {
		t.Errorf("BIOS XML names a firmware:\n%s", bios)
	}
}

// The firmware is journalled with the VM and used for every definition.
func TestUEFIRecordedAndDefined(t *testing.T) {
	h := newHarness(t)
	if code := h.wait(h.up(h.upArgs("-d", "--firmware", "uefi")...)); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if j := h.journal(); j.Firmware != "uefi" {
		t.Errorf("journal firmware %q", j.Firmware)
	}
	if xml := h.fake.world.XML["v1"]; !strings.Contains(xml, `<os firmware="efi">`) {
		t.Errorf("the domain is not defined for UEFI:\n%s", xml)
	}
}
