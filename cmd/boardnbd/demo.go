package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"boardnbd/config"
)

// The demo export: a sparse image with a readable first sector, so that a
// newcomer sees real bytes come back.
const (
	demoSize   = 1 << 30
	demoBanner = "boardnbd demo export: this sector was written by boardnbd demo; the rest reads as zeroes.\n"
)

func cmdDemo(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:10809", "listen on `ADDR`")
	image := fs.String("image", filepath.Join(os.TempDir(), "boardnbd-demo.img"), "demo image `PATH`, created if missing")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := makeDemoImage(*image); err != nil {
		fmt.Fprintf(stderr, "boardnbd demo: %v\n", err)
		return 1
	}
	cfg := config.Default()
	cfg.Listen = []string{*listen}
	cfg.Discovery.Enabled = false
	e := config.DefaultExport()
	e.Name = "demo"
	e.Path = *image
	e.Description = "boardnbd demo export (sparse 1 GiB image)"
	cfg.Exports = []config.Export{e}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "boardnbd demo: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "Serving %s as export \"demo\" on %s. Try, in another terminal:\n"+
		"  nbdinfo nbd://%s/demo\n  nbdinfo --map nbd://%s/demo\n"+
		"  nbdcopy nbd://%s/demo - | head -c 96\nStop with Ctrl-C.\n\n",
		*image, *listen, *listen, *listen, *listen)
	return serveConfig(cfg, "", false, stderr)
}

// makeDemoImage creates the sparse demo image unless it exists.
func makeDemoImage(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if os.IsExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(demoSize); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(demoBanner), 0); err != nil {
		return err
	}
	return f.Close()
}
