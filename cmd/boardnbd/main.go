// Command boardnbd turns a board (or any Linux box) into a network disk
// appliance: it serves block devices and image files over NBD.
//
//	boardnbd serve -c /etc/boardnbd/config.yaml
//	boardnbd serve [--listen ADDR] [--readonly] PATH...
//	boardnbd demo
//	boardnbd check -c FILE
//	boardnbd discover [--json] [--wait NAME]
//	boardnbd version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"boardnbd/config"
)

// Set by the Makefile with -ldflags -X.
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `boardnbd serves disks over NBD.

Usage:
  boardnbd serve -c FILE               serve what the config file lists
  boardnbd serve [flags] PATH...       serve image files or devices, named by base name
  boardnbd demo [flags]                serve a sparse demo image on 127.0.0.1:10809
  boardnbd check -c FILE               check a config file and show what it would serve
  boardnbd discover [flags]            list NBD exports advertised on the network (mDNS)
  boardnbd version                     print version, commit, Go version and target

Run "boardnbd COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(args, stderr)
	case "demo":
		return cmdDemo(args, stderr)
	case "check":
		return cmdCheck(args, stdout, stderr)
	case "discover":
		return cmdDiscover(args, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "boardnbd %s (commit %s) %s %s/%s\n",
			version, commit, runtime.Version(), runtime.GOOS, goarch())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "boardnbd: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

// goarch names the target as the Makefile does: arm builds say which ARM
// (armv6, armv7), from the build settings the binary carries.
func goarch() string {
	if runtime.GOARCH != "arm" {
		return runtime.GOARCH
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "GOARM" {
				return "armv" + strings.TrimSuffix(strings.TrimSuffix(s.Value, ",softfloat"), ",hardfloat")
			}
		}
	}
	return "arm"
}

func cmdServe(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "config `FILE` (YAML)")
	listen := fs.String("listen", "", "listen on `ADDR` (host:port) instead of the config's listen:")
	readonly := fs.Bool("readonly", false, "serve the PATHs read-only")
	inetd := fs.Bool("inetd", false, "serve one client on standard input and output, as inetd starts it")
	pprofAddr := fs.String("pprof", "", "serve Go's profiler on `ADDR`, a loopback host:port (off by default; needs a build with TAGS=pprof)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: boardnbd serve -c FILE\n       boardnbd serve [--listen ADDR] [--readonly] PATH...\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var cfg *config.Config
	switch {
	case *file != "" && fs.NArg() > 0:
		fmt.Fprintln(stderr, "boardnbd serve: give either -c FILE or PATHs, not both")
		return 2
	case *file != "":
		c, err := config.Load(*file)
		if err != nil {
			fmt.Fprintf(stderr, "boardnbd: %v\n", err)
			return 1
		}
		cfg = c
		if *readonly {
			for i := range cfg.Exports {
				cfg.Exports[i].ReadOnly = true
			}
		}
	case fs.NArg() > 0:
		c, err := quickConfig(fs.Args(), *readonly)
		if err != nil {
			fmt.Fprintf(stderr, "boardnbd: %v\n", err)
			return 2
		}
		cfg = c
	default:
		fs.Usage()
		return 2
	}
	if *listen != "" {
		cfg.Listen = []string{*listen}
	}
	if *pprofAddr != "" {
		log, err := newLogger(cfg.Log, stderr)
		if err == nil {
			var ln io.Closer
			if ln, err = startPprof(*pprofAddr, log); err == nil {
				defer ln.Close()
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "boardnbd: %v\n", err)
			return 2
		}
	}
	return serveConfig(cfg, *file, *inetd, stderr)
}

// serveConfig runs the appliance until SIGINT or SIGTERM. SIGHUP reloads
// configPath, if the config came from a file.
func serveConfig(cfg *config.Config, configPath string, inetd bool, stderr io.Writer) int {
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "boardnbd: %v\n", err)
		return 2
	}
	a, err := newAppliance(cfg, log, inetd)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if inetd {
		return serveInetd(a)
	}
	lns, err := a.listeners()
	if err != nil {
		a.exports.close()
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.run(ctx, lns, configPath); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// quickConfig builds the config of "boardnbd serve PATH...".
func quickConfig(paths []string, readonly bool) (*config.Config, error) {
	cfg := config.Default()
	cfg.Discovery.Enabled = false
	for _, p := range paths {
		e := config.DefaultExport()
		e.Name = exportName(p)
		e.Path = p
		e.ReadOnly = readonly
		cfg.Exports = append(cfg.Exports, e)
	}
	if err := cfg.Validate(); err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			return nil, fmt.Errorf("bad PATH arguments:\n%v", err)
		}
		return nil, err
	}
	return cfg, nil
}
