"""Keep reading from an export while the server shuts down, and report.

Run by interop_test.go with libnbd's python3. argv[1] is the export's URI.
It connects, reads once, prints "ready", and waits for a line on standard
input, which the test sends once the server has logged that SIGTERM
started its drain. Then it reads 512 bytes every 10 ms until the
connection is gone (at most 5 s) and prints, as JSON, the outcomes in
order with repeats counted: "ok", or the errno name with whether the
server sent it ("command failed" in libnbd's message) or libnbd found the
connection dead.
"""

import errno
import json
import sys
import time

import nbd


def main():
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    h.pread(512, 0)
    print("ready", flush=True)
    sys.stdin.readline()

    events = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            h.pread(512, 0)
            ev = {"outcome": "ok"}
        except nbd.Error as e:
            ev = {
                "outcome": errno.errorcode.get(e.errno, str(e.errno)),
                "from_server": "command failed" in e.string,
                "message": e.string,
            }
        dead = bool(h.aio_is_dead() or h.aio_is_closed())
        ev["dead"] = dead
        last = events[-1] if events else None
        if last and all(last[k] == ev[k] for k in ("outcome", "dead")) and \
                last.get("from_server") == ev.get("from_server"):
            last["count"] += 1
        else:
            ev["count"] = 1
            events.append(ev)
        if dead:
            break
        time.sleep(0.01)
    json.dump({"events": events}, sys.stdout)


if __name__ == "__main__":
    main()
