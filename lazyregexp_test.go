package main

import (
	"regexp"
	"testing"
)

// A lazy pattern that does not compile would panic at its first use, in a
// user's command: every one compiles here.
func TestLazyPatternsCompile(t *testing.T) {
	if len(lazyPatterns) < 40 {
		t.Fatalf("%d lazy patterns; vmup has more", len(lazyPatterns))
	}
	for _, p := range lazyPatterns {
		if _, err := regexp.Compile(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
}
