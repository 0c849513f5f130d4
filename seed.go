package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf16"
)

// The NoCloud seed is an ISO9660 image labelled "cidata" holding meta-data and
// user-data. vmup writes it itself (no genisoimage on the host); Joliet names
// carry the real file names, since "meta-data" is no valid ISO9660 name.

const sector = 2048

type isoFile struct {
	name string
	data []byte
}

// buildISO returns an ISO9660 image with a Joliet tree holding files in its root.
func buildISO(label string, files map[string][]byte) []byte {
	var list []isoFile
	for n, d := range files {
		list = append(list, isoFile{n, d})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })

	// Layout: 16 system sectors, PVD, SVD, terminator, four path tables,
	// two root directories, then the files.
	const (
		pvdLBA, svdLBA, termLBA         = 16, 17, 18
		lPathLBA, mPathLBA              = 19, 20
		jlPathLBA, jmPathLBA            = 21, 22
		rootLBA, jRootLBA, firstDataLBA = 23, 24, 25
	)
	lba := uint32(firstDataLBA)
	extents := make([]uint32, len(list))
	for i, f := range list {
		extents[i] = lba
		lba += uint32((len(f.data) + sector - 1) / sector)
		if len(f.data) == 0 {
			lba++ // an empty file still gets its own (empty) extent
		}
	}
	total := lba
	img := make([]byte, int(total)*sector)
	at := func(n uint32) []byte { return img[int(n)*sector : int(n+1)*sector] }
	now := time.Now().UTC()

	primaryNames := make([][]byte, len(list))
	jolietNames := make([][]byte, len(list))
	for i, f := range list {
		primaryNames[i] = []byte(primaryName(f.name, i))
		jolietNames[i] = ucs2(f.name)
	}
	dir := func(names [][]byte, self uint32) []byte {
		var b []byte
		b = append(b, dirRecord(self, sector, true, []byte{0}, now)...)
		b = append(b, dirRecord(self, sector, true, []byte{1}, now)...)
		for i, f := range list {
			b = append(b, dirRecord(extents[i], uint32(len(f.data)), false, names[i], now)...)
		}
		return b
	}
	copy(at(rootLBA), dir(primaryNames, rootLBA))
	copy(at(jRootLBA), dir(jolietNames, jRootLBA))
	for i, f := range list {
		copy(img[int(extents[i])*sector:], f.data)
	}
	pathTable := func(root uint32, bigEndian bool) []byte {
		b := []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if bigEndian {
			binary.BigEndian.PutUint32(b[2:], root)
			binary.BigEndian.PutUint16(b[6:], 1)
		} else {
			binary.LittleEndian.PutUint32(b[2:], root)
			binary.LittleEndian.PutUint16(b[6:], 1)
		}
		return b
	}
	copy(at(lPathLBA), pathTable(rootLBA, false))
	copy(at(mPathLBA), pathTable(rootLBA, true))
	copy(at(jlPathLBA), pathTable(jRootLBA, false))
	copy(at(jmPathLBA), pathTable(jRootLBA, true))

	volumeDescriptor(at(pvdLBA), 1, label, total, lPathLBA, mPathLBA, dirRecord(rootLBA, sector, true, []byte{0}, now), now, false)
	volumeDescriptor(at(svdLBA), 2, label, total, jlPathLBA, jmPathLBA, dirRecord(jRootLBA, sector, true, []byte{0}, now), now, true)
	term := at(termLBA)
	term[0] = 255
	copy(term[1:], "CD001")
	term[6] = 1
	return img
}

// primaryName is an ISO9660 level-1 name (8.3, d-characters) for the primary tree.
func primaryName(name string, i int) string {
	base := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, name)
	if len(base) > 6 {
		base = base[:6]
	}
	return fmt.Sprintf("%s%02d.;1", base, i)
}

func ucs2(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = binary.BigEndian.AppendUint16(b, u)
	}
	return b
}

