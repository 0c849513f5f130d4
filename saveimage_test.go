package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSaveImage writes a save image as libvirt lays it out: header, XML,
// cookie, padding, then a stand-in for the memory stream.
func fakeSaveImage(t *testing.T, xml, cookie string, dataLen int, stream []byte) string {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(saveMagic)
	le := binary.LittleEndian
	for _, v := range []uint32{2, uint32(dataLen), 1, 0, uint32(len(xml) + 1)} {
		binary.Write(&b, le, v)
	}
	b.Write(make([]byte, saveHeaderLen-b.Len()))
	data := make([]byte, dataLen)
	copy(data, xml)
	copy(data[len(xml)+1:], cookie)
	b.Write(data)
	b.Write(stream)
	path := filepath.Join(t.TempDir(), "memory.save")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSaveImageRewriteKeepsTheStream(t *testing.T) {
	stream := []byte("QEVM\x00\x00\x00\x03memory...")
	path := fakeSaveImage(t, "<domain><name>a</name></domain>", "<cookie/>", 4096, stream)
	s, err := readSaveImage(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(s.XML) != "<domain><name>a</name></domain>" || string(s.Cookie) != "<cookie/>" || s.WasRunning != 1 {
		t.Fatalf("read %+v", s)
	}
	before, _ := os.ReadFile(path)
	longer := "<domain><name>a-much-longer-clone-name</name></domain>"
	if err := rewriteSaveImageXML(path, s, []byte(longer)); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path)
	if len(after) != len(before) || !bytes.Equal(after[saveHeaderLen+4096:], stream) {
		t.Fatal("the memory stream moved or changed")
	}
	got, err := readSaveImage(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.XML) != longer || string(got.Cookie) != "<cookie/>" || got.CookieOffset != uint32(len(longer)+1) {
		t.Fatalf("after the rewrite: xml %q cookie %q at %d", got.XML, got.Cookie, got.CookieOffset)
	}
	// A torn header (a crash mid-write) is written whole from the record's copy.
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte("<domXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"), saveHeaderLen)
	f.Close()
	if _, err := readSaveImage(path); err == nil {
		t.Fatal("a torn header was read as whole")
	}
	if err := rewriteSaveImageXML(path, s, s.XML); err != nil {
		t.Fatal(err)
	}
	if got, err := readSaveImage(path); err != nil || string(got.XML) != string(s.XML) {
		t.Fatalf("rewritten from the record: %v %q", err, got.XML)
	}
}

func TestSaveImageRefusals(t *testing.T) {
	path := fakeSaveImage(t, "<domain/>", "<c/>", 64, nil)
	s, err := readSaveImage(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := rewriteSaveImageXML(path, s, []byte(strings.Repeat("x", 60))); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("an XML too long for the header: %v", err)
	}
	if err := rewriteSaveImageXML(path, s, []byte("a\x00b")); err == nil {
		t.Fatal("an XML with a NUL was written")
	}
	other := *s
	other.DataLen = 128
	if err := rewriteSaveImageXML(path, &other, []byte("<domain/>")); err == nil {
		t.Fatal("a header of another length was overwritten")
	}
	for name, mutate := range map[string]func([]byte){
		"partial":    func(b []byte) { copy(b, savePartialMagic) },
		"magic":      func(b []byte) { copy(b, "NotLibvirtSave!!") },
		"version":    func(b []byte) { binary.LittleEndian.PutUint32(b[16:], 3) },
		"compressed": func(b []byte) { binary.LittleEndian.PutUint32(b[28:], 1) },
		"huge":       func(b []byte) { binary.LittleEndian.PutUint32(b[20:], saveMaxData+1) },
		"cookie":     func(b []byte) { binary.LittleEndian.PutUint32(b[32:], 3) },
		"short":      nil,
	} {
		data, _ := os.ReadFile(path)
		if mutate == nil {
			data = data[:saveHeaderLen+10]
		} else {
			mutate(data)
		}
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, data, 0o600)
		if _, err := readSaveImage(p); err == nil {
			t.Errorf("%s: read as a save image", name)
		}
	}
}
