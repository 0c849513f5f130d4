// A clone's domain XML for its restore: the template's saved XML with the
// clone's name, UUID and paths, so the memory state runs as the clone.
package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strings"
)

// cloneRename is what differs between the template's VM and the clone in
// the saved XML: every other byte (devices, their addresses, the CPU) must
// stay, or QEMU refuses the memory state.
type cloneRename struct {
	OldName, NewName, NewUUID string
	// Values: each old string (a path, the user network's -netdev
	// argument) as an attribute value or element text, and its new one.
	Values [][2]string
}

var (
	nameElemRE = lazyRE(`<name>[^<]*</name>`)
	uuidElemRE = lazyRE(`<uuid>[0-9a-fA-F-]{36}</uuid>`)
)

func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

// cloneDomainXML renames the template's saved XML for the clone. The
// disks' backing chains go: libvirt probes them again (the clone's disk is
// an overlay on the template's). An old value left anywhere is an error: it
// would name the template's VM's files.
func cloneDomainXML(src []byte, r cloneRename) ([]byte, error) {
	if !uuidRE.MatchString(r.NewUUID) {
		return nil, fmt.Errorf("clone UUID %q", r.NewUUID)
	}
	names := nameElemRE.FindAllIndex(src, -1)
	if len(names) == 0 || string(src[names[0][0]:names[0][1]]) != "<name>"+xmlEscape(r.OldName)+"</name>" {
		return nil, fmt.Errorf("the template's domain XML does not name VM %s first", r.OldName)
	}
	out := make([]byte, 0, len(src)+256)
	out = append(out, src[:names[0][0]]...)
	out = append(out, "<name>"+xmlEscape(r.NewName)+"</name>"...)
	out = append(out, src[names[0][1]:]...)
	if n := len(uuidElemRE.FindAllIndex(out, -1)); n != 1 {
		return nil, fmt.Errorf("the template's domain XML has %d UUIDs", n)
	}
	out = uuidElemRE.ReplaceAllLiteral(out, []byte("<uuid>"+r.NewUUID+"</uuid>"))
	out, err := dropBackingStores(out)
	if err != nil {
		return nil, err
	}
	for _, v := range r.Values {
		old, repl := xmlEscape(v[0]), xmlEscape(v[1])
		if v[0] == "" {
			return nil, fmt.Errorf("an empty value to replace")
		}
		out = bytes.ReplaceAll(out, []byte("'"+old+"'"), []byte("'"+repl+"'"))
		out = bytes.ReplaceAll(out, []byte(">"+old+"<"), []byte(">"+repl+"<"))
		if v[0] != v[1] && bytes.Contains(out, []byte(old)) {
			return nil, fmt.Errorf("the template's domain XML names %s where vmup cannot replace it", v[0])
		}
	}
	return out, nil
}

// dropBackingStores removes every <backingStore> element, nested or empty.
func dropBackingStores(in []byte) ([]byte, error) {
	const open = "<backingStore"
	var out []byte
	for {
		i := bytes.Index(in, []byte(open))
		if i < 0 {
			return append(out, in...), nil
		}
		out = append(out, in[:i]...)
		end, err := elementEnd(in[i:], "backingStore")
		if err != nil {
			return nil, err
		}
		in = in[i+end:]
		// The line the element stood on goes too, when nothing else is on it.
		if trimmed := bytes.TrimRight(out, " \t"); len(trimmed) > 0 && trimmed[len(trimmed)-1] == '\n' && bytes.HasPrefix(in, []byte("\n")) {
			out, in = trimmed, in[1:]
		}
	}
}

// elementEnd is the length of the element of tag that doc begins with.
func elementEnd(doc []byte, tag string) (int, error) {
	depth, i := 0, 0
	for i < len(doc) {
		lt := bytes.IndexByte(doc[i:], '<')
		if lt < 0 {
			break
		}
		lt += i
		gt := bytes.IndexByte(doc[lt:], '>')
		if gt < 0 {
			break
		}
		gt += lt
		t := doc[lt+1 : gt]
		switch {
		case bytes.HasPrefix(t, []byte("/"+tag)):
			depth--
		case bytes.HasPrefix(t, []byte(tag)) && bytes.HasSuffix(t, []byte("/")):
			// empty element: depth unchanged
		case bytes.HasPrefix(t, []byte(tag)):
			depth++
		}
		i = gt + 1
		if depth == 0 {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unterminated <%s> in the domain XML", tag)
}
