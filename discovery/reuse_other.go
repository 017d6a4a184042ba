//go:build !unix

package discovery

import "syscall"

// reusePort does nothing where SO_REUSEPORT does not exist: the built-in
// responder then needs UDP 5353 to itself.
func reusePort(network, address string, c syscall.RawConn) error { return nil }
