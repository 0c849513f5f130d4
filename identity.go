// A clone's own identity (issue 17, item 4). A VM made from a template's
// memory state wakes up as the template's VM: its hostname, machine-id, SSH
// host key, cloud-init instance-id and login key are that VM's. Right after
// the restore, vmup makes it its own machine in one ssh call: identityScript,
// run as root with the values identityCommand checked and quoted.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// identityScript is the guest's side: sh -c SCRIPT sh NAME MACHINE_ID
// INSTANCE_ID USER LOGIN_PUBKEY HOST_PUBKEY TIME MAC (or ""), as root, with the host's
// private key on stdin (never in argv, which any guest process can read).
// Every step can run again: a second run with new values makes those.
//
// It prints "vmup-identity done sshd=reloaded" (or "…sshd=rexec": an sshd
// whose connections read the host key from disk) and exits 0 once the
// running sshd serves the new host key to new connections (sessions stay), or prints
// "…sshd=unreloaded" and exits 3 when the identity is written but sshd still
// serves the old key. ROOT, when set (tests), is put before every path, and
// the clock, the running hostname and sshd are left alone ("sshd=skipped"),
// unless LIVE=1 (tests with fake commands).
//
// The script is one single-quoted word for the login shell: any POSIX shell
// reads it as it is (vmup makes its login with /bin/bash).
const identityScript = `set -eu
[ $# -eq 8 ] || { echo "vmup-identity: want 8 arguments, got $#" >&2; exit 2; }
NAME=$1 MID=$2 IID=$3 LOGIN=$4 LOGIN_PUB=$5 HOST_PUB=$6 TIME=$7 MAC=$8
R=${ROOT:-}
L=${LIVE:-}
if [ -z "$R" ]; then L=1; fi
umask 077

fail() { echo "vmup-identity: $*" >&2; exit 2; }

# vmup checked the values; checked again here, as they name paths.
case $NAME in ''|-*|*[!a-z0-9-]*) fail "bad name";; esac
case $MID in *[!0-9a-f]*) fail "bad machine-id";; esac
[ ${#MID} -eq 32 ] || fail "bad machine-id"
case $IID in "vmup-$NAME-"|"vmup-$NAME-"*[!0-9]*) fail "bad instance-id";; "vmup-$NAME-"*) ;; *) fail "bad instance-id";; esac
case $LOGIN in ''|-*|*[!a-z0-9_-]*) fail "bad user";; esac
case $TIME in ''|*[!0-9]*) fail "bad time";; esac
for key in "$LOGIN_PUB" "$HOST_PUB"; do
	case $key in "ssh-ed25519 "*) ;; *) fail "bad public key";; esac
	case $key in *"
"*) fail "bad public key";; esac
done
x='[0-9a-f][0-9a-f]'
case $MAC in ''|$x:$x:$x:$x:$x:$x) ;; *) fail "bad MAC";; esac

# On a shared network the clone's lease may lead to another guest (its
# template's VM, with the same keys): a guest without the clone's MAC is
# left as it is.
if [ -n "$MAC" ]; then
	hasmac=
	for a in "$R"/sys/class/net/*/address; do
		m=
		if [ -r "$a" ]; then read -r m <"$a" || true; fi
		if [ "$m" = "$MAC" ]; then hasmac=1; break; fi
	done
	[ -n "$hasmac" ] || fail "this guest has no interface with MAC $MAC: its address leads to another machine"
fi

# put FILE MODE CONTENT [OWNER]: FILE holds CONTENT and a newline, written
# in place (a clone cut off midway is wiped, never used). A new file gets
# MODE by umask and OWNER; an old one keeps its own. Built-ins only: each
# program run costs an emulated guest a tenth of a second.
put() {
	n=
	if [ ! -e "$1" ]; then n=1; fi
	case $2 in 644) umask 022;; 444) umask 222;; 600) umask 077;; *) fail "mode $2";; esac
	printf '%s\n' "$3" >"$1"
	umask 077
	if [ -n "$n" ] && [ -n "${4:-}" ]; then chown "$4" "$1"; fi
}

# relabel WORD: WORD with its first label, the old hostname, made NAME (in $rl).
relabel() {
	case $1 in "$old"|"$old".*) rl=$NAME${1#"$old"};; *) rl=$1;; esac
}

# The private host key first: nothing changes unless stdin holds it.
k=$R/etc/ssh/ssh_host_ed25519_key
hostkey=
while IFS= read -r line || [ -n "$line" ]; do hostkey=$hostkey$line"
"; done
case $hostkey in "-----BEGIN OPENSSH PRIVATE KEY-----
"*"-----END OPENSSH PRIVATE KEY-----
") ;; *) fail "no private key on stdin";; esac

# First the clock: the memory state is from the template's time.
if [ -n "$L" ]; then date -u -s "@$TIME" >/dev/null; fi

# The host key vmup pinned, and no other: the template's would be every clone's.
printf '%s' "$hostkey" >"$k" # a new file 0600 by umask 077
put "$k.pub" 644 "$HOST_PUB"
set --
for f in "$R"/etc/ssh/ssh_host_*_key "$R"/etc/ssh/ssh_host_*_key.pub; do
	case ${f##*/} in ssh_host_ed25519_key|ssh_host_ed25519_key.pub) continue;; esac
	if [ -e "$f" ] || [ -L "$f" ]; then set -- "$@" "$f"; fi
done
if [ $# -gt 0 ]; then rm -f "$@"; fi

# Only the new login key logs in: the template VM's no longer does.
ent= pu=
while IFS=: read -r pu _ puid pgid _ phome _ || [ -n "$pu" ]; do
	if [ "$pu" = "$LOGIN" ]; then ent=$puid:$pgid:$phome; break; fi
	pu=
done <"$R/etc/passwd"
[ -n "$ent" ] || fail "no user $LOGIN in /etc/passwd"
ids=${ent%:*}
home=${ent#*:*:}
case $home in /*) ;; *) fail "user $LOGIN has no home";; esac
s=$R$home/.ssh
if [ ! -d "$s" ]; then mkdir -m 700 "$s"; chown "$ids" "$s"; fi
put "$s/authorized_keys" 600 "$LOGIN_PUB" "$ids"

served=
if [ -n "$L" ]; then
	# Which sshd listens: its pid file and the program it runs.
	pid= pf=
	for f in "$R/run/sshd.pid" "$R/var/run/sshd.pid"; do
		if [ -s "$f" ]; then pf=$f; read -r pid <"$f" || true; break; fi
	done
	case $pid in ''|*[!0-9]*) pid=;; esac
	comm=
	if [ -n "$pid" ]; then read -r comm <"/proc/$pid/comm" 2>/dev/null || true; fi
	# An OpenSSH listener without sshd-session (before 9.8) re-executes itself
	# for each connection, and that process reads the host keys from disk: new
	# connections get the new key with no reload. Later ones hold the keys in
	# the listener, which a HUP makes read them again.
	if [ "$comm" = sshd ]; then
		split=
		for f in lib/openssh libexec/openssh libexec lib/ssh lib sbin; do
			if [ -e "$R/usr/$f/sshd-session" ]; then split=1; break; fi
		done
		if [ -z "$split" ]; then served=rexec; fi
	fi

	# The listener is HUPed, which re-execs it; sessions, this one too, are
	# processes of their own and stay. A config it cannot load would end it,
	# so it is tested first.
	reloaded=
	sshd=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
	if [ -n "$served" ]; then
		:
	elif [ -x "$sshd" ] && ! "$sshd" -t; then
		echo "vmup-identity: sshd -t failed: sshd not reloaded" >&2
	elif [ "$comm" = sshd ]; then
		# sshd writes its pid file anew once it listens again: vmup's next
		# connection is not refused by a listener still starting.
		rm -f "$pf"
		if kill -HUP "$pid"; then
			n=0
			while [ ! -s "$pf" ] && [ $n -lt 100 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1)); done
			if [ -s "$pf" ]; then reloaded=1; fi
		else
			printf '%s\n' "$pid" >"$pf"
		fi
	elif command -v systemctl >/dev/null 2>&1 && { systemctl reload ssh || systemctl reload sshd; } >/dev/null 2>&1; then
		reloaded=1
	elif command -v service >/dev/null 2>&1 && service ssh reload >/dev/null 2>&1; then
		reloaded=1
	fi
	if [ -n "$reloaded" ]; then served=reloaded; fi
	# vmup proves the host key from here on, while the rest is written.
	if [ -n "$served" ]; then echo "vmup-identity keys"; fi

	# The login key is in a file sshd reads: one named elsewhere by
	# AuthorizedKeysFile would leave the template's key the clone's only one.
	if [ -x "$sshd" ] && cfg=$("$sshd" -T -C "user=$LOGIN,host=localhost,addr=127.0.0.1" 2>/dev/null); then
		ak=
		while read -r k v; do
			if [ "$k" = authorizedkeysfile ]; then ak=$v; break; fi
		done <<EOF
$cfg
EOF
		mine=
		set -f
		for f in $ak; do
			case $f in .ssh/authorized_keys|%h/.ssh/authorized_keys|"$home/.ssh/authorized_keys"|"${home%/*}/%u/.ssh/authorized_keys") mine=1;; esac
		done
		set +f
		if [ -n "$ak" ] && [ -z "$mine" ]; then fail "sshd reads login keys from $ak, not ~/.ssh/authorized_keys"; fi
	fi
else
	served=skipped
fi

# The hostname. The old one is read as a name or not at all: it goes into
# patterns below.
old=
if [ -f "$R/etc/hostname" ]; then read -r old <"$R/etc/hostname" || true; fi
if [ -z "$old" ] && [ -z "$R" ]; then read -r old </proc/sys/kernel/hostname || true; fi
old=${old%%.*}
case $old in ''|-*|*[!a-z0-9-]*) old=;; esac
put "$R/etc/hostname" 644 "$NAME"
if [ -n "$L" ]; then
	# The kernel's file, not hostname(1): a program costs a tenth of a second.
	# Under ROOT (tests) the host's is not touched: hostname is a fake there.
	if [ -n "$R" ] || ! { printf '%s\n' "$NAME" >/proc/sys/kernel/hostname; } 2>/dev/null; then hostname "$NAME"; fi
fi
# 127.0.1.1 names the host (Debian, cloud-init's manage_etc_hosts): the old
# name goes as a word or as an FQDN's first label; no such line, one is added.
if [ -f "$R/etc/hosts" ]; then
	hosts=$(awk -v old="$old" -v new="$NAME" '
		$1 == "127.0.1.1" {
			seen = 1
			for (i = 2; old != "" && i <= NF; i++)
				if ($i "" == old "" || index($i, old ".") == 1) $i = new substr($i, length(old) + 1)
		}
		{ print }
		END { if (!seen) print "127.0.1.1 " new }' "$R/etc/hosts")
	put "$R/etc/hosts" 644 "$hosts"
fi

# machine-id; Debian's /var/lib/dbus/machine-id is a link to it, left so.
put "$R/etc/machine-id" 444 "$MID"
m=$R/var/lib/dbus/machine-id
if [ -f "$m" ] && [ ! -L "$m" ]; then put "$m" 444 "$MID"; fi

# cloud-init: the instance becomes NEW with the per-instance semaphores kept,
# so its next boot runs no per-instance module again (ssh's would make new
# host keys); its hostname records follow the new name, as if it set it.
c=$R/var/lib/cloud
if [ -d "$c" ]; then
	d=$c/data
	[ -d "$d" ] || mkdir -p "$d"
	if [ -n "$old" ] && [ -s "$d/previous-hostname" ]; then
		p=
		read -r p <"$d/previous-hostname" || true
		relabel "$p"
		put "$d/previous-hostname" 644 "$rl"
	fi
	if [ -n "$old" ] && [ -s "$d/set-hostname" ]; then
		sh=$(sed -e "s/\(\"hostname\": *\"\)$old\"/\1$NAME\"/" -e "s/\(\"fqdn\": *\"\)$old\([.\"]\)/\1$NAME\2/" \
			"$d/set-hostname")
		put "$d/set-hostname" 644 "$sh"
	fi
	prev=
	if [ -f "$d/instance-id" ]; then read -r prev <"$d/instance-id" || true; fi
	case $prev in .|..|*/*) prev=;; esac
	i=$c/instances
	if [ -n "$prev" ] && [ "$prev" != "$IID" ] && [ -d "$i/$prev" ]; then
		[ ! -e "$i/$IID" ] || fail "both instances/$prev and instances/$IID are there"
		mv "$i/$prev" "$i/$IID"
	fi
	if [ -d "$i/$IID" ]; then
		# The cached datasource names the old id; it and the cached user-data
		# hold the template VM's host key. The next boot reads the seed anew.
		if [ -e "$c/instance" ] && [ ! -L "$c/instance" ]; then fail "$c/instance is no symlink"; fi
		rm -f "$i/$IID/obj.pkl" "$i/$IID/user-data.txt" "$i/$IID/user-data.txt.i" "$i/$IID/cloud-config.txt" "$c/instance"
		ln -s "/var/lib/cloud/instances/$IID" "$c/instance"
	fi
	put "$d/instance-id" 644 "$IID"
	put "$d/previous-instance-id" 644 "$IID"
fi


if [ -n "$served" ]; then echo "vmup-identity done sshd=$served"; exit 0; fi
echo "vmup-identity done sshd=unreloaded"
exit 3
`

