package main

// TEMPORARY: replaced by the helpers' runproto.go and transfer.go.

import (
	"context"
	"errors"
	"io"
	"regexp"
	"time"
)

type runnerState struct {
	Started       bool
	PGID          int
	Exited        bool
	ExitCode      int
	StopConfirmed bool
	ConfirmCode   int
	Missing       bool
}

var runIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

func validRunID(s string) bool      { return runIDRE.MatchString(s) }
func newRunID(now time.Time) string { return now.UTC().Format("20060102-150405") + "-abcdef" }
func startRunner(ctx context.Context, s *SSH, runID string, argv []string, stopTimeout time.Duration) error {
	return nil
}
func pollRunner(ctx context.Context, s *SSH, runID string, logOffset int64) (runnerState, []byte, error) {
	return runnerState{}, nil, nil
}
func requestStop(ctx context.Context, s *SSH, runID string) error { return nil }
func stopRunner(ctx context.Context, s *SSH, runID string, deadline time.Time, poll time.Duration) (int, error) {
	return 0, nil
}
func prefixLines(w io.Writer, prefix string) io.WriteCloser                         { return nil }
func syncSpec(spec string) (string, string, error)                                  { return "", "", nil }
func syncToGuest(ctx context.Context, s *SSH, hostDir, guestDir string) error       { return nil }
func collectFromGuest(ctx context.Context, s *SSH, guestPath, hostDir string) error { return nil }

var errStopUnconfirmed = errors.New("stop unconfirmed")
