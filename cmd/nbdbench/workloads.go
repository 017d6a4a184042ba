//go:build linux

package main

import "math"

// metric is one figure of a workload.
type metric struct {
	name   string
	higher bool // higher is better
	client bool // a figure of the client, not the server: shown, never compared
}

// The figures. CPU time is the server's (all threads and child processes),
// divided by the work done.
var (
	mMiBs   = metric{name: "MiB/s ↑", higher: true}
	mIOPS   = metric{name: "IOPS ↑", higher: true}
	mP99    = metric{name: "p99 latency µs ↓"}
	mCPUGiB = metric{name: "server CPU s/GiB ↓"}
	mCPUk   = metric{name: "server CPU ms/1000 I/O ↓"}
	// fio's own CPU time, in % of one core: near 100 the client, not the
	// server, limits the figures above it.
	mClientCPU = metric{name: "fio CPU % of a core", client: true}
	// nbdcopy's, the same way; its threads together may pass 100 when the
	// clients have more than one core.
	mCopyCPU = metric{name: "nbdcopy CPU % of a core", client: true}
)

// copyJob is an nbdcopy run: the export to null:, or a file to the export.
type copyJob struct {
	write bool
	conns int
}

// workload is one row group of the report.
type workload struct {
	key   string
	title string
	copy  *copyJob
	fio   *fioJob
}

// metrics are the figures reported for w, in order.
func (w workload) metrics() []metric {
	switch {
	case w.copy != nil:
		return []metric{mMiBs, mCPUGiB, mCopyCPU}
	case w.fio.bs == "4k":
		return []metric{mIOPS, mP99, mCPUk, mClientCPU}
	default:
		return []metric{mMiBs, mP99, mCPUGiB, mClientCPU}
	}
}

var (
	wSeqRead1   = workload{key: "seqread1", title: "seq read, 1 conn (nbdcopy)", copy: &copyJob{conns: 1}}
	wSeqRead4   = workload{key: "seqread4", title: "seq read, 4 conns (nbdcopy)", copy: &copyJob{conns: 4}}
	wSeqWrite1  = workload{key: "seqwrite1", title: "seq write, 1 conn (nbdcopy)", copy: &copyJob{write: true, conns: 1}}
	wSeqWrite4  = workload{key: "seqwrite4", title: "seq write, 4 conns (nbdcopy)", copy: &copyJob{write: true, conns: 4}}
	wRandRead1  = workload{key: "randread1", title: "4k random read, QD1 (fio)", fio: &fioJob{"randread", "4k", 1}}
	wRandRead32 = workload{key: "randread32", title: "4k random read, QD32 (fio)", fio: &fioJob{"randread", "4k", 32}}
	wRandWrite1 = workload{key: "randwrite1", title: "4k random write, QD1 (fio)", fio: &fioJob{"randwrite", "4k", 1}}
	wRandWrit32 = workload{key: "randwrite32", title: "4k random write, QD32 (fio)", fio: &fioJob{"randwrite", "4k", 32}}
	wRead1M8    = workload{key: "read1m8", title: "1 MiB read, QD8 (fio)", fio: &fioJob{"read", "1M", 8}}

	allWorkloads = []workload{wSeqRead1, wSeqRead4, wSeqWrite1, wSeqWrite4,
		wRandRead1, wRandRead32, wRandWrite1, wRandWrit32, wRead1M8}
)

// results holds every sample: workload key → metric → server → one value
// per round (NaN for a failed run).
type results struct {
	vals map[string]map[metric]map[string][]float64
	// partial records copies cut short by the copy timeout: workload
	// key → server → the least percentage copied in any round.
	partial map[string]map[string]int
}

func newResults() *results {
	return &results{vals: make(map[string]map[metric]map[string][]float64), partial: make(map[string]map[string]int)}
}

func (r *results) add(w, server string, m metric, v float64) {
	if r.vals[w] == nil {
		r.vals[w] = make(map[metric]map[string][]float64)
	}
	if r.vals[w][m] == nil {
		r.vals[w][m] = make(map[string][]float64)
	}
	r.vals[w][m][server] = append(r.vals[w][m][server], v)
}

func (r *results) markPartial(w, server string, pct int) {
	if r.partial[w] == nil {
		r.partial[w] = make(map[string]int)
	}
	if old, ok := r.partial[w][server]; !ok || pct < old {
		r.partial[w][server] = pct
	}
}

// median of a cell; NaN if it has no good sample.
func (r *results) median(w string, m metric, server string) float64 {
	return median(r.vals[w][m][server])
}

func (r *results) samples(w string, m metric, server string) []float64 { return r.vals[w][m][server] }

// bestPeer is the best median among the servers other than boardnbd, and
// which server has it; "" and NaN if none has a figure.
func (r *results) bestPeer(w string, m metric, servers []string) (string, float64) {
	var names []string
	var vals []float64
	for _, s := range servers {
		if s != srvBoardnbd {
			names = append(names, s)
			vals = append(vals, r.median(w, m, s))
		}
	}
	i := best(vals, m.higher)
	if i < 0 {
		return "", math.NaN()
	}
	return names[i], vals[i]
}