// cloneIdentity is what is a clone's own, made by newCloneIdentity.
type cloneIdentity struct {
	Name       string    // the VM's name: its hostname
	MachineID  string    // 32 lowercase hex digits
	InstanceID string    // cloud-init's, as writeSeed makes them: vmup-NAME-NANOSECONDS
	User       string    // the login whose authorized_keys become LoginPub alone
	LoginPub   string    // "ssh-ed25519 …": the only key that logs in as User
	Host       SSHKey    // the host key, pinned by vmup
	Time       time.Time // the guest's clock is set to it, in whole seconds
	// MAC, when set (a shared network), is the clone's NIC's: a guest
	// without it is not the clone, and is left alone.
	MAC string
}

// newCloneIdentity makes a fresh identity for VM name, its clock now: set
// Time again when the command is sent late.
func newCloneIdentity(name, user, loginPub string) (cloneIdentity, error) {
	host, err := newSSHKey("vmup-host-" + name)
	if err != nil {
		return cloneIdentity{}, err
	}
	in := cloneIdentity{
		Name: name, MachineID: newMachineID(), InstanceID: fmt.Sprintf("vmup-%s-%d", name, time.Now().UnixNano()),
		User: user, LoginPub: strings.TrimSpace(loginPub), Host: host, Time: time.Now(),
	}
	return in, validateCloneIdentity(in)
}

