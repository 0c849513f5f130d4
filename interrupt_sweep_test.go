package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// interruptAt runs `up args` and sends SIGINT while the n-th virsh call
// (counted from the start of this up) is being made; the call then completes.
func (h *harness) interruptAt(n int, args ...string) (code int, hit string) {
	count := 0
	var mu sync.Mutex
	h.fake.onCall = func(a []string) {
		if a[0] != "virsh" {
			return
		}
		mu.Lock()
		count++
		c := count
		mu.Unlock()
		// The world is the fake's, under its lock: a wipe's calls run at once.
		if c == n+1 && h.killHit {
			h.fake.mu.Lock()
			h.fake.world.Fail = map[string]string{} // a killed call fails once; the next ones run
			h.fake.mu.Unlock()
		}
		if c == n {
			hit = strings.Join(a, " ")
			if h.killHit {
				h.fake.mu.Lock()
				h.fake.world.Fail[strings.Join(a[1:], " ")] = "error: killed by signal"
				h.fake.mu.Unlock()
			}
			h.events.mu.Lock()
			before := len(h.events.events)
			h.events.mu.Unlock()
			h.sigs <- syscall.SIGINT
			for i := 0; i < 500; i++ {
				h.events.mu.Lock()
				seen := false
				for _, ev := range h.events.events[before:] {
					if ev.Event == "aborting" || ev.Event == "stopping" || ev.Event == "confirm_abort" || ev.Event == "exit" {
						seen = true
					}
				}
				h.events.mu.Unlock()
				if seen {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	code = h.wait(h.up(args...))
	h.fake.onCall = nil
	h.fake.world.Fail = map[string]string{}
	return code, hit
}

func (h *harness) leftovers() []string {
	var left []string
	for v := range h.fake.world.Volumes {
		if strings.HasPrefix(v, "vmup/v1") {
			left = append(left, v)
		}
	}
	if _, ok := h.fake.world.Domains["v1"]; ok {
		left = append(left, "domain v1")
	}
	if _, err := os.Stat(pathsFor(h.env.Home, "v1").Dir); err == nil {
		left = append(left, "state dir")
	}
	return left
}

func TestInterruptAtEveryStepOfFreshPreparingLeavesNothing(t *testing.T) {
	for i := 1; i <= 60; i++ {
		n, kill := (i+1)/2, i%2 == 0
		t.Run(fmt.Sprint(n, kill), func(t *testing.T) {
			h := newHarness(t)
			h.killHit = kill
			code, hit := h.interruptAt(n, h.upArgs("-d")...)
			if hit == "" {
				t.Skip("fewer calls")
			}
			if code != exitSIGINT {
				return // past Preparing
			}
			if left := h.leftovers(); len(left) > 0 {
				t.Errorf("SIGINT at %q: exit %d, left %v", hit, code, left)
			}
			for v := range h.fake.world.Volumes {
				if strings.HasPrefix(v, "vmup/vmup-base-") && !strings.HasSuffix(v, ".complete") && !h.fake.world.Volumes[v+".complete"] {
					t.Errorf("SIGINT at %q: unmarked base %s left", hit, v)
				}
			}
		})
	}
}

// A completed VM, shut off, re-upped with changed settings (and a pending
// seed replacement): every interrupt in Preparing keeps a bootable VM whose
// journal matches its domain.
func TestInterruptAtEveryStepOfReupPreparingKeepsTheVM(t *testing.T) {
	for i := 1; i <= 40; i++ {
		n, kill := (i+1)/2, i%2 == 0
		t.Run(fmt.Sprint(n, kill), func(t *testing.T) {
			h := newHarness(t)
			h.createDetached()
			h.fake.world.Domains["v1"] = "shut off"
			h.killHit = kill
			code, hit := h.interruptAt(n, "v1", "-d", "--network", "nat", "--cpus", "3")
			if hit == "" {
				t.Skip("fewer calls")
			}
			if code != exitSIGINT {
				return
			}
			j := h.journal()
			xml := h.fake.world.XML["v1"]
			userDomain := strings.Contains(xml, "hostfwd")
			if (j.Network == "user") != userDomain {
				t.Errorf("SIGINT at %q: journal network %s, domain hostfwd %v", hit, j.Network, userDomain)
			}
			for _, vol := range []string{"v1.qcow2", "v1-seed-boot.iso"} {
				if strings.Contains(xml, vol) && !h.fake.world.Volumes["vmup/"+vol] {
					t.Errorf("SIGINT at %q: domain uses %s, which is gone", hit, vol)
				}
			}
			if !j.FirstBootDone {
				t.Errorf("SIGINT at %q: first_boot_done false", hit)
			}
		})
	}
}

// tracked checks that vmup can still find everything of v1: each v1 volume in
// the pool is in the journal, and a domain has a journal.
func (h *harness) tracked(what string) {
	h.t.Helper()
	j, err := readJournal(pathsFor(h.env.Home, "v1"))
	if err != nil {
		h.t.Errorf("%s: journal: %v", what, err)
		return
	}
	for v := range h.fake.world.Volumes {
		vol, ok := strings.CutPrefix(v, "vmup/v1")
		if !ok {
			continue
		}
		vol = "v1" + vol
		if j == nil || !slices.Contains(j.Volumes, vol) {
			h.t.Errorf("%s: volume %s is in no journal (journal %v)", what, vol, j != nil)
		}
	}
	if _, ok := h.fake.world.Domains["v1"]; ok && j == nil {
		h.t.Errorf("%s: domain v1 without a journal", what)
	}
}

func TestInterruptAtEveryStepOfRecoveryAndReset(t *testing.T) {
	for _, mode := range []string{"recover", "reset"} {
		for i := 1; i <= 70; i++ {
			n, kill := (i+1)/2, i%2 == 0
			t.Run(fmt.Sprint(mode, n, kill), func(t *testing.T) {
				h := newHarness(t)
				h.createDetached()
				args := h.upArgs("-d", "--reset")
				if mode == "recover" {
					setJournalField(t, pathsFor(h.env.Home, "v1").Journal(), "first_boot_done", false)
					setJournalField(t, pathsFor(h.env.Home, "v1").Journal(), "phase", "provisioning")
					args = h.upArgs("-d")
				}
				h.killHit = kill
				code, hit := h.interruptAt(n, args...)
				if hit == "" {
					t.Skip("fewer calls")
				}
				if code != exitSIGINT {
					return
				}
				h.tracked(fmt.Sprintf("SIGINT at %q (exit %d)", hit, code))
				// and the next up cleans up and succeeds
				h.stderr.Reset()
				if c := h.wait(h.up(h.upArgs("-d")...)); c != 0 && mode == "recover" {
					t.Errorf("SIGINT at %q; next up: exit %d\n%s", hit, c, h.stderr)
				}
			})
		}
	}
}
