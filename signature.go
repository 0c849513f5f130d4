package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The distributors' public keys, as gpg --export writes them (gpgv reads
// binary keyrings). Where each came from: the README's "Images by name".
//
//go:embed keys/*.gpg
var distroKeys embed.FS

func distroKey(name string) []byte {
	b, err := distroKeys.ReadFile("keys/" + name)
	if err != nil {
		panic(err) // the table names a file that is not embedded: a build mistake
	}
	return b
}

// signer is how a distributor signs a checksum file: a detached signature
// beside it named Detached, or (Detached "") the file clearsigned, by the
// key Key whose primary fingerprint is FPR.
type signer struct {
	Detached string
	Key      []byte
	FPR      string
}

var (
	ubuntuSigner   = &signer{Detached: "SHA256SUMS.gpg", Key: distroKey("ubuntu-cloudimage.gpg"), FPR: "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"}
	fedora44Signer = &signer{Key: distroKey("fedora-44.gpg"), FPR: "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"}
)

// verifySigned checks the checksum file text fetched from sumsURL against
// its signature and returns the text the signature covers: text itself for a
// detached signature, only the signed part of a clearsigned one. gpgv does
// the cryptography; vmup requires that the key that made a good signature
// be the pinned one.
func verifySigned(ctx context.Context, r Runner, sg *signer, sumsURL string, text []byte) ([]byte, error) {
	var sig []byte
	if sg.Detached != "" {
		var err error
		sigURL := sumsURL[:strings.LastIndexByte(sumsURL, '/')+1] + sg.Detached
		if sig, err = fetchSmall(ctx, sigURL); err != nil {
			var fe *fetchError
			if errors.As(err, &fe) && fe.Status != 0 {
				return nil, &usageError{msg: fmt.Sprintf("%v: the signature of %s", err, sumsURL),
					hint: "run the same command again later (vmup uses a named image only once its checksum file's signature verifies), or check the image yourself and give its URL and --image-sha256"}
			}
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "vmup-gpgv-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	keyring, data, sigFile, signed := filepath.Join(dir, "key.gpg"), filepath.Join(dir, "sums"), filepath.Join(dir, "sums.sig"), filepath.Join(dir, "signed")
	if err := os.WriteFile(keyring, sg.Key, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(data, text, 0o600); err != nil {
		return nil, err
	}
	// Only this distributor's key is in the keyring; GNUPGHOME keeps the
	// user's own keyrings out of it.
	args := []string{"gpgv", "--status-fd", "1", "--keyring", keyring}
	if sig != nil {
		if err := os.WriteFile(sigFile, sig, 0o600); err != nil {
			return nil, err
		}
		args = append(args, sigFile, data)
	} else {
		args = append(args, "--output", signed, data)
	}
	res, err := r.Run(ctx, Cmd{Args: args, Env: []string{"GNUPGHOME=" + dir}})
	if errors.Is(err, exec.ErrNotFound) {
		return nil, &hintedError{msg: "gpgv is not installed: vmup needs it to check the signature of " + sumsURL,
			hint: "install gpgv (`apt install gpgv` on Debian and Ubuntu, `dnf install gnupg2` on Fedora), or give the image's URL and --image-sha256"}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if !validSigBy(res.Stdout, sg.FPR) {
		return nil, &usageError{msg: fmt.Sprintf("%s has no good signature by the distributor's key %s", sumsURL, sg.FPR),
			hint: "run the same command again later (a mirror, proxy or attacker may have changed it, or the distributor moved to a new key), or check the image yourself and give its URL and --image-sha256"}
	}
	if sig != nil {
		return text, nil
	}
	return os.ReadFile(signed)
}

// validSigBy reads gpgv's status lines: a VALIDSIG whose primary key is fpr,
// and no BADSIG.
func validSigBy(status []byte, fpr string) bool {
	ok := false
	for line := range strings.SplitSeq(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "[GNUPG:]" {
			continue
		}
		switch f[1] {
		case "BADSIG":
			return false
		case "VALIDSIG":
			// [GNUPG:] VALIDSIG FPR DATE TS EXPIRE VER RESERVED PKALGO HASHALGO CLASS PRIMARY-FPR
			if len(f) >= 12 && strings.EqualFold(f[11], fpr) {
				ok = true
			}
		}
	}
	return ok
}
