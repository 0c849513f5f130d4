// The phase table as README.md shows it (readme_test.go keeps the two in step).
package main

import (
	"fmt"
	"slices"
	"strings"
)

// phaseTableMarkdown renders table for README.md: a line per phase, the
// signals in columns of their own, every other handled event in the last.
func phaseTableMarkdown() string {
	signals := []Event{EvInterrupt, EvInterruptAgain, EvTerminate, EvHangup}
	var b strings.Builder
	b.WriteString("| phase | Ctrl+C (`interrupt`) | Ctrl+C within the window (`interrupt_again`) | SIGTERM | SIGHUP | other events |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for p := Phase(0); p < numPhases; p++ {
		if p.Terminal() {
			continue
		}
		fmt.Fprintf(&b, "| `%s` |", p)
		for _, e := range signals {
			cell := "ignored"
			if t, ok := table[p][e]; ok {
				cell = t.describe(p)
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		var others []string
		for e := Event(0); e < numEvents; e++ {
			if t, ok := table[p][e]; ok && !slices.Contains(signals, e) {
				others = append(others, fmt.Sprintf("`%s`: %s", e, t.describe(p)))
			}
		}
		fmt.Fprintf(&b, " %s |\n", strings.Join(others, "<br>"))
	}
	return b.String()
}

// describe says what a row does, as one table cell.
func (t Transition) describe(from Phase) string {
	var acts []string
	for _, a := range t.Actions {
		acts = append(acts, a.String())
	}
	return rowCell(t.Next != from, t.Next.String(), acts, t.Exit)
}

// describe says what a row of the environment's table does.
func (t EnvTransition) describe(from EnvPhase) string {
	var acts []string
	for _, a := range t.Actions {
		acts = append(acts, a.String())
	}
	return rowCell(t.Next != from, t.Next.String(), acts, t.Exit)
}

// rowCell is one row of either table as a cell: the next phase, if it
// changes, the actions, and the exit code, if the row sets one.
func rowCell(moves bool, next string, acts []string, exit int) string {
	var parts []string
	if moves {
		parts = append(parts, "→ `"+next+"`")
	}
	parts = append(parts, acts...)
	if exit != keep {
		parts = append(parts, fmt.Sprintf("exit %d", exit))
	}
	if len(parts) == 0 {
		return "–"
	}
	return strings.Join(parts, ", ")
}

// envPhaseTableMarkdown renders envTable for README.md, as phaseTableMarkdown does table.
func envPhaseTableMarkdown() string {
	signals := []EnvEvent{EnvEvInterrupt, EnvEvInterruptAgain, EnvEvTerminate, EnvEvHangup}
	var b strings.Builder
	b.WriteString("| phase | Ctrl+C (`interrupt`) | Ctrl+C within the window (`interrupt_again`) | SIGTERM | SIGHUP | other events |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for p := EnvPhase(0); p < numEnvPhases; p++ {
		if p.Terminal() {
			continue
		}
		fmt.Fprintf(&b, "| `%s` |", p)
		for _, e := range signals {
			cell := "ignored"
			if t, ok := envTable[p][e]; ok {
				cell = t.describe(p)
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		var others []string
		for e := EnvEvent(0); e < numEnvEvents; e++ {
			if t, ok := envTable[p][e]; ok && !slices.Contains(signals, e) {
				others = append(others, fmt.Sprintf("`%s`: %s", e, t.describe(p)))
			}
		}
		fmt.Fprintf(&b, " %s |\n", strings.Join(others, "<br>"))
	}
	return b.String()
}