// newMachineID is a random machine-id as systemd makes them: a v4 UUID's
// 128 bits, in lowercase hex without dashes.
func newMachineID() string {
	var id [16]byte
	rand.Read(id[:])
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return hex.EncodeToString(id[:])
}

var (
	machineIDRE = lazyRE(`^[0-9a-f]{32}$`)
	// An ed25519 key line as vmup writes them: its comment is a plain word.
	ed25519LineRE = lazyRE(`^ssh-ed25519 ([A-Za-z0-9+/]{68})(?: [A-Za-z0-9@._+:=-]{1,100})?$`)
)

// ed25519Wire is the key blob of an ed25519 public key line, or an error:
// the blob must be the key type and 32 bytes of key, nothing else.
func ed25519Wire(line string) ([]byte, error) {
	m := ed25519LineRE.FindStringSubmatch(line)
	if m == nil {
		return nil, fmt.Errorf("%q is no ssh-ed25519 key line", line)
	}
	wire, err := base64.StdEncoding.DecodeString(m[1])
	want := append(sshString([]byte("ssh-ed25519")), sshString(make([]byte, 32))...)
	if err != nil || len(wire) != len(want) || !bytes.Equal(wire[:len(want)-32], want[:len(want)-32]) {
		return nil, fmt.Errorf("%q is no ssh-ed25519 key line", line)
	}
	return wire, nil
}

