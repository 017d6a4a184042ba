//go:build linux

// Command nbdbench measures boardnbd side by side with nbdkit, nbd-server
// and qemu-nbd on loopback, each serving its own copy of the same image in
// tmpfs, with independent clients: nbdcopy for sequential copies and fio's
// nbd engine for random and large I/O. It reports throughput, p99 latency
// and the server's CPU time per unit of work, as medians over rounds in
// which the servers take turns, then system calls per request (perf stat
// and strace -c) and boardnbd's memory footprint.
//
//	go run ./cmd/nbdbench                 # about 10 minutes: 5 rounds
//	go run ./cmd/nbdbench -quick          # under a minute: smoke test
//	go run ./cmd/nbdbench -servers boardnbd,nbdkit -rounds 9
//
// It owns no part of boardnbd: it builds ./cmd/boardnbd and runs the
// binary like any other server. It needs fio, nbdcopy (libnbd-bin) and the
// peer servers (nbdkit, nbd-server, qemu-utils); peers that are missing are
// skipped and said to be. The report goes to standard output, progress to
// standard error.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(argv []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nbdbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rounds := fs.Int("rounds", 5, "rounds; each runs every workload on every server, servers taking turns")
	fioTime := fs.Duration("time", 4*time.Second, "length of each fio run")
	sizeMiB := fs.Int64("size", 512, "image size in MiB (each server has its own copy, in tmpfs)")
	servers := fs.String("servers", strings.Join(allServers, ","), "servers to measure, comma-separated")
	wls := fs.String("workloads", "", "workloads to run, comma-separated (default all: "+workloadKeys()+")")
	conns := fs.String("conns", "100,1000", "idle connection counts for boardnbd's memory per connection")
	quick := fs.Bool("quick", false, "smoke test: 1 round, 1s fio runs, 128 MiB images, 100 idle connections, no syscall counts")
	sys := fs.Bool("syscalls", true, "count the servers' system calls per I/O (perf stat, strace -c)")
	sysTime := fs.Duration("syscall-time", 2*time.Second, "length of each fio run under perf stat and under strace")
	copyTimeout := fs.Duration("copy-timeout", 30*time.Second, "stop an nbdcopy run after this long and report the rate over the part copied")
	foot := fs.Bool("footprint", true, "measure boardnbd's binary size and memory")
	settle := fs.Duration("settle", 2*time.Second, "wait before reading a server's RSS")
	dir := fs.String("dir", "", "tmpfs directory for the images (default /dev/shm, or a tmpfs mounted for the run)")
	serverCPUs := fs.String("server-cpus", "", "pin every server to these CPUs (such as 1 or 2-3) and the clients to the others, as on a board with that many cores whose clients are other machines")
	quota := fs.Float64("server-quota", 0, "hold every server to this share of one core (such as 0.3) with a cgroup CPU quota, as on a board whose cores are slower than its clients'; 0 for none")
	bin := fs.String("boardnbd", "", "boardnbd `BINARY` to measure instead of building ./cmd/boardnbd")
	if err := fs.Parse(argv[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nbdbench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *quick {
		// The quick defaults yield to flags given explicitly.
		for name, v := range map[string]string{"rounds": "1", "time": "1s", "size": "128",
			"conns": "100", "syscalls": "false", "settle": "1s", "copy-timeout": "10s"} {
			if !given[name] {
				fs.Set(name, v)
			}
		}
	}

	set := settings{
		rounds: *rounds, fioTime: *fioTime, syscallTime: *sysTime, imageMiB: *sizeMiB,
		copyTimeout: *copyTimeout, settle: *settle, syscalls: *sys, footprint: *foot, dir: *dir, boardnbdBin: *bin, quick: *quick,
		quotaShare: *quota,
	}
	var err error
	if set.servers, err = parseServers(*servers); err == nil {
		if set.workloads, err = parseWorkloads(*wls); err == nil {
			if set.conns, err = parseConns(*conns); err == nil && *serverCPUs != "" {
				var usable []int
				if usable, err = usableCPUs(); err == nil {
					set.cpus, err = planCPUs(*serverCPUs, usable)
				}
			}
		}
	}
	switch {
	case err != nil:
	case set.rounds < 1:
		err = fmt.Errorf("-rounds %d: want at least 1", set.rounds)
	case set.fioTime < time.Second || set.syscallTime < time.Second || set.copyTimeout < time.Second:
		err = fmt.Errorf("-time, -syscall-time and -copy-timeout: want at least 1s")
	case set.imageMiB < 16:
		err = fmt.Errorf("-size %d: want at least 16 MiB", set.imageMiB)
	case set.quotaShare != 0:
		_, err = quotaPeriodFor(set.quotaShare)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nbdbench: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{set: set, log: stderr, began: time.Now()}
	cleanup, err := b.prepare(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "nbdbench: %v\n", err)
		return 1
	}
	defer cleanup()
	loadStart := loadavg()
	started := time.Now()
	if err := b.startServers(); err != nil {
		fmt.Fprintf(stderr, "nbdbench: %v\n", err)
		return 1
	}
	if err := b.runRounds(ctx); err != nil {
		fmt.Fprintf(stderr, "nbdbench: interrupted: %v\n", err)
		return 1
	}
	if b.set.perf || b.set.strace {
		b.traceSyscalls(ctx)
	}
	b.stopServers()
	if b.quota != nil {
		if b.held, err = b.quota.throttling(); err != nil {
			b.fail("reading the servers' CPU quota counters: %v", err)
		}
	}
	if b.set.footprint && slices.Contains(b.set.servers, srvBoardnbd) && ctx.Err() == nil {
		b.foot = b.measureFootprint(ctx)
		if b.foot.err != nil {
			b.fail("footprint: %v", b.foot.err)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "nbdbench: interrupted")
		return 1
	}
	b.report(stdout, commandLine(argv), loadStart, time.Since(started))
	if len(b.failures) > 0 {
		return 1
	}
	return 0
}

func workloadKeys() string {
	var k []string
	for _, w := range allWorkloads {
		k = append(k, w.key)
	}
	return strings.Join(k, ",")
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseServers checks -servers and returns them in report order.
func parseServers(s string) ([]string, error) {
	names := splitList(s)
	for _, n := range names {
		if !slices.Contains(allServers, n) {
			return nil, fmt.Errorf("-servers: unknown server %q (want some of %s)", n, strings.Join(allServers, ","))
		}
	}
	var out []string
	for _, n := range allServers {
		if slices.Contains(names, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-servers: no server named")
	}
	return out, nil
}

func parseWorkloads(s string) ([]workload, error) {
	keys := splitList(s)
	if len(keys) == 0 {
		return allWorkloads, nil
	}
	var out []workload
	for _, w := range allWorkloads {
		if slices.Contains(keys, w.key) {
			out = append(out, w)
		}
	}
	for _, k := range keys {
		if !slices.ContainsFunc(allWorkloads, func(w workload) bool { return w.key == k }) {
			return nil, fmt.Errorf("-workloads: unknown workload %q (want some of %s)", k, workloadKeys())
		}
	}
	return out, nil
}

func parseConns(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("-conns: %q is not a count from 1 to 100000", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// commandLine is how the run was started, as a user would type it: "go
// run" leaves the binary in a temporary directory, which says nothing.
func commandLine(argv []string) string {
	name := argv[0]
	if strings.Contains(name, "go-build") {
		name = "go run ./cmd/nbdbench"
	}
	parts := []string{name}
	for _, a := range argv[1:] {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
