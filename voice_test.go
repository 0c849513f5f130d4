package main

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/token"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// One function prints errors and their hints: no other code calls
// Output.Error or Output.Hint (a call with arguments; err.Error() has none).
func TestErrorsArePrintedOnlyByReportError(t *testing.T) {
	for _, f := range parseSources(t) {
		for _, d := range f.file.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil || fn.Name.Name == "reportError" {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) == 0 {
					return true
				}
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && (sel.Sel.Name == "Error" || sel.Sel.Name == "Hint") {
					t.Errorf("%s: %s prints an error or hint itself; return the error to reportError",
						f.fset.Position(call.Pos()), fn.Name.Name)
				}
				return true
			})
		}
	}
}

// imperatives are the verbs a hint may begin with: it says what to do next.
var imperatives = []string{"run", "give", "choose", "check", "free", "fix", "start", "stop", "remove", "move",
	"install", "press", "wait", "use", "leave", "read", "set", "put", "write", "name", "merge"}

// commandOutsideBackticks finds a command a user would type, written as prose.
var commandOutsideBackticks = regexp.MustCompile(`\bvmup (up|down|destroy|status|ssh|ssh-config|provision|version|--help)\b|\bvirsh |\bapt-get `)

// Every hint in the source has one shape: an imperative that says what to do
// next, lowercase, no trailing period, no question, any command in backticks.
func TestHintsAreImperativesWithCommandsInBackticks(t *testing.T) {
	found := 0
	for _, f := range parseSources(t) {
		check := func(pos token.Pos, e ast.Expr) {
			for _, h := range stringsOf(e) {
				for _, line := range strings.Split(h, "\n") {
					if line == "" || line == "%s" || line == "%v" {
						continue
					}
					found++
					where := f.fset.Position(pos)
					verb, _, _ := strings.Cut(line, " ")
					if !slices.Contains(imperatives, verb) {
						t.Errorf("%s: hint %q does not begin with an imperative", where, line)
					}
					if strings.HasSuffix(line, ".") || strings.Contains(line, "?") {
						t.Errorf("%s: hint %q ends with a period or asks a question", where, line)
					}
					prose := regexp.MustCompile("`[^`]*`").ReplaceAllString(line, "")
					if m := commandOutsideBackticks.FindString(prose); m != "" {
						t.Errorf("%s: hint %q names %q outside backticks", where, line, m)
					}
				}
			}
		}
		ast.Inspect(f.file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "usagef" && len(n.Args) > 0 {
					check(n.Pos(), n.Args[0])
				}
				if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Hint" && len(n.Args) > 0 {
					check(n.Pos(), n.Args[0])
				}
			case *ast.KeyValueExpr:
				if id, ok := n.Key.(*ast.Ident); ok && id.Name == "hint" {
					check(n.Pos(), n.Value)
				}
			case *ast.AssignStmt:
				for i, l := range n.Lhs {
					name := ""
					switch l := l.(type) {
					case *ast.Ident:
						name = l.Name
					case *ast.SelectorExpr:
						name = l.Sel.Name
					}
					if strings.Contains(strings.ToLower(name), "hint") && i < len(n.Rhs) {
						check(n.Pos(), n.Rhs[i])
					}
				}
			case *ast.FuncDecl:
				if n.Recv != nil && n.Name.Name == "Hint" && n.Body != nil {
					ast.Inspect(n.Body, func(m ast.Node) bool {
						if r, ok := m.(*ast.ReturnStmt); ok && len(r.Results) == 1 {
							check(r.Pos(), r.Results[0])
						}
						return true
					})
				}
			}
			return true
		})
	}
	if found < 20 {
		t.Errorf("found only %d hints in the source; is the search broken?", found)
	}
}

// stringsOf returns the text (or format) of a string expression: literals,
// their concatenation, fmt.Sprintf's format, strings.Join's elements.
func stringsOf(e ast.Expr) []string {
	switch e := e.(type) {
	case *ast.BasicLit:
		if s, err := strconv.Unquote(e.Value); err == nil && e.Kind == token.STRING {
			return []string{s}
		}
	case *ast.ParenExpr:
		return stringsOf(e.X)
	case *ast.BinaryExpr:
		if e.Op == token.ADD {
			l, r := stringsOf(e.X), stringsOf(e.Y)
			if len(l) == 0 {
				l = []string{"%v"}
			}
			if len(r) == 0 {
				r = []string{"%v"}
			}
			return []string{l[0] + r[0]}
		}
	case *ast.CallExpr:
		sel, ok := e.Fun.(*ast.SelectorExpr)
		if !ok || len(e.Args) == 0 {
			return nil
		}
		pkg, _ := sel.X.(*ast.Ident)
		switch {
		case pkg != nil && pkg.Name == "fmt" && sel.Sel.Name == "Sprintf":
			return stringsOf(e.Args[0])
		case pkg != nil && pkg.Name == "strings" && sel.Sel.Name == "Join":
			var out []string
			if lit, ok := e.Args[0].(*ast.CompositeLit); ok {
				for _, el := range lit.Elts {
					out = append(out, stringsOf(el)...)
				}
			}
			return out
		}
	}
	return nil
}

