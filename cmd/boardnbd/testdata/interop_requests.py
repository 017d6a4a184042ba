"""Send NBD requests through libnbd, with its own checks off, and report.

Run by interop_test.go with libnbd's python3 (python3-libnbd, what nbdsh
runs). Standard input is a JSON job:

    {"uri": "nbd://127.0.0.1:PORT/disk"   (or "argv": [command, ...]
                                          for libnbd's connect_command),
     "structured": true,                  ask for structured replies
     "ops": [{"cmd": "pwrite", "offset": 0, "length": 512, "flags": 0}]}

set_strict_mode(0) makes libnbd send requests it would otherwise refuse
itself (out of bounds, unknown flags, writes to a read-only export), so
that the answers are the server's. Standard output is JSON: what the
server advertised, then for each op the errno (or "" on success), libnbd's
message (it says "command failed" when the server sent the error), and
whether a 512-byte read at 0 still works afterwards.
"""

import errno
import json
import sys

import nbd


def advertised(h):
    """What the handshake gave."""
    out = {
        "size": h.get_size(),
        "export_name": h.get_canonical_export_name(),
        "structured_replies": h.get_structured_replies_negotiated(),
        "base_allocation": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
        "block_size": [
            h.get_block_size(nbd.SIZE_MINIMUM),
            h.get_block_size(nbd.SIZE_PREFERRED),
            h.get_block_size(nbd.SIZE_MAXIMUM),
        ],
    }
    try:
        out["description"] = h.get_export_description()
    except nbd.Error:
        out["description"] = None
    for name in ("is_read_only", "can_flush", "can_fua", "can_trim",
                 "can_zero", "can_fast_zero", "can_df", "can_multi_conn",
                 "can_cache"):
        out[name] = bool(getattr(h, name)())
    return out


def run(h, op):
    cmd, off, n, fl = op["cmd"], op["offset"], op["length"], op["flags"]
    res = {"errno": "", "message": ""}
    try:
        if cmd == "pread":
            data = h.pread(n, off, fl)
            res["data_len"] = len(data)
        elif cmd == "pwrite":
            h.pwrite(b"\xa5" * n, off, fl)
        elif cmd == "zero":
            h.zero(n, off, fl)
        elif cmd == "trim":
            h.trim(n, off, fl)
        elif cmd == "cache":
            h.cache(n, off, fl)
        elif cmd == "flush":
            h.flush(fl)
        elif cmd == "block_status":
            h.block_status(n, off, lambda *args: 0, fl)
        else:
            raise ValueError("unknown cmd " + cmd)
    except nbd.Error as e:
        res["errno"] = errno.errorcode.get(e.errno, str(e.errno))
        res["message"] = e.string
    # An error reply must leave the connection usable.
    try:
        h.pread(512, 0)
        res["usable"] = True
    except nbd.Error as e:
        res["usable"] = False
        res["after"] = e.string
    return res


def main():
    job = json.load(sys.stdin)
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_full_info(True)
    h.set_request_structured_replies(job.get("structured", True))
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if "argv" in job:
        h.connect_command(job["argv"])
    else:
        h.connect_uri(job["uri"])
    out = {"advertised": advertised(h), "results": []}
    for op in job.get("ops", []):
        out["results"].append(run(h, op))
    h.shutdown()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
