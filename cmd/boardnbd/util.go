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

// serveInetd serves one client on standard input and output: a socket from
// inetd or systemd (Accept=yes), or a pipe pair.
func serveInetd(a *appliance) int {
	defer a.exports.close()
	// net.FileConn would set O_NONBLOCK on the descriptor before finding
	// out it is not a socket, and a pipe shared with the parent would then
	// read EAGAIN; so look first.
	var nc net.Conn
	if fi, err := os.Stdin.Stat(); err == nil && fi.Mode()&os.ModeSocket != 0 {
		nc, err = net.FileConn(os.Stdin)
		if err != nil {
			a.log.Error("inetd: standard input is a socket that cannot be used", "err", err)
			return 1
		}
	} else {
		// A pipe pair: serve over the two descriptors.
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
