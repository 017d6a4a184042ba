//go:build !pprof

package main

import (
	"errors"
	"log/slog"
	"net"
)

// startPprof: the profiler (and net/http with it, 1.5 MB) is left out of
// builds without the pprof tag, to keep the board's binary small.
func startPprof(string, *slog.Logger) (net.Listener, error) {
	return nil, errors.New("--pprof: this build has no profiler; build with: make TAGS=pprof")
}
