// The phase table as README.md shows it (readme_test.go keeps the two in step).
package main

import (
	"fmt"
	"slices"
	"strings"
)

// phaseTableMarkdown renders table for README.md.
func phaseTableMarkdown() string {
	return tableMarkdown(numPhases, numEvents, []Event{EvInterrupt, EvInterruptAgain, EvTerminate, EvHangup},
		func(p Phase, e Event) (string, bool) {
			t, ok := table[p][e]
			return t.describe(p), ok
		})
}

// envPhaseTableMarkdown renders envTable for README.md.
func envPhaseTableMarkdown() string {
	return tableMarkdown(numEnvPhases, numEnvEvents, []EnvEvent{EnvEvInterrupt, EnvEvInterruptAgain, EnvEvTerminate, EnvEvHangup},
		func(p EnvPhase, e EnvEvent) (string, bool) {
			t, ok := envTable[p][e]
			return t.describe(p), ok
		})
}

// runPhaseTableMarkdown renders runTable for README.md.
func runPhaseTableMarkdown() string {
	return tableMarkdown(numRunPhases, numRunEvents, []RunEvent{RunEvInterrupt, RunEvInterruptAgain, RunEvTerminate, RunEvHangup},
		func(p RunPhase, e RunEvent) (string, bool) {
			t, ok := runTable[p][e]
			return t.describe(p), ok
		})
}

// tableMarkdown renders a lifecycle table: a line per phase that is not
// terminal, the signals in columns of their own, every other handled event
// in the last; cell says what event e does in phase p, if it is handled.
func tableMarkdown[P interface {
	~int
	fmt.Stringer
	Terminal() bool
}, E interface {
	~int
	fmt.Stringer
}](numP P, numE E, signals []E, cell func(P, E) (string, bool)) string {
	var b strings.Builder
	b.WriteString("| phase | Ctrl+C (`interrupt`) | Ctrl+C within the window (`interrupt_again`) | SIGTERM | SIGHUP | other events |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for p := P(0); p < numP; p++ {
		if p.Terminal() {
			continue
		}
		fmt.Fprintf(&b, "| `%s` |", p)
		for _, e := range signals {
			c, ok := cell(p, e)
			if !ok {
				c = "ignored"
			}
			fmt.Fprintf(&b, " %s |", c)
		}
		var others []string
		for e := E(0); e < numE; e++ {
			if c, ok := cell(p, e); ok && !slices.Contains(signals, e) {
				others = append(others, fmt.Sprintf("`%s`: %s", e, c))
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

// describe says what a row of the run's table does; its end, if it sets
// one, and an exit code taken from the event.
func (t RunTransition) describe(from RunPhase) string {
	var acts []string
	for _, a := range t.Actions {
		acts = append(acts, a.String())
	}
	exit := t.Exit
	if exit == fromEvent {
		acts = append(acts, "exit: the event's code")
		exit = keep
	}
	if t.End != runKeepEnd {
		acts = append(acts, "ends `"+t.End.String()+"`")
	}
	return rowCell(t.Next != from, t.Next.String(), acts, exit)
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
