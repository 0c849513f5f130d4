package main

import (
	"encoding/xml"
	"fmt"
	"strings"
)

// DomainSpec is what the domain XML is built from.
type DomainSpec struct {
	Name, UUID, Type        string // Type: kvm or qemu; UUID "" lets libvirt choose
	CPUs, MemoryMiB         int
	Disk, Seed              string // volume paths; Seed "" once the first boot completed
	Kernel, Initrd, Cmdline string
	Network                 string // nat or user
	SSHPort                 int    // user network: host port forwarded to the guest's 22
	Forwards                []Forward
	Restrict                bool
	ConsoleLog              string
	UEFI                    bool // boot the disk through UEFI firmware (OVMF), not BIOS
}

// The structs below are the part of libvirt's domain schema vmup uses.
// "qemu:" names are written literally, with the namespace declared on <domain>.
type domainXML struct {
	XMLName     xml.Name     `xml:"domain"`
	Type        string       `xml:"type,attr"`
	QemuNS      string       `xml:"xmlns:qemu,attr,omitempty"`
	Name        string       `xml:"name"`
	UUID        string       `xml:"uuid,omitempty"`
	Metadata    metadataXML  `xml:"metadata"`
	Memory      memoryXML    `xml:"memory"`
	VCPU        int          `xml:"vcpu"`
	OS          osXML        `xml:"os"`
	Features    featuresXML  `xml:"features"`
	CPU         *cpuXML      `xml:"cpu,omitempty"`
	OnPoweroff  string       `xml:"on_poweroff"`
	OnReboot    string       `xml:"on_reboot"`
	OnCrash     string       `xml:"on_crash"`
	Devices     devicesXML   `xml:"devices"`
	CommandLine *qemuCmdline `xml:"qemu:commandline,omitempty"`
}

type metadataXML struct {
	VM vmupMeta `xml:"vmup:vm"`
}

type vmupMeta struct {
	NS      string `xml:"xmlns:vmup,attr"`
	Version int    `xml:"vmup:version"`
}

type memoryXML struct {
	Unit  string `xml:"unit,attr"`
	Value int    `xml:",chardata"`
}

type osXML struct {
	Firmware string      `xml:"firmware,attr,omitempty"`
	Type     osTypeXML   `xml:"type"`
	Features *osFeatures `xml:"firmware,omitempty"`
	Kernel   string      `xml:"kernel,omitempty"`
	Initrd   string      `xml:"initrd,omitempty"`
	Cmdline  string      `xml:"cmdline,omitempty"`
	Boot     *bootXML    `xml:"boot,omitempty"`
}

// osFeatures pins what libvirt's firmware auto-selection may pick.
type osFeatures struct {
	Features []osFeature `xml:"feature"`
}

type osFeature struct {
	Enabled string `xml:"enabled,attr"`
	Name    string `xml:"name,attr"`
}

type osTypeXML struct {
	Arch    string `xml:"arch,attr"`
	Machine string `xml:"machine,attr"`
	Value   string `xml:",chardata"`
}

type bootXML struct {
	Dev string `xml:"dev,attr"`
}

type featuresXML struct {
	ACPI struct{} `xml:"acpi"`
	APIC struct{} `xml:"apic"`
}

type cpuXML struct {
	Mode string `xml:"mode,attr"`
}

type devicesXML struct {
	Disks      []diskXML      `xml:"disk"`
	Interfaces []interfaceXML `xml:"interface"`
	Serial     serialXML      `xml:"serial"`
	Console    consoleXML     `xml:"console"`
	Channel    channelXML     `xml:"channel"`
	RNG        rngXML         `xml:"rng"`
}

type diskXML struct {
	Type     string    `xml:"type,attr"`
	Device   string    `xml:"device,attr"`
	Driver   driverXML `xml:"driver"`
	Source   sourceXML `xml:"source"`
	Target   targetXML `xml:"target"`
	ReadOnly *struct{} `xml:"readonly,omitempty"`
}

type driverXML struct {
	Name string `xml:"name,attr"`
	Type string `xml:"type,attr"`
}

type sourceXML struct {
	File    string `xml:"file,attr,omitempty"`
	Network string `xml:"network,attr,omitempty"`
}

type targetXML struct {
	Dev string `xml:"dev,attr"`
	Bus string `xml:"bus,attr"`
}

type interfaceXML struct {
	Type   string    `xml:"type,attr"`
	Source sourceXML `xml:"source"`
	Model  modelXML  `xml:"model"`
}

type modelXML struct {
	Type string `xml:"type,attr"`
}

type serialXML struct {
	Type   string          `xml:"type,attr"`
	Target serialTargetXML `xml:"target"`
	Log    logXML          `xml:"log"`
}

type serialTargetXML struct {
	Port int `xml:"port,attr"`
}

type logXML struct {
	File   string `xml:"file,attr"`
	Append string `xml:"append,attr"`
}

