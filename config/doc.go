// Package config owns the YAML schema of boardnbd: it reads a configuration
// file, applies defaults, checks every value and reports every problem with
// the file, line and key it comes from.
//
// It owns no sockets and no devices. It never opens, stats or creates the
// files that exports name, never resolves host names and never listens:
// whether a path exists, is in use or has the right size is for the caller
// that opens the storage, and whether an address can be bound is for the
// server. Everything here is a pure function of the configuration text, so
// "boardnbd check" can run on any machine.
//
// # The file
//
// A complete file, every key at its default except where noted:
//
//	version: 1                  # required; the only version is 1
//	listen: [":10809"]          # host:port; IPv6 as "[::1]:10809"; port 0 picks a free port
//	discovery:
//	  enabled: true
//	  backend: auto             # auto | builtin | avahi
//	  interfaces: []            # empty: every suitable interface
//	  board: ""                 # free text for the TXT record, at most 249 bytes
//	  instance: ""              # instance name template; "" lets discovery choose
//	limits:
//	  max_connections: 256      # whole server, at least 1
//	  handshake_timeout: 30s    # positive
//	  max_in_flight: 32         # requests per connection, at least 1
//	  max_payload: 32MiB        # 64KiB to 1GiB
//	log:
//	  level: info               # debug | info | warn | error
//	  format: text              # text | json
//	tls:                        # NBD_OPT_STARTTLS; PEM files, relative to this file
//	  mode: ""                  # off | optional | required; "": optional if cert is set, else off
//	  cert: ""                  # server certificate chain
//	  key: ""                   # its private key
//	  ca: ""                    # if set, clients must present a certificate signed by it
//	exports:                    # may be empty: exports can arrive by reload
//	  - name: rootfs            # required, unique, 1 to 4096 bytes of UTF-8, no NUL
//	    path: /dev/mmcblk0p2    # required; relative to this file's directory
//	    description: ""
//	    readonly: false
//	    size: 0                 # 0: to the end of the file or device
//	    offset: 0
//	    copy_on_write: false    # false | true (= connection) | connection | persistent
//	    overlay: ""             # required with, and only with, persistent
//	    multifile: false        # serve path.0, path.1, ... as one export
//	    allow: []               # CIDR prefixes or bare addresses; empty: everyone
//	    max_connections: 0      # 0: no limit for this export
//	    idle_timeout: 0         # 0: none
//	    flush: true
//	    fua: true
//	    trim: true
//	    allow_in_use: false
//	    tls: ""                 # "" or optional: as the server | required: only over TLS
//
// Decoding is strict: an unknown key, a repeated key, or a value of the
// wrong type (a string for a boolean, a list for a name) is an error. YAML
// 1.1 booleans such as yes and no are strings, and are rejected where a
// boolean is wanted. A key set to null (written as ~ or left empty) keeps
// its default. String keys take any scalar as written, so name: 010 is the
// export "010". Anchors, aliases and merge keys (<<) work as YAML defines
// them, which lets many exports share one block of settings; top-level
// keys that start with "x-" are ignored, to give such blocks a home:
//
//	x-board: &board
//	  readonly: true
//	  allow: [10.0.0.0/8]
//	exports:
//	  - <<: *board
//	    name: rootfs
//	    path: /dev/mmcblk0p2
//
// # Sizes and durations
//
// size, offset and max_payload take a whole number of bytes, either as a
// YAML integer (4096, 0x1000) or as a string with an optional unit:
// "4096", "64KiB", "512MiB", "4GiB", "1TiB". The units are powers of 1024:
// K or KiB, M or MiB, G or GiB, T or TiB, and B for bytes; a space may
// separate number and unit ("4 GiB"). KB, MB, GB and TB are rejected as
// ambiguous, because half the world reads them as powers of 1000; fractions
// such as "1.5GiB" are rejected too.
//
// handshake_timeout and idle_timeout take Go durations ("30s", "5m",
// "1h30m"); the integer 0 is accepted as "0s".
//
// # Paths
//
// A relative path or overlay is relative to the directory of the file, not
// to where boardnbd happens to start, and Parse makes it so: with
// /etc/boardnbd/boardnbd.yaml, path: images/a.img becomes
// /etc/boardnbd/images/a.img. Paths set in code are left as they are.
//
// path and overlay may contain one %s, replaced by the address of the
// client (see [Export.PathFor]), so that each board gets its own image;
// %% stands for a literal %, and any other % is an error. When path has
// %s and copy_on_write is persistent, overlay must have %s too, or clients
// would share one overlay over different images. multifile combines with
// %s: the address is substituted first, then .0, .1, ... are appended.
// readonly and copy_on_write exclude each other: a copy-on-write export is
// writable by its clients while its image is never written.
//
// # Errors
//
// Parse, Load and Validate report all problems at once as [Errors], one
// [Error] per problem in line order, each naming the file, the line, the
// key and the value, e.g.
//
//	config.yaml:7: exports[1].allow[0]: "10.0.0.0/33" is not a CIDR prefix (want e.g. 10.0.0.0/8)
//
// A problem that follows from another is not reported again (a name that
// is a list is not also missing), and past 100 problems the rest are only
// counted. A file with a version other than 1 gets that one problem.
package config