func bothEndian32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func bothEndian16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func dirRecord(extent, size uint32, isDir bool, name []byte, t time.Time) []byte {
	n := 33 + len(name)
	if n%2 == 1 {
		n++
	}
	r := make([]byte, n)
	r[0] = byte(n)
	bothEndian32(r[2:], extent)
	bothEndian32(r[10:], size)
	r[18], r[19], r[20] = byte(t.Year()-1900), byte(t.Month()), byte(t.Day())
	r[21], r[22], r[23] = byte(t.Hour()), byte(t.Minute()), byte(t.Second())
	if isDir {
		r[25] = 2
	}
	bothEndian16(r[28:], 1)
	r[32] = byte(len(name))
	copy(r[33:], name)
	return r
}

func volumeDescriptor(b []byte, kind byte, label string, total, lPath, mPath uint32, root []byte, t time.Time, joliet bool) {
	b[0] = kind
	copy(b[1:], "CD001")
	b[6] = 1
	text := func(off, size int, s string) {
		field := b[off : off+size]
		if joliet {
			for i := 0; i+1 < size; i += 2 {
				field[i], field[i+1] = 0, ' '
			}
			copy(field, ucs2(s))
			return
		}
		for i := range field {
			field[i] = ' '
		}
		copy(field, s)
	}
	text(8, 32, "LINUX")
	text(40, 32, label)
	bothEndian32(b[80:], total)
	if joliet {
		copy(b[88:], "%/E") // UCS-2 level 3
	}
	bothEndian16(b[120:], 1)
	bothEndian16(b[124:], 1)
	bothEndian16(b[128:], sector)
	bothEndian32(b[132:], 10)
	binary.LittleEndian.PutUint32(b[140:], lPath)
	binary.BigEndian.PutUint32(b[148:], mPath)
	copy(b[156:], root)
	for _, off := range []int{190, 318, 446, 574} {
		text(off, 128, "")
	}
	for _, off := range []int{702, 739, 776} {
		text(off, 37, "")
	}
	stamp := []byte(t.Format("20060102150405") + "00")
	copy(b[813:], stamp)
	copy(b[830:], stamp)
	copy(b[847:], "0000000000000000")
	copy(b[864:], "0000000000000000")
	b[881] = 1
}

// seedVersion is the version of what vmup's first boot does to a guest
// beyond what its settings say: the cloud-config userData writes, metaData,
// and the first boot's own steps. A provisioned template's key holds it
// (templatekey.go): raise it with any change that would make a guest
// provisioned by this vmup differ from one by the vmup before.
const seedVersion = 1

// userData is the cloud-config for the first boot: the login with
// passwordless sudo and vmup's key, and the host key vmup pinned.
func userData(name, user, userPublic string, host SSHKey) []byte {
	var b bytes.Buffer
	b.WriteString("#cloud-config\n")
	fmt.Fprintf(&b, "hostname: %s\n", name)
	b.WriteString("manage_etc_hosts: true\n")
	b.WriteString("users:\n")
	fmt.Fprintf(&b, "  - name: %s\n", user)
	b.WriteString("    shell: /bin/bash\n")
	b.WriteString("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n")
	b.WriteString("    lock_passwd: true\n")
	b.WriteString("    ssh_authorized_keys:\n")
	fmt.Fprintf(&b, "      - %q\n", strings.TrimSpace(userPublic))
	b.WriteString("ssh_pwauth: false\n")
	// The image's host keys go; with ssh_keys given, cloud-init generates
	// none (an empty ssh_genkeytypes would be a schema error).
	b.WriteString("ssh_deletekeys: true\n")
	b.WriteString("ssh_keys:\n")
	b.WriteString("  ed25519_private: |\n")
	for _, line := range strings.Split(strings.TrimSpace(string(host.Private)), "\n") {
		fmt.Fprintf(&b, "    %s\n", line)
	}
	fmt.Fprintf(&b, "  ed25519_public: %q\n", strings.TrimSpace(host.Public))
	return b.Bytes()
}

func metaData(name, instanceID string) []byte {
	return []byte(fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", instanceID, name))
}
