//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

var errFioOutput = errors.New("nbdbench: unusable fio output")

// fioJob is one fio workload over the nbd engine.
type fioJob struct {
	rw      string // fio's rw=: randread, randwrite, read
	bs      string
	iodepth int
}

func (j fioJob) writes() bool { return j.rw == "randwrite" || j.rw == "write" }

// fioArgs is the fio command line for j against uri, time based, JSON to
// the file out. There is no ramp time, so that fio's I/O count covers all
// the I/O the server's CPU time is divided by. norandommap: fio need not
// track which blocks it has touched in a time-based run, which saves the
// client CPU that shares the machine with the server.
func fioArgs(j fioJob, uri string, runtime time.Duration, out string) []string {
	return []string{
		"--name=nbdbench",
		"--ioengine=nbd",
		"--uri=" + uri,
		"--rw=" + j.rw,
		"--bs=" + j.bs,
		"--iodepth=" + strconv.Itoa(j.iodepth),
		"--numjobs=1",
		"--time_based",
		fmt.Sprintf("--runtime=%dms", runtime.Milliseconds()),
		"--norandommap",
		"--randrepeat=0",
		"--output-format=json",
		"--output=" + out,
	}
}

// fioResult is one direction of one fio job.
type fioResult struct {
	iops    float64
	bw      float64 // bytes per second
	ios     int64   // completed I/Os
	runtime time.Duration
	p99     time.Duration // completion latency, 99th percentile; -1 if fio gave none
	cpu     float64       // fio's user and system CPU time, in % of one core
}

// fioOutput is the part of fio's JSON report the bench reads.
type fioOutput struct {
	Jobs []struct {
		Jobname string  `json:"jobname"`
		Error   int     `json:"error"`
		UsrCPU  float64 `json:"usr_cpu"`
		SysCPU  float64 `json:"sys_cpu"`
		Read    fioDir  `json:"read"`
		Write   fioDir  `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	BWBytes  float64 `json:"bw_bytes"`
	IOPS     float64 `json:"iops"`
	Runtime  int64   `json:"runtime"` // milliseconds
	TotalIOs int64   `json:"total_ios"`
	ClatNS   struct {
		N          int64              `json:"N"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// parseFio reads fio's JSON report of a single job and returns the reads,
// or the writes if write is set. fio may print lines of its own before the
// JSON ("fio: connected to NBD server"); they are skipped.
func parseFio(b []byte, write bool) (fioResult, error) {
	r := fioResult{p99: -1}
	i := bytes.Index(b, []byte("\n{"))
	switch {
	case bytes.HasPrefix(b, []byte("{")):
	case i >= 0:
		b = b[i+1:]
	default:
		return r, fmt.Errorf("%w: no JSON object", errFioOutput)
	}
	var out fioOutput
	if err := json.Unmarshal(b, &out); err != nil {
		return r, fmt.Errorf("%w: %v", errFioOutput, err)
	}
	if len(out.Jobs) != 1 {
		return r, fmt.Errorf("%w: %d jobs, want 1", errFioOutput, len(out.Jobs))
	}
	job := out.Jobs[0]
	if job.Error != 0 {
		return r, fmt.Errorf("%w: job %q failed with error %d", errFioOutput, job.Jobname, job.Error)
	}
	d := job.Read
	if write {
		d = job.Write
	}
	if d.TotalIOs <= 0 || d.Runtime <= 0 {
		return r, fmt.Errorf("%w: no I/O completed", errFioOutput)
	}
	r.iops, r.bw, r.ios = d.IOPS, d.BWBytes, d.TotalIOs
	r.cpu = job.UsrCPU + job.SysCPU
	r.runtime = time.Duration(d.Runtime) * time.Millisecond
	for k, v := range d.ClatNS.Percentile {
		p, err := strconv.ParseFloat(k, 64)
		if err == nil && math.Abs(p-99) < 1e-9 {
			r.p99 = time.Duration(v)
		}
	}
	return r, nil
}