// validateCloneIdentity takes nothing but what vmup makes: every value goes
// into a root shell's argv, and the private key into a host key file.
var macRE = lazyRE(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)

func validateCloneIdentity(in cloneIdentity) error {
	if !validName(in.Name) {
		return fmt.Errorf("clone identity: %q is no VM name", in.Name)
	}
	if !machineIDRE.MatchString(in.MachineID) || in.MachineID == strings.Repeat("0", 32) {
		return fmt.Errorf("clone identity: machine-id %q is not 32 lowercase hex digits", in.MachineID)
	}
	digits, ok := strings.CutPrefix(in.InstanceID, "vmup-"+in.Name+"-")
	if _, err := strconv.ParseUint(digits, 10, 64); !ok || err != nil {
		return fmt.Errorf("clone identity: instance-id %q is not vmup-%s-DIGITS", in.InstanceID, in.Name)
	}
	if !validLogin(in.User) {
		return fmt.Errorf("clone identity: %q is no login name", in.User)
	}
	if _, err := ed25519Wire(in.LoginPub); err != nil {
		return fmt.Errorf("clone identity: login key: %w", err)
	}
	wire, err := ed25519Wire(in.Host.Public)
	if err != nil {
		return fmt.Errorf("clone identity: host key: %w", err)
	}
	if err := checkOpenSSHPrivate(in.Host.Private, wire); err != nil {
		return fmt.Errorf("clone identity: host key: %w", err)
	}
	if in.Time.Unix() <= 0 {
		return fmt.Errorf("clone identity: time %v is before 1970", in.Time)
	}
	if in.MAC != "" && !macRE.MatchString(in.MAC) {
		return fmt.Errorf("clone identity: MAC %q is not six lowercase hex pairs", in.MAC)
	}
	return nil
}

