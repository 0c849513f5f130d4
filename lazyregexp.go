package main

import (
	"regexp"
	"sync"
)

// lazyRegexp is a pattern compiled at its first use: compiling all of
// vmup's at start cost every command ≈ 5 ms, most of them never used.
type lazyRegexp struct{ get func() *regexp.Regexp }

// lazyPatterns are every lazyRE's, for a test to compile them all.
var lazyPatterns []string

func lazyRE(pattern string) lazyRegexp {
	lazyPatterns = append(lazyPatterns, pattern)
	return lazyRegexp{sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })}
}

func (l lazyRegexp) Match(b []byte) bool       { return l.get().Match(b) }
func (l lazyRegexp) MatchString(s string) bool { return l.get().MatchString(s) }
func (l lazyRegexp) ReplaceAll(src, repl []byte) []byte {
	return l.get().ReplaceAll(src, repl)
}
func (l lazyRegexp) ReplaceAllLiteral(src, repl []byte) []byte {
	return l.get().ReplaceAllLiteral(src, repl)
}
func (l lazyRegexp) FindSubmatch(b []byte) [][]byte { return l.get().FindSubmatch(b) }
func (l lazyRegexp) FindStringSubmatch(s string) []string {
	return l.get().FindStringSubmatch(s)
}
func (l lazyRegexp) FindAllIndex(b []byte, n int) [][]int { return l.get().FindAllIndex(b, n) }
func (l lazyRegexp) FindAllSubmatch(b []byte, n int) [][][]byte {
	return l.get().FindAllSubmatch(b, n)
}
func (l lazyRegexp) FindAllStringSubmatch(s string, n int) [][]string {
	return l.get().FindAllStringSubmatch(s, n)
}
