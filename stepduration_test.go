package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Human progress shows how long each step took, on its closing line; the
// JSON step events carry it as duration_s.
func TestStepLinesShowTheirDuration(t *testing.T) {
	var human, events bytes.Buffer
	out := newOutput(&human, &events, "v1")
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	out.now = func() time.Time { return now }
	out.Plan(4)
	out.Step("Waiting for SSH")
	now = now.Add(35*time.Second + 240*time.Millisecond)
	out.Done("127.0.0.1:39331")
	out.Step("Provisioning")
	out.Skip("no playbook")
	out.Step("Waiting for cloud-init")
	now = now.Add(5*time.Minute + 12*time.Second + 600*time.Millisecond)
	out.Fail("timed out")
	out.Step("Checking libvirt")
	now = now.Add(59*time.Second + 960*time.Millisecond)
	out.Done("")

	// Off a terminal each step also says when it begins (no spinner there).
	want := "[1/4] Waiting for SSH …\n[1/4] ✓ Waiting for SSH: 127.0.0.1:39331 (35.2 s)\n" +
		"[2/4] Provisioning …\n[2/4] — Provisioning: no playbook (0.0 s)\n" +
		"[3/4] Waiting for cloud-init …\n[3/4] ✗ Waiting for cloud-init: timed out (5 min 13 s)\n" +
		"[4/4] Checking libvirt …\n[4/4] ✓ Checking libvirt (1 min 0 s)\n"
	if diff := cmp.Diff(want, human.String()); diff != "" {
		t.Errorf("human lines (-want +got):\n%s", diff)
	}

	durations := map[string]float64{}
	for line := range strings.Lines(events.String()) {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		d, has := ev["duration_s"]
		switch ev["event"] {
		case "step_done", "step_skipped", "step_failed":
			if !has {
				t.Errorf("%s event without duration_s: %s", ev["event"], line)
			}
			durations[ev["step"].(string)], _ = d.(float64)
		default:
			if has {
				t.Errorf("%s event with duration_s: %s", ev["event"], line)
			}
		}
	}
	if diff := cmp.Diff(map[string]float64{"1/4": 35.24, "2/4": 0, "3/4": 312.6, "4/4": 59.96}, durations); diff != "" {
		t.Errorf("duration_s of the step events (-want +got):\n%s", diff)
	}
}