// checkOpenSSHPrivate accepts one unencrypted OpenSSH private key block,
// nothing before or after it, whose public key is wire.
func checkOpenSSHPrivate(priv, wire []byte) error {
	const begin = "-----BEGIN OPENSSH PRIVATE KEY-----\n"
	block, rest := pem.Decode(priv)
	if !bytes.HasPrefix(priv, []byte(begin)) || block == nil || block.Type != "OPENSSH PRIVATE KEY" ||
		len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return errors.New("the private key is not one OpenSSH private key block")
	}
	head := append([]byte("openssh-key-v1\x00"), sshString([]byte("none"))...)
	if !bytes.HasPrefix(block.Bytes, head) || !bytes.Contains(block.Bytes, sshString(wire)) {
		return errors.New("the private key is not the unencrypted key of the public one")
	}
	return nil
}

// identityCommand is the ssh remote command that gives the guest identity
// in (the login's shell reads it: each word single-quoted), and the stdin
// it wants. A login other than root runs the script by sudo.
func identityCommand(login string, in cloneIdentity) (remoteCommand string, stdin []byte, err error) {
	if !validLogin(login) {
		return "", nil, fmt.Errorf("clone identity: %q is no login name", login)
	}
	if err := validateCloneIdentity(in); err != nil {
		return "", nil, err
	}
	words := []string{"sh", "-c", singleQuote(identityScript), "sh"}
	if login != "root" {
		words = append([]string{"sudo", "-n"}, words...)
	}
	for _, v := range []string{in.Name, in.MachineID, in.InstanceID, in.User, in.LoginPub, in.Host.Public,
		strconv.FormatInt(in.Time.Unix(), 10), in.MAC} {
		words = append(words, singleQuote(v))
	}
	return strings.Join(words, " "), in.Host.Private, nil
}

// identityOutcome reads identityScript's answer, its stdout and exit code:
// whether sshd serves the new host key to new connections. An error is an
// identity not (or not wholly) given.
func identityOutcome(stdout []byte, exitCode int) (sshdReloaded bool, err error) {
	// The last such line: a login's rc files may print before the script.
	var last string
	for _, line := range strings.Split(string(stdout), "\n") {
		if strings.HasPrefix(line, "vmup-identity done ") {
			last = line
		}
	}
	switch {
	case exitCode == 0 && (last == "vmup-identity done sshd=reloaded" || last == "vmup-identity done sshd=rexec" ||
		last == "vmup-identity done sshd=skipped"):
		return last != "vmup-identity done sshd=skipped", nil
	case exitCode == 3 && last == "vmup-identity done sshd=unreloaded":
		return false, nil
	}
	return false, fmt.Errorf("the guest's identity was not set (exit %d)", exitCode)
}
