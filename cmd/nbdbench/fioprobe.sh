#!/bin/bash
# fioprobe.sh: what one depth-32 fio run costs its client, per I/O, with
# each server in turn on loopback. The bench says how fast; this says where
# the client's time goes, which is what sets the pace when fio runs near
# 100% of its core.
#
#   cmd/nbdbench/fioprobe.sh [options] SERVER...
#
# SERVER is a boardnbd binary or "nbdkit" (file plugin). Options:
#   -w randread|randwrite   fio's workload (randwrite)
#   -r ROUNDS               servers take turns this many times (3)
#   -t SECONDS              each fio run's length, at least 4 (5)
#   -s CPUS -c CPUS         pin the server and fio with taskset (unpinned)
#   -m MIB                  the image's size (1024)
#
# The servers serve an image the probe makes and removes: in /dev/shm if
# there is one, as the bench's are, and filled with data, not holes.
#
# Per run it prints: IOPS; fio's and the server's CPU per I/O (µs, from
# /proc); fio's system calls per I/O (perf stat on its syscall
# tracepoints) and context switches; TCP segments per I/O each way, and of
# those from the server how many carried no data (pure ACKs), from the
# server socket's counters (ss -ti); and the share of a 2 s span fio spent
# waiting for a CPU (schedstat). Needs root, fio, perf, ss and, for
# "nbdkit", nbdkit. Traffic stays on 127.0.0.1; every run ends by itself.
set -euo pipefail

rw=randwrite rounds=3 secs=5 mib=1024 port=10811
spin=() cpin=() # taskset and its CPUs, if pinned
usage() {
	sed -n '7,14p' "$0" >&2
	exit 2
}
while getopts w:r:t:s:c:m: o; do
	case $o in
	w) rw=$OPTARG ;; r) rounds=$OPTARG ;; t) secs=$OPTARG ;; m) mib=$OPTARG ;;
	s) spin=(taskset -c "$OPTARG") ;; c) cpin=(taskset -c "$OPTARG") ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[[ $rw =~ ^rand(read|write)$ && $rounds =~ ^[1-9][0-9]*$ && $secs =~ ^[0-9]+$ && $mib =~ ^[1-9][0-9]*$ ]] || usage
[[ $# -ge 1 && $secs -ge 4 ]] || usage
for t in fio perf ss; do
	command -v $t >/dev/null || { echo "fioprobe: $t is missing" >&2; exit 1; }
done
shm=/dev/shm
[ -d $shm ] || shm=${TMPDIR:-/tmp}
work=$(mktemp -d "$shm/fioprobe.XXXXXX")
trap 'echo "fioprobe: failed at line $LINENO" >&2' ERR
trap 'jobs -p | xargs -r kill 2>/dev/null; rm -rf "$work"' EXIT
image=$work/probe.img
head -c 1M /dev/urandom >"$work/chunk"
for _ in $(seq "$mib"); do cat "$work/chunk"; done >"$image"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# sched sums run and wait nanoseconds over every thread of the given pids.
sched() { for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{r += $1; w += $2} END {print r + 0, w + 0}'; }
# segs prints the server socket's segs_out, data_segs_out, segs_in and
# bytes_received.
segs() {
	ss -tinH "( sport = :$port )" | tr ' ' '\n' | awk -F: '
		$1 == "segs_out" {o = $2} $1 == "data_segs_out" {d = $2} $1 == "segs_in" {i = $2}
		$1 == "bytes_received" {b = $2}
		END {print o + 0, d + 0, i + 0, b + 0}'
}

probe() {
	local srv=$1 uri pid fpid
	if [ "$srv" = nbdkit ]; then
		"${spin[@]}" nbdkit -f -p $port -i 127.0.0.1 file "$image" 2>/dev/null &
		uri=nbd://127.0.0.1:$port/
	else
		"${spin[@]}" "$srv" serve --listen 127.0.0.1:$port "$image" 2>/dev/null &
		uri=nbd://127.0.0.1:$port/$(basename "$image")
	fi
	pid=$!
	sleep 0.5
	kill -0 $pid 2>/dev/null || { echo "fioprobe: $srv did not start" >&2; exit 1; }
	local ev=context-switches
	for s in poll ppoll recvfrom recvmsg sendto sendmsg; do ev+=,syscalls:sys_enter_$s; done
	local t0
	t0=$(cpu_ticks $pid)
	perf stat -x, -e "$ev" -o "$work/stat" -- "${cpin[@]}" fio --name=probe --ioengine=nbd \
		--uri="$uri" --rw="$rw" --bs=4k --iodepth=32 --time_based --runtime="$secs" \
		--minimal >"$work/fio" 2>/dev/null &
	fpid=$!
	sleep 1
	local a b s1 s2
	a=$(sched $(pgrep -x fio)) s1=$(segs)
	sleep 2
	b=$(sched $(pgrep -x fio)) s2=$(segs)
	wait $fpid
	local t1
	t1=$(cpu_ticks $pid)
	kill $pid
	wait $pid 2>/dev/null || true
	awk -F';' -v srv="$(basename "$srv")" -v rw="$rw" -v secs="$secs" -v hz="$(getconf CLK_TCK)" \
		-v st=$((t1 - t0)) -v a="$a" -v b="$b" -v s1="$s1" -v s2="$s2" -v statf="$work/stat" '
		/^3;/ {
			io = ($8 + $49) * secs
			while ((getline l < statf) > 0) {
				split(l, f, ",")
				if (f[1] ~ /^[0-9]+$/) { n = f[3]; sub(/syscalls:sys_enter_/, "", n); sc[n] = f[1] }
			}
			split(a, x, " "); split(b, y, " "); split(s1, p, " "); split(s2, q, " ")
			# I/Os in the 2 s span: what fio sent, 28 bytes a request and
			# each write its 4096 bytes of data
			span = (q[4] - p[4]) / (rw == "randwrite" ? 4124 : 28)
			printf "%-10s %7d IOPS  fio %5.2f µs/io  server %5.2f µs/io  fio waited %4.1f%%\n",
				srv, io / secs, ($88 + $89) / 100 * secs * 1e6 / io, st / hz * 1e6 / io, (y[2] - x[2]) / 2e7
			printf "%10s  per I/O: fio poll %.2f recv %.2f send %.2f cs %.3f;", "",
				(sc["poll"] + sc["ppoll"]) / io, (sc["recvfrom"] + sc["recvmsg"]) / io,
				(sc["sendto"] + sc["sendmsg"]) / io, sc["context-switches"] / io
			printf " segments to fio %.2f (%.2f pure ACKs), from fio %.2f\n",
				(q[1] - p[1]) / span, (q[1] - q[2] - p[1] + p[2]) / span, (q[3] - p[3]) / span
		}' "$work/fio"
}

for _ in $(seq "$rounds"); do
	for s in "$@"; do probe "$s"; done
done
