package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"boardnbd/config"
)

// cmdCheck validates a config file and shows, for each export, what would
// be served. It opens storage as serve would, writes nothing and serves
// nothing.
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "config `FILE` (YAML)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "Usage: boardnbd check -c FILE")
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid; listen %s; %d export(s)\n", *file, strings.Join(cfg.Listen, ", "), len(cfg.Exports))
	failed := 0
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, ec := range cfg.Exports {
		fmt.Fprintf(tw, "\nexport %q (line %d)\n", ec.Name, ec.Line)
		if ec.PerClient() {
			fmt.Fprintf(tw, "  path\t%s (opened per client: %%s is the client's address)\n", ec.Path)
			continue
		}
		// Opened as the server would (read-write unless the export is
		// read-only, so the device's own read-only state shows), but
		// never written to.
		// A device held by something else (a running boardnbd, a mount)
		// is opened anyway and reported, since check writes nothing.
		probe := ec
		probe.CopyOnWrite = ""
		probe.AllowInUse = true
		st, err := openStorage(&probe, ec.Path, "")
		if err != nil {
			fmt.Fprintf(tw, "  error\t%v\n", err)
			failed++
			continue
		}
		b, d := st.b, st.desc
		fmt.Fprintf(tw, "  path\t%s\n", d.Path)
		if d.ResolvedPath != d.Path {
			fmt.Fprintf(tw, "  resolves to\t%s\n", d.ResolvedPath)
		}
		fmt.Fprintf(tw, "  kind\t%s\n", kindName(st))
		fmt.Fprintf(tw, "  size\t%d bytes (%s)\n", b.Size(), humanSize(b.Size()))
		if d.LogicalSector > 0 {
			fmt.Fprintf(tw, "  sectors\t%d logical, %d physical\n", d.LogicalSector, d.PhysicalSector)
		}
		ro := "no"
		switch {
		case ec.CopyOnWrite != "":
			ro = "no (copy-on-write: " + ec.CopyOnWrite + "; the storage itself is never written)"
		case ec.ReadOnly:
			ro = "yes (readonly: true in the config)"
		case d.ReadOnly:
			ro = "yes (" + d.ReadOnlyReason + ")"
		}
		fmt.Fprintf(tw, "  read-only\t%s\n", ro)
		fmt.Fprintf(tw, "  rotational\t%v\n", d.Rotational)
		if d.InUse {
			if ec.AllowInUse {
				fmt.Fprintf(tw, "  in use\tyes: mounted or held by another program (allow_in_use: true serves it anyway)\n")
			} else {
				fmt.Fprintf(tw, "  in use\tyes: mounted or held by another program, perhaps a running boardnbd;\n\t  serve will refuse it unless that is boardnbd itself or allow_in_use: true is set\n")
			}
		}
		b.Close()
	}
	tw.Flush()
	if failed > 0 {
		fmt.Fprintf(stdout, "\n%d export(s) cannot be served now\n", failed)
		return 1
	}
	return 0
}

// humanSize formats a byte count with a binary unit.
func humanSize(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}
