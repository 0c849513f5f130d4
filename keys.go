package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"os"
	"strings"
)

// SSHKey is an ed25519 key in OpenSSH's own formats, written without
// golang.org/x/crypto (the project keeps to the standard library).
type SSHKey struct {
	Public  string // "ssh-ed25519 AAAA… comment"
	Private []byte // PEM "OPENSSH PRIVATE KEY"
}

func sshString(b []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	return append(out, b...)
}

func newSSHKey(comment string) (SSHKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SSHKey{}, err
	}
	wirePub := append(sshString([]byte("ssh-ed25519")), sshString(pub)...)

	var check [4]byte
	rand.Read(check[:])
	block := append(check[:], check[:]...)
	block = append(block, wirePub...)
	block = append(block, sshString(priv)...) // 64 bytes: seed then public key
	block = append(block, sshString([]byte(comment))...)
	for i := byte(1); len(block)%8 != 0; i++ {
		block = append(block, i)
	}

	body := []byte("openssh-key-v1\x00")
	body = append(body, sshString([]byte("none"))...) // cipher
	body = append(body, sshString([]byte("none"))...) // kdf
	body = append(body, sshString(nil)...)            // kdf options
	body = binary.BigEndian.AppendUint32(body, 1)     // one key
	body = append(body, sshString(wirePub)...)
	body = append(body, sshString(block)...)

	return SSHKey{
		Public:  "ssh-ed25519 " + base64.StdEncoding.EncodeToString(wirePub) + " " + comment,
		Private: pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: body}),
	}, nil
}

// loadOrCreateKey keeps a key pair at path (0600) and path.pub.
func loadOrCreateKey(path, comment string) (SSHKey, error) {
	priv, err1 := os.ReadFile(path)
	pub, err2 := os.ReadFile(path + ".pub")
	if err1 == nil && err2 == nil {
		return SSHKey{Public: strings.TrimSpace(string(pub)), Private: priv}, nil
	}
	if !errors.Is(err1, os.ErrNotExist) && err1 != nil {
		return SSHKey{}, err1
	}
	k, err := newSSHKey(comment)
	if err != nil {
		return k, err
	}
	if err := writeFileAtomic(path, k.Private, 0o600); err != nil {
		return k, err
	}
	return k, writeFileAtomic(path+".pub", []byte(k.Public+"\n"), 0o644)
}
