package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// envelopeFields are the fields every event carries, documented once.
var envelopeFields = []string{"time", "vm", "phase", "event", "message"}

// eventCallRE finds the event names the code passes to Output: Say, emit,
// finishStep, message (Warn, Hint, Error), and jsonEvent literals.
var eventCallRE = regexp.MustCompile(`(?:\.Say\(|\bemit\(|\bfinishStep\("[^"]*", *|\.message\(|Event: *)"([a-z_]+)"`)

// codeEvents scans the non-test Go source: every event name the code can
// emit, with the fields (JSON names, envelope aside) a jsonEvent literal of
// that name sets, or that are assigned to it afterwards.
func codeEvents(t *testing.T) map[string][]string {
	t.Helper()
	tags := map[string]string{} // Go field name -> JSON name
	rt := reflect.TypeFor[jsonEvent]()
	for i := range rt.NumField() {
		tags[rt.Field(i).Name], _, _ = strings.Cut(rt.Field(i).Tag.Get("json"), ",")
	}
	events := map[string][]string{}
	add := func(ev, field string) {
		if !slices.Contains(envelopeFields, field) && !slices.Contains(events[ev], field) {
			events[ev] = append(events[ev], field)
		}
	}
	sources, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, name := range sources {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range eventCallRE.FindAllStringSubmatch(string(data), -1) {
			if events[m[1]] == nil {
				events[m[1]] = []string{}
			}
		}
		f, err := parser.ParseFile(fset, name, data, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			vars := map[string]string{} // ev := jsonEvent{Event: "x"} -> ev: x
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.AssignStmt:
					if lit, ok := n.Rhs[0].(*ast.CompositeLit); ok && len(n.Lhs) == 1 {
						if id, ok := n.Lhs[0].(*ast.Ident); ok {
							vars[id.Name] = literalEvent(lit)
						}
					}
					for _, lhs := range n.Lhs {
						if sel, ok := lhs.(*ast.SelectorExpr); ok {
							if id, ok := sel.X.(*ast.Ident); ok && vars[id.Name] != "" {
								add(vars[id.Name], tags[sel.Sel.Name])
							}
						}
					}
				case *ast.CompositeLit:
					if ev := literalEvent(n); ev != "" {
						for _, el := range n.Elts {
							if kv, ok := el.(*ast.KeyValueExpr); ok {
								add(ev, tags[kv.Key.(*ast.Ident).Name])
							}
						}
					}
				case *ast.CallExpr:
					// emit(event, message, step, exit): a step or an exit code given.
					if id, ok := n.Fun.(*ast.SelectorExpr); ok && id.Sel.Name == "emit" && len(n.Args) == 4 {
						if lit, ok := n.Args[0].(*ast.BasicLit); ok {
							ev, _ := strconv.Unquote(lit.Value)
							if s, ok := n.Args[2].(*ast.BasicLit); !ok || s.Value != `""` {
								add(ev, "step")
							}
							if nilArg, ok := n.Args[3].(*ast.Ident); !ok || nilArg.Name != "nil" {
								add(ev, "exit_code")
							}
						}
					}
				}
				return true
			})
		}
	}
	return events
}

// literalEvent is the event name of a jsonEvent{Event: "x", …} literal, or "".
func literalEvent(lit *ast.CompositeLit) string {
	if id, ok := lit.Type.(*ast.Ident); !ok || id.Name != "jsonEvent" {
		return ""
	}
	for _, el := range lit.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok && kv.Key.(*ast.Ident).Name == "Event" {
			if s, ok := kv.Value.(*ast.BasicLit); ok {
				ev, _ := strconv.Unquote(s.Value)
				return ev
			}
		}
	}
	return ""
}

// readmeEvents reads README's JSON events section: the envelope's fields, the
// events of the envelope-only table, and each `#### `event“ heading's fields.
func readmeEvents(t *testing.T) (envelope []string, events map[string][]string) {
	t.Helper()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## JSON events\n")
	if !ok {
		t.Fatal("README.md has no JSON events section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	events = map[string][]string{}
	names := regexp.MustCompile("`([a-z_]+)`")
	var current []string // the events the table under way is about
	table := ""          // envelope, plain or fields
	for _, line := range strings.Split(section, "\n") {
		switch {
		case strings.HasPrefix(line, "#### "):
			current, table = nil, "fields"
			for _, m := range names.FindAllStringSubmatch(line, -1) {
				current = append(current, m[1])
				events[m[1]] = []string{}
			}
		case line == "| field | meaning |" && current == nil:
			table = "envelope"
		case line == "| event | when |":
			table = "plain"
		case strings.HasPrefix(line, "| `"):
			cell, _, _ := strings.Cut(line[1:], "|")
			for _, m := range names.FindAllStringSubmatch(cell, -1) {
				switch table {
				case "envelope":
					envelope = append(envelope, m[1])
				case "plain":
					events[m[1]] = []string{}
				case "fields":
					for _, ev := range current {
						events[ev] = append(events[ev], m[1])
					}
				}
			}
		}
	}
	return envelope, events
}

// The README's JSON events section is the schema scripts rely on: every event
// the code can emit is in it with the fields the code gives it, every event
// it lists exists, and every field of jsonEvent is explained.
func TestReadmeJSONEventsMatchTheCode(t *testing.T) {
	code := codeEvents(t)
	envelope, doc := readmeEvents(t)
	if !slices.Equal(envelope, envelopeFields) {
		t.Errorf("README's envelope table lists %v, want %v", envelope, envelopeFields)
	}
	for ev, fields := range code {
		docFields, ok := doc[ev]
		if !ok {
			t.Errorf("README's JSON events do not list the event %q", ev)
			continue
		}
		for _, f := range fields {
			if !slices.Contains(docFields, f) {
				t.Errorf("README's table of the event %q lacks its field %q", ev, f)
			}
		}
	}
	documented := slices.Clone(envelope)
	for ev, fields := range doc {
		if _, ok := code[ev]; !ok {
			t.Errorf("README lists the event %q, which no code emits", ev)
		}
		documented = append(documented, fields...)
	}
	rt := reflect.TypeFor[jsonEvent]()
	for i := range rt.NumField() {
		tag, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if !slices.Contains(documented, tag) {
			t.Errorf("README's JSON events explain no field %q (jsonEvent.%s)", tag, rt.Field(i).Name)
		}
	}
	if len(code) < 30 {
		t.Errorf("the scan found only %d events: %v", len(code), code)
	}
}
