package main

import (
	"os"
	"strings"
	"testing"
)

const templateXMLSample = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>a</name>
  <uuid>eb9fa682-9f55-44dc-a5e9-860ed169f1b5</uuid>
  <os>
    <kernel>/pool/a-kernel</kernel>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/pool/a.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/pool/base.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/pool/a-seed.iso'/>
      <backingStore/>
    </disk>
    <serial type='pty'>
      <log file='/home/vms/a/console.log' append='on'/>
    </serial>
  </devices>
  <qemu:commandline>
    <qemu:arg value='user,id=vmupnet,hostfwd=tcp:127.0.0.1:40000-:22'/>
  </qemu:commandline>
</domain>
`

func sampleRename() cloneRename {
	return cloneRename{OldName: "a", NewName: "b", NewUUID: "538b4734-9b1b-469c-b44f-c0c821609416",
		Values: [][2]string{
			{"/pool/a.qcow2", "/pool/b.qcow2"}, {"/pool/a-seed.iso", "/pool/b-seed-boot.iso"},
			{"/pool/a-kernel", "/pool/b-kernel"}, {"/home/vms/a/console.log", "/home/vms/b/console.log"},
			{"user,id=vmupnet,hostfwd=tcp:127.0.0.1:40000-:22", "user,id=vmupnet,hostfwd=tcp:127.0.0.1:40001-:22"},
		}}
}

func TestCloneDomainXML(t *testing.T) {
	got, err := cloneDomainXML([]byte(templateXMLSample), sampleRename())
	if err != nil {
		t.Fatal(err)
	}
	s := string(got)
	for _, want := range []string{"<name>b</name>", "<uuid>538b4734-9b1b-469c-b44f-c0c821609416</uuid>",
		"<kernel>/pool/b-kernel</kernel>", "<source file='/pool/b.qcow2'/>", "<source file='/pool/b-seed-boot.iso'/>",
		"<log file='/home/vms/b/console.log' append='on'/>", "127.0.0.1:40001-:22", "<target dev='vda' bus='virtio'/>"} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %s in\n%s", want, s)
		}
	}
	for _, gone := range []string{"backingStore", "base.qcow2", "/a.qcow2", "eb9fa682", "40000", "<name>a</name>"} {
		if strings.Contains(s, gone) {
			t.Errorf("%s left in\n%s", gone, s)
		}
	}
	// Nothing else moved: the lines but the renamed ones are the template's.
	if n, m := strings.Count(s, "\n"), strings.Count(templateXMLSample, "\n")-6; n != m {
		t.Errorf("%d lines, want %d:\n%s", n, m, s)
	}
}

func TestCloneDomainXMLRefuses(t *testing.T) {
	r := sampleRename()
	r.Values = append(r.Values, [2]string{"/home/vms/a", "/home/vms/b"}) // a path vmup did not expect elsewhere
	if _, err := cloneDomainXML([]byte(strings.Replace(templateXMLSample, "</devices>", "<filesystem><source dir='/home/vms/a/x'/></filesystem></devices>", 1)), r); err == nil {
		t.Error("an unreplaced old path was accepted")
	}
	r = sampleRename()
	r.OldName = "c"
	if _, err := cloneDomainXML([]byte(templateXMLSample), r); err == nil {
		t.Error("XML of another VM accepted")
	}
	r = sampleRename()
	r.NewUUID = "not-a-uuid"
	if _, err := cloneDomainXML([]byte(templateXMLSample), r); err == nil {
		t.Error("a bad UUID accepted")
	}
	if _, err := cloneDomainXML([]byte(strings.Replace(templateXMLSample, "<backingStore/>\n    </disk>", "<backingStore>", 1)), sampleRename()); err == nil {
		t.Error("an unterminated backingStore accepted")
	}
}

// The XML of a real save (virsh save-image-dumpxml), when one is at hand.
func TestCloneDomainXMLRealSave(t *testing.T) {
	src, err := os.ReadFile("testdata/template-save.xml")
	if err != nil {
		t.Skip(err)
	}
	r := cloneRename{OldName: "ta", NewName: "tb", NewUUID: "538b4734-9b1b-469c-b44f-c0c821609416",
		Values: [][2]string{{"/var/lib/libvirt/images/vmup/ta.qcow2", "/var/lib/libvirt/images/vmup/tb.qcow2"},
			{"/tmp/fh/vms/ta/console.log", "/tmp/fh/vms/tb/console.log"}}}
	if _, err := cloneDomainXML(src, r); err != nil {
		t.Fatal(err)
	}
}
