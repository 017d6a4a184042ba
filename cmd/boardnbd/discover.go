package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"boardnbd/discovery"
)

// Timing of "boardnbd discover".
const (
	discoverTimeout     = 3 * time.Second // one browse, without --wait
	discoverWaitTimeout = time.Minute     // --wait, unless --timeout says otherwise
	discoverRound       = 2 * time.Second // one browse of --wait
	discoverMinRound    = 200 * time.Millisecond
)

// browseFunc is discovery.Browse; tests replace it.
var browseFunc = discovery.Browse

// cmdDiscover implements "boardnbd discover": browse for NBD exports
// advertised over mDNS / DNS-SD and print them, or wait for one.
func cmdDiscover(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("discover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 0, "browse for `D`; with --wait, give up after D (default 3s, with --wait 1m)")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	wait := fs.String("wait", "", "browse until an export `NAME` appears; exit 1 if none does by the timeout")
	var ifaces []string
	fs.Func("interface", "browse on interface `IF` only (repeat or separate with commas)", func(s string) error {
		for _, name := range strings.Split(s, ",") {
			if name = strings.TrimSpace(name); name != "" {
				ifaces = append(ifaces, name)
			}
		}
		return nil
	})
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: boardnbd discover [--timeout D] [--json] [--wait NAME] [--interface IF]\n\n"+
			"Lists the NBD exports advertised over mDNS / DNS-SD (_nbd._tcp) on the local links.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "boardnbd discover: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	waiting := isFlagSet(fs, "wait")
	if *timeout < 0 {
		fmt.Fprintf(stderr, "boardnbd discover: --timeout %v: want a positive duration\n", *timeout)
		return 2
	}
	if *timeout == 0 {
		*timeout = discoverTimeout
		if waiting {
			*timeout = discoverWaitTimeout
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if !waiting {
		found, err := browseFunc(ctx, discovery.BrowseConfig{Interfaces: ifaces, Timeout: *timeout})
		if err != nil {
			fmt.Fprintf(stderr, "boardnbd discover: %v\n", err)
			return 1
		}
		if len(found) == 0 && !*asJSON {
			fmt.Fprintf(stderr, "boardnbd discover: no NBD exports found in %v\n", *timeout)
			return 0
		}
		return printFound(found, *asJSON, stdout, stderr)
	}

	deadline := time.Now().Add(*timeout)
	for ctx.Err() == nil {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		began := time.Now()
		found, err := browseFunc(ctx, discovery.BrowseConfig{Interfaces: ifaces, Timeout: min(discoverRound, left)})
		if err != nil {
			fmt.Fprintf(stderr, "boardnbd discover: %v\n", err)
			return 1
		}
		var match []discovery.Found
		for _, f := range found {
			if f.Export == *wait {
				match = append(match, f)
			}
		}
		if len(match) > 0 {
			return printFound(match, *asJSON, stdout, stderr)
		}
		if d := time.Since(began); d < discoverMinRound { // never spin
			time.Sleep(min(discoverMinRound-d, max(time.Until(deadline), 0)))
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintf(stderr, "boardnbd discover: interrupted before export %q appeared\n", *wait)
		return 1
	}
	fmt.Fprintf(stderr, "boardnbd discover: no export %q appeared within %v\n", *wait, *timeout)
	return 1
}

// isFlagSet reports whether the command line set the flag, even to "".
func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// foundJSON is one export as --json prints it: the Found fields and the
// URI.
type foundJSON struct {
	discovery.Found
	URI string `json:"uri"`
}

// printFound writes the exports as a table or as a JSON array.
func printFound(found []discovery.Found, asJSON bool, stdout, stderr io.Writer) int {
	if asJSON {
		out := make([]foundJSON, 0, len(found))
		for _, f := range found {
			out = append(out, foundJSON{Found: f, URI: f.URI()})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "boardnbd discover: %v\n", err)
			return 1
		}
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EXPORT\tHOST\tADDRESS\tPORT\tSIZE\tRO\tTLS\tURI")
	for _, f := range found {
		addr, size := "-", "-"
		if len(f.Addrs) > 0 {
			addr = f.Addrs[0].String()
		}
		if f.Size > 0 {
			size = humanSize(f.Size)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
			printable(f.Export), printable(f.Host), addr, f.Port, size, yesNo(f.ReadOnly), yesNo(f.TLS), f.URI())
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "boardnbd discover: %v\n", err)
		return 1
	}
	return 0
}

// printable quotes a name that holds tabs, newlines or other control
// characters, which a neighbour may advertise to garble the table.
func printable(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