// Errors say what failed: no question, no advice (that is the hint's), no
// trailing period.
func TestErrorsSayWhatFailed(t *testing.T) {
	advice := regexp.MustCompile("`" + `|\?|\btry\b|\bsee\b|\(set |[^.]\.$`)
	for _, f := range parseSources(t) {
		check := func(pos token.Pos, e ast.Expr) {
			for _, msg := range stringsOf(e) {
				if m := advice.FindString(msg); m != "" {
					t.Errorf("%s: error %q gives advice or asks (%q): put it in a hint", f.fset.Position(pos), msg, m)
				}
			}
		}
		ast.Inspect(f.file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if id, isID := n.Fun.(*ast.Ident); isID && id.Name == "usagef" && len(n.Args) > 1 {
					check(n.Pos(), n.Args[1])
				} else if ok && len(n.Args) > 0 {
					if pkg, _ := sel.X.(*ast.Ident); pkg != nil && (pkg.Name == "fmt" && sel.Sel.Name == "Errorf" || pkg.Name == "errors" && sel.Sel.Name == "New") {
						check(n.Pos(), n.Args[0])
					}
				}
			case *ast.KeyValueExpr:
				if id, ok := n.Key.(*ast.Ident); ok && id.Name == "msg" {
					check(n.Pos(), n.Value)
				}
			}
			return true
		})
	}
}

// reportError prints the error, then each line of its hint as a hint of its
// own, and returns the exit code the error carries.
func TestReportErrorPrintsHintsAndReturnsTheCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		code int
		want string
	}{
		{errors.New("boom"), exitFailed, "vmup: error: boom\n"},
		{usagef("run `vmup up --help` to see its flags", "bad flag"), exitUsage,
			"vmup: error: bad flag\nvmup: hint: run `vmup up --help` to see its flags\n"},
		{fmt.Errorf("context: %w", usagef("", "bad flag")), exitUsage, "vmup: error: bad flag\n"},
		{&hintedError{msg: "VM v1 is busy", code: exitBusy}, exitBusy, "vmup: error: VM v1 is busy\n"},
		{&hintedError{msg: "it failed", hint: "run `vmup ssh v1` to look\nrun `vmup destroy v1` to remove it"}, exitFailed,
			"vmup: error: it failed\nvmup: hint: run `vmup ssh v1` to look\nvmup: hint: run `vmup destroy v1` to remove it\n"},
		{fmt.Errorf("up: %w", &hintedError{msg: "gone", hint: "run `vmup destroy v1` to clear it", code: exitStopFailed}), exitStopFailed,
			"vmup: error: up: gone\nvmup: hint: run `vmup destroy v1` to clear it\n"},
	} {
		var buf bytes.Buffer
		if code := reportError(newOutput(&buf, nil, ""), c.err); code != c.code || buf.String() != c.want {
			t.Errorf("reportError(%v) = %d, printed\n%s\nwant %d,\n%s", c.err, code, buf.String(), c.code, c.want)
		}
	}
}

// A prepare that is refused (exit 2) prints its error and hint once.
func TestRejectedPrepareReportsItsErrorOnce(t *testing.T) {
	h := newHarness(t)
	h.createDetached()
	if code := h.wait(h.up("v1", "--memory", "4096")); code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, h.stderr)
	}
	out := h.stderr.String()
	if n := strings.Count(out, "vmup: error: "); n != 1 || !strings.Contains(out, "vmup: error: VM v1 is running with other settings") {
		t.Errorf("%d errors, want the one about the settings:\n%s", n, out)
	}
	if n := strings.Count(out, "vmup: hint: "); n != 1 || !strings.Contains(out, "vmup: hint: run `vmup down v1` first") {
		t.Errorf("%d hints, want the one to run vmup down:\n%s", n, out)
	}
}
