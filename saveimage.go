// A libvirt save image's header: the domain XML a restore defines the
// domain by. A clone of a template is restored from the template's memory
// state under its own name, UUID and paths; libvirt's own way (restore
// --xml) refuses another UUID, so vmup writes the clone's XML into the
// header itself. The memory stream after it is never touched.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// The header as libvirt's qemu driver writes it (qemu_saveimage.h): a magic,
// then uint32 fields in the host's byte order, then data_len bytes holding
// the XML, a NUL, the migration cookie, a NUL and zero padding.
const (
	saveMagic        = "LibvirtQemudSave"
	savePartialMagic = "LibvirtQemudPart" // a save that never completed
	saveHeaderLen    = 92
	saveMaxData      = 16 << 20 // far beyond any domain's XML: more is no header
)

type saveImage struct {
	Version, DataLen, WasRunning, Compressed, CookieOffset uint32
	XML, Cookie                                            []byte
}

var errNotSaveImage = errors.New("not a libvirt save image")

// readSaveImage reads and checks the header of the save image at path.
func readSaveImage(path string) (*saveImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readSaveHeader(f, path)
}

func readSaveHeader(r io.Reader, path string) (*saveImage, error) {
	head := make([]byte, saveHeaderLen)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", path, errNotSaveImage, err)
	}
	switch string(head[:16]) {
	case saveMagic:
	case savePartialMagic:
		return nil, fmt.Errorf("%s: the save never completed", path)
	default:
		return nil, fmt.Errorf("%s: %w", path, errNotSaveImage)
	}
	le := binary.LittleEndian
	s := &saveImage{Version: le.Uint32(head[16:]), DataLen: le.Uint32(head[20:]), WasRunning: le.Uint32(head[24:]),
		Compressed: le.Uint32(head[28:]), CookieOffset: le.Uint32(head[32:])}
	// Version 2 is what libvirt writes since 2011; another (or a header of
	// the other byte order) is a format this code does not know.
	if s.Version != 2 {
		return nil, fmt.Errorf("%s: save image version %d (vmup knows 2)", path, s.Version)
	}
	if s.Compressed != 0 {
		return nil, fmt.Errorf("%s: a compressed save image (save_image_format in qemu.conf): vmup needs raw", path)
	}
	if s.DataLen == 0 || s.DataLen > saveMaxData {
		return nil, fmt.Errorf("%s: save image header of %d bytes", path, s.DataLen)
	}
	data := make([]byte, s.DataLen)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("%s: save image header cut short: %v", path, err)
	}
	end := bytes.IndexByte(data, 0)
	if end <= 0 {
		return nil, fmt.Errorf("%s: save image XML is not terminated", path)
	}
	s.XML = data[:end]
	if s.CookieOffset != 0 {
		if s.CookieOffset != uint32(end)+1 || s.CookieOffset >= s.DataLen {
			return nil, fmt.Errorf("%s: save image cookie at %d, XML ends at %d", path, s.CookieOffset, end)
		}
		rest := data[s.CookieOffset:]
		cend := bytes.IndexByte(rest, 0)
		if cend < 0 {
			return nil, fmt.Errorf("%s: save image cookie is not terminated", path)
		}
		s.Cookie = rest[:cend]
	}
	return s, nil
}

// header renders s with xml in place of its XML, in the same data_len: the
// memory stream begins where it did.
func (s *saveImage) header(xml []byte) ([]byte, error) {
	if bytes.IndexByte(xml, 0) >= 0 {
		return nil, errors.New("domain XML holds a NUL byte")
	}
	need := len(xml) + 1
	if s.CookieOffset != 0 {
		need += len(s.Cookie) + 1
	}
	if need > int(s.DataLen) {
		return nil, fmt.Errorf("the clone's domain XML (%d bytes) does not fit the save image's header (%d)", need, s.DataLen)
	}
	out := make([]byte, saveHeaderLen+int(s.DataLen))
	copy(out, saveMagic)
	le := binary.LittleEndian
	le.PutUint32(out[16:], s.Version)
	le.PutUint32(out[20:], s.DataLen)
	le.PutUint32(out[24:], s.WasRunning)
	le.PutUint32(out[28:], s.Compressed)
	data := out[saveHeaderLen:]
	copy(data, xml)
	if s.CookieOffset != 0 {
		le.PutUint32(out[32:], uint32(len(xml)+1))
		copy(data[len(xml)+1:], s.Cookie)
	}
	return out, nil
}

// rewriteSaveImageXML puts xml into the header of the save image at path,
// in place, from s: the header as it was when the template was made (its
// record keeps it), so a header torn by a crash is written whole again.
// The caller holds the template's lock: one clone at a time writes the
// header and restores from it.
func rewriteSaveImageXML(path string, s *saveImage, xml []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, saveHeaderLen)
	if _, err := io.ReadFull(f, head); err != nil || string(head[:16]) != saveMagic ||
		binary.LittleEndian.Uint32(head[20:]) != s.DataLen {
		return fmt.Errorf("%s: not the save image its template recorded", path)
	}
	out, err := s.header(xml)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(out, 0); err != nil {
		return err
	}
	return f.Close()
}
