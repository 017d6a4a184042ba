//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// footprint is boardnbd's memory and size on a board.
type footprint struct {
	binSize int64
	exports int
	idle    int64 // RSS with the exports and no client
	conns   []connRSS
	nofile  int64 // the server's soft RLIMIT_NOFILE
	err     error
}

// connRSS is the server's RSS with n idle connections in transmission.
type connRSS struct {
	n   int
	rss int64
}

// perConn is the RSS each idle connection adds.
func (f *footprint) perConn(c connRSS) float64 {
	return float64(c.rss-f.idle) / float64(c.n)
}

// footprintConfig is a boardnbd config with the exports, the listen address
// and room for the connections; everything else is at its defaults.
func footprintConfig(addr string, images []string, maxConns int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nlisten: [%q]\ndiscovery:\n  enabled: false\nlimits:\n  max_connections: %d\nexports:\n", addr, maxConns)
	for i, img := range images {
		fmt.Fprintf(&b, "  - name: disk%d\n    path: %q\n", i, img)
	}
	return b.String()
}

// measureFootprint starts boardnbd with 8 exports, reads its RSS idle, then
// with each count of idle connections that completed NBD_OPT_GO.
func (b *bench) measureFootprint(ctx context.Context) *footprint {
	f := &footprint{binSize: b.binSize, exports: 8}
	dir := filepath.Join(b.dir, "footprint")
	if f.err = os.MkdirAll(dir, 0o755); f.err != nil {
		return f
	}
	var images []string
	for i := range f.exports {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if f.err = writeImage(p, 16*mib, uint64(100+i)); f.err != nil {
			return f
		}
		images = append(images, p)
	}
	port, err := freePort()
	if err != nil {
		f.err = err
		return f
	}
	s := &server{name: srvBoardnbd, port: port, export: "disk0", log: filepath.Join(dir, "boardnbd.log"), cpus: b.set.cpus.server}
	most := slices.Max(append([]int{1}, b.set.conns...))
	conf := filepath.Join(dir, "boardnbd.yaml")
	if f.err = os.WriteFile(conf, []byte(footprintConfig(s.addr(), images, most+16)), 0o644); f.err != nil {
		return f
	}
	if f.err = s.launch([]string{b.bin, "serve", "-c", conf}); f.err != nil {
		return f
	}
	s.pid = s.cmd.Process.Pid
	defer s.stop()
	if f.err = s.waitListening(); f.err != nil {
		return f
	}
	if lim, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", s.pid)); err == nil {
		f.nofile = parseNofile(lim)
	}
	time.Sleep(b.set.settle)
	if f.idle, f.err = readRSS(s.pid); f.err != nil {
		return f
	}
	b.progress("footprint: boardnbd with %d exports idle: RSS %s", f.exports, formatBytes(f.idle))

	var open []net.Conn
	defer func() {
		for _, c := range open {
			disconnect(c)
			c.Close()
		}
	}()
	counts := slices.Clone(b.set.conns)
	slices.Sort(counts)
	for _, n := range counts {
		for len(open) < n {
			if ctx.Err() != nil {
				f.err = ctx.Err()
				return f
			}
			c, _, err := dialExport(s.addr(), s.export, 10*time.Second)
			if err != nil {
				f.err = fmt.Errorf("idle connection %d of %d: %w%s", len(open)+1, n, err, logTail(s.log))
				return f
			}
			open = append(open, c)
		}
		time.Sleep(b.set.settle)
		if !s.alive() {
			f.err = fmt.Errorf("boardnbd exited with %d connections open%s", n, logTail(s.log))
			return f
		}
		rss, err := readRSS(s.pid)
		if err != nil {
			f.err = err
			return f
		}
		f.conns = append(f.conns, connRSS{n, rss})
		b.progress("footprint: %d idle connections: RSS %s, %s per connection",
			n, formatBytes(rss), formatBytes(int64(f.perConn(f.conns[len(f.conns)-1]))))
	}
	return f
}

// parseNofile returns the soft "Max open files" of /proc/PID/limits, -1
// for unlimited or unknown.
func parseNofile(b []byte) int64 {
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return -1
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		return n
	}
	return -1
}