type consoleXML struct {
	Type   string           `xml:"type,attr"`
	Target consoleTargetXML `xml:"target"`
}

type consoleTargetXML struct {
	Type string `xml:"type,attr"`
	Port int    `xml:"port,attr"`
}

type channelXML struct {
	Type   string           `xml:"type,attr"`
	Target channelTargetXML `xml:"target"`
}

type channelTargetXML struct {
	Type string `xml:"type,attr"`
	Name string `xml:"name,attr"`
}

type rngXML struct {
	Model   string     `xml:"model,attr"`
	Backend rngBackend `xml:"backend"`
}

type rngBackend struct {
	Model string `xml:"model,attr"`
	Value string `xml:",chardata"`
}

type qemuCmdline struct {
	Args []qemuArg `xml:"qemu:arg"`
}

type qemuArg struct {
	Value string `xml:"value,attr"`
}

// userNetdev is the QEMU user-mode network with loopback forwards: the SSH
// port and every --forward.
func userNetdev(s DomainSpec) string {
	parts := []string{"user", "id=vmupnet"}
	if s.Restrict {
		parts = append(parts, "restrict=on")
	}
	parts = append(parts, fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:22", s.SSHPort))
	for _, f := range s.Forwards {
		parts = append(parts, fmt.Sprintf("hostfwd=tcp:%s:%d-:%d", f.Addr, f.Host, f.Guest))
	}
	return strings.Join(parts, ",")
}

// domainXMLFor builds the domain definition with encoding/xml.
func domainXMLFor(s DomainSpec) ([]byte, error) {
	d := domainXML{
		Type:       s.Type,
		Name:       s.Name,
		UUID:       s.UUID,
		Metadata:   metadataXML{VM: vmupMeta{NS: metadataURI, Version: 1}},
		Memory:     memoryXML{Unit: "MiB", Value: s.MemoryMiB},
		VCPU:       s.CPUs,
		OS:         osXML{Type: osTypeXML{Arch: "x86_64", Machine: "pc", Value: "hvm"}},
		OnPoweroff: "destroy", OnReboot: "restart", OnCrash: "destroy",
	}
	if s.Type == "kvm" {
		d.CPU = &cpuXML{Mode: "host-passthrough"}
	}
	if s.Kernel != "" {
		d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline = s.Kernel, s.Initrd, s.Cmdline
	} else {
		d.OS.Boot = &bootXML{Dev: "hd"}
	}
	if s.UEFI {
		// libvirt picks OVMF and makes the VM's own NVRAM at its first start.
		// Secure Boot is pinned off: Debian's descriptors for it would win
		// and refuse an unsigned boot loader.
		d.OS.Firmware = "efi"
		// (libvirt 9.0 refuses <loader secure='no'/> beside auto-selection.)
		d.OS.Features = &osFeatures{Features: []osFeature{{Enabled: "no", Name: "secure-boot"}, {Enabled: "no", Name: "enrolled-keys"}}}
	}
	d.Devices.Disks = append(d.Devices.Disks, diskXML{
		Type: "file", Device: "disk", Driver: driverXML{"qemu", "qcow2"},
		Source: sourceXML{File: s.Disk}, Target: targetXML{"vda", "virtio"},
	})
	if s.Seed != "" {
		// A virtio disk, not a cdrom: cloud kernels find it without SATA drivers.
		d.Devices.Disks = append(d.Devices.Disks, diskXML{
			Type: "file", Device: "disk", Driver: driverXML{"qemu", "raw"},
			Source: sourceXML{File: s.Seed}, Target: targetXML{"vdb", "virtio"}, ReadOnly: &struct{}{},
		})
	}
	switch s.Network {
	case "nat":
		d.Devices.Interfaces = []interfaceXML{{Type: "network", Source: sourceXML{Network: "default"}, Model: modelXML{"virtio"}}}
	case "user":
		d.QemuNS = "http://libvirt.org/schemas/domain/qemu/1.0"
		d.CommandLine = &qemuCmdline{Args: []qemuArg{
			{"-netdev"}, {userNetdev(s)},
			// A high slot, clear of the ones libvirt assigns itself.
			{"-device"}, {"virtio-net-pci,netdev=vmupnet,addr=0x1f"},
		}}
	}
	d.Devices.Serial = serialXML{Type: "pty", Target: serialTargetXML{Port: 0}, Log: logXML{File: s.ConsoleLog, Append: "on"}}
	d.Devices.Console = consoleXML{Type: "pty", Target: consoleTargetXML{Type: "serial", Port: 0}}
	d.Devices.Channel = channelXML{Type: "unix", Target: channelTargetXML{Type: "virtio", Name: "org.qemu.guest_agent.0"}}
	// Entropy from the host: a guest under TCG otherwise waits for it at boot.
	d.Devices.RNG = rngXML{Model: "virtio", Backend: rngBackend{Model: "random", Value: "/dev/urandom"}}
	return xml.MarshalIndent(d, "", "  ")
}
