package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The default connection is libvirt's own, resolved as virsh does.
func TestDefaultURIAsVirshResolvesIt(t *testing.T) {
	config := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", config)
	t.Setenv("LIBVIRT_DEFAULT_URI", "")
	if got := defaultURI(1000); got != "qemu:///session" {
		t.Errorf("a user without settings: %s, want qemu:///session", got)
	}
	if got := defaultURI(0); got != "qemu:///system" && got != "test:///default" {
		t.Errorf("root without settings: %s, want qemu:///system (or /etc/libvirt/libvirt.conf's)", got)
	}
	os.MkdirAll(filepath.Join(config, "libvirt"), 0o700)
	os.WriteFile(filepath.Join(config, "libvirt", "libvirt.conf"),
		[]byte("# uri_default = \"qemu:///nope\"\n  uri_default = \"qemu:///system\"\n"), 0o600)
	if got := defaultURI(1000); got != "qemu:///system" {
		t.Errorf("a user whose libvirt.conf says qemu:///system: %s", got)
	}
	t.Setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://h/system")
	if got := defaultURI(1000); got != "qemu+ssh://h/system" {
		t.Errorf("with $LIBVIRT_DEFAULT_URI: %s", got)
	}
}
