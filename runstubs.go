package main

// TEMPORARY: replaced by the helpers' runproto.go and transfer.go.

import (
	"context"
)

func syncSpec(spec string) (string, string, error)                                  { return "", "", nil }
func syncToGuest(ctx context.Context, s *SSH, hostDir, guestDir string) error       { return nil }
func collectFromGuest(ctx context.Context, s *SSH, guestPath, hostDir string) error { return nil }
