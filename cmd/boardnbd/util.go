package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"boardnbd/config"
	"boardnbd/nbd"
)

// newLogger builds the logger the config asks for, writing to w.
func newLogger(c config.Log, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", c.Level, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// exportName is the export name of a PATH argument: its base name.
func exportName(path string) string { return filepath.Base(path) }

// serveInetd serves one client on standard input and output, which inetd,
// systemd (Accept=yes) or nbdinfo's [ CMD ] form connect to a socket.
func serveInetd(a *appliance) int {
	defer a.exports.close()
	nc, err := net.FileConn(os.Stdin)
	if err != nil {
		// Not a socket (a pipe pair): serve over the two descriptors.
		nc = nbd.NewPipeConn(os.Stdin, os.Stdout, pipeAddr{}, func() error {
			os.Stdout.Close()
			return os.Stdin.Close()
		})
	}
	a.srv.ServeConn(nc)
	return 0
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "stdio" }
