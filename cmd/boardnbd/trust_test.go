//go:build linux

package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startConfig runs the binary on a config written by yaml(addr) and
// returns once it listens; cleanup stops it and checks it exited 0.
func startConfig(t *testing.T, yaml func(addr string) string) *serverProc {
	t.Helper()
	s := launchConfig(t, yaml)
	t.Cleanup(func() { s.stop(t) })
	return s
}

// launchConfig is startConfig for a server the test will kill: cleanup
// only makes sure it is gone.
func launchConfig(t *testing.T, yaml func(addr string) string) *serverProc {
	t.Helper()
	bin := boardnbdBinary(t)
	for try := 1; ; try++ {
		addr := freeAddr(t)
		cfg := filepath.Join(t.TempDir(), "boardnbd.yaml")
		if err := os.WriteFile(cfg, []byte(yaml(addr)), 0o644); err != nil {
			t.Fatal(err)
		}
		s := launchServer(t, bin, addr, cfg)
		if s.waitReady(30 * time.Second) {
			t.Cleanup(func() {
				if !s.done() {
					s.kill()
				}
			})
			return s
		}
		s.kill()
		if try < 3 && s.log.contains("address already in use") {
			continue
		}
		t.Fatalf("boardnbd did not start on %s; its log:\n%s", addr, s.log)
	}
}

// TestCrashAfterFlush kills the server with SIGKILL right after a FLUSH
// reply and restarts it: every flushed write must be there, byte for byte,
// for a plain image and for a persistent copy-on-write overlay (whose
// allocation bitmap is what a crash could lose).
func TestCrashAfterFlush(t *testing.T) {
	const size, block = 16 << 20, 4096
	for _, mode := range []string{"image", "persistent overlay"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "disk.img")
			makeZeroImage(t, img, size)
			base := fileSHA256(t, img)
			extra := ""
			if mode == "persistent overlay" {
				extra = fmt.Sprintf("    copy_on_write: persistent\n    overlay: %q\n", filepath.Join(dir, "disk.cow"))
			}
			yaml := func(addr string) string {
				return fmt.Sprintf("version: 1\nlisten: [%q]\ndiscovery: {enabled: false}\nexports:\n  - name: disk\n    path: %q\n%s",
					addr, img, extra)
			}

			// Write 200 distinct random blocks, pipelined, then FLUSH. They
			// must not overlap: the server may run requests in flight in
			// any order, so the last one sent need not land last.
			s := launchConfig(t, yaml)
			rng := mrand.New(mrand.NewPCG(42, uint64(len(mode))))
			want := map[uint64][]byte{}
			c := crashClient(t, s.addr)
			for i := range 200 {
				off := uint64(rng.IntN(size/block)) * block
				for want[off] != nil {
					off = uint64(rng.IntN(size/block)) * block
				}
				data := make([]byte, block)
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				want[off] = data
				c.request(0, specCmdWrite, uint64(i), off, block, data)
			}
			// Replies come in any order.
			for range 200 {
				h := c.read(16, "WRITE reply")
				if e := binary.BigEndian.Uint32(h[4:8]); e != 0 {
					t.Fatalf("WRITE (handle %d): error %d", binary.BigEndian.Uint64(h[8:]), e)
				}
			}
			c.request(0, specCmdFlush, 999, 0, 0, nil)
			if e := c.simpleReply(999); e != 0 {
				t.Fatalf("FLUSH: error %d", e)
			}
			s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited

			// A new server finds every flushed block.
			s2 := startConfig(t, yaml)
			c2 := crashClient(t, s2.addr)
			h := uint64(0)
			for off, data := range want {
				h++
				c2.request(0, specCmdRead, h, off, block, nil)
				if e := c2.simpleReply(h); e != 0 {
					t.Fatalf("READ(off=%d) after the crash: error %d", off, e)
				}
				if got := c2.read(block, "READ data"); !bytes.Equal(got, data) {
					t.Fatalf("READ(off=%d) after the crash differs from the flushed write", off)
				}
			}
			c2.request(0, specCmdDisc, 0, 0, 0, nil)
			if mode == "persistent overlay" && fileSHA256(t, img) != base {
				t.Errorf("the base image changed under a copy-on-write export")
			}
		})
	}
}

// crashClient connects and enters transmission with EXPORT_NAME "disk".
func crashClient(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := newRawClient(t, nc, nc)
	c.greeting()
	c.clientFlags(1 | specFlagCNoZeroes) // NBD_FLAG_C_FIXED_NEWSTYLE | NO_ZEROES
	c.exportName("disk", true)
	return c
}

// testCA issues certificates for the TLS tests, in the file names that
// libnbd's tls-certificates directory and qemu's tls-creds-x509 expect.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca := &testCA{key: newKey(t)}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "boardnbd test CA"},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	var err error
	if ca.der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ca.key.PublicKey, ca.key); err != nil {
		t.Fatal(err)
	}
	ca.cert, _ = x509.ParseCertificate(ca.der)
	return ca
}

// writeCA puts the CA certificate into dir as ca-cert.pem.
func (ca *testCA) writeCA(t *testing.T, dir string) {
	writePEM(t, filepath.Join(dir, "ca-cert.pem"), "CERTIFICATE", ca.der)
}

// issue writes NAME-cert.pem and NAME-key.pem into dir.
func (ca *testCA) issue(t *testing.T, dir, name string, usage x509.ExtKeyUsage, notAfter time.Time) {
	t.Helper()
	k := newKey(t)
	der, _ := x509.MarshalECPrivateKey(k)
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", der)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+"-cert.pem"), "CERTIFICATE", cert)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTLS serves one open and one TLS-only export with mutual TLS, and
// drives it with nbdinfo and nbdcopy over nbds:// and with qemu-img and
// tls-creds-x509; a wrong CA, an expired certificate and a missing client
// certificate are each refused with a log line.
func TestTLS(t *testing.T) {
	nbdinfo := requireTool(t, "nbdinfo")
	nbdcopy := requireTool(t, "nbdcopy")
	qemuImg := requireTool(t, "qemu-img")
	dir := t.TempDir()
	// Each directory is what one client has: a CA to trust the server by
	// and (but for nocert) a client certificate.
	good, other := filepath.Join(dir, "good"), filepath.Join(dir, "other")
	expired, noClientCert := filepath.Join(dir, "expired"), filepath.Join(dir, "nocert")
	for _, d := range []string{good, other, expired, noClientCert} {
		os.Mkdir(d, 0o700)
	}
	later, before := time.Now().Add(24*time.Hour), time.Now().Add(-time.Hour)
	ca, stranger := newTestCA(t), newTestCA(t)
	ca.writeCA(t, good)
	ca.issue(t, good, "server", x509.ExtKeyUsageServerAuth, later)
	ca.issue(t, good, "client", x509.ExtKeyUsageClientAuth, later)
	stranger.writeCA(t, other) // trusts another CA: refuses the server
	stranger.issue(t, other, "client", x509.ExtKeyUsageClientAuth, later)
	ca.writeCA(t, expired)
	ca.issue(t, expired, "client", x509.ExtKeyUsageClientAuth, before)
	ca.writeCA(t, noClientCert)

	img := filepath.Join(dir, "secret.img")
	sum := writeRandomImage(t, img, 8<<20, 7)
	s := startConfig(t, func(addr string) string {
		return fmt.Sprintf(`version: 1
listen: [%q]
discovery: {enabled: false}
tls:
  cert: %q
  key: %q
  ca: %q
exports:
  - {name: open, path: %q}
  - {name: secret, path: %q, tls: required}
`, addr, filepath.Join(good, "server-cert.pem"), filepath.Join(good, "server-key.pem"),
			filepath.Join(good, "ca-cert.pem"), img, img)
	})
	_, port, _ := net.SplitHostPort(s.addr)
	uri := func(export, certs string) string {
		return fmt.Sprintf("nbds://localhost:%s/%s?tls-certificates=%s", port, export, certs)
	}

	// In the clear the TLS-only export is neither listed nor served.
	if r := runTool(t, 30*time.Second, nbdinfo, "--list", "nbd://"+s.addr); r.code != 0 ||
		strings.Contains(r.stdout, `"secret"`) || !strings.Contains(r.stdout, `"open"`) {
		t.Errorf("nbdinfo --list in the clear should show open only:\n%s", r)
	}
	if r := runTool(t, 30*time.Second, nbdinfo, "nbd://"+s.addr+"/secret"); r.code == 0 {
		t.Errorf("nbdinfo of the TLS-only export without TLS succeeded:\n%s", r)
	}

	// Over TLS with a client certificate everything works.
	if r := runTool(t, 30*time.Second, nbdinfo, uri("secret", good)); r.code != 0 || !strings.Contains(r.stdout, "with TLS") {
		t.Errorf("nbdinfo over TLS:\n%s", r)
	}
	out := filepath.Join(dir, "copy.img")
	if r := runTool(t, 60*time.Second, nbdcopy, uri("secret", good), out); r.code != 0 {
		t.Fatalf("nbdcopy over TLS:\n%s", r)
	}
	if fileSHA256(t, out) != sum {
		t.Errorf("nbdcopy over TLS read other bytes than the image holds")
	}
	if r := runTool(t, 60*time.Second, qemuImg, "compare", "--image-opts",
		"driver=raw,file.driver=file,file.filename="+img,
		fmt.Sprintf("driver=raw,file.driver=nbd,file.host=localhost,file.port=%s,file.export=secret,file.tls-creds=tls0", port),
		"--object", "tls-creds-x509,id=tls0,dir="+good+",endpoint=client"); r.code != 0 || !strings.Contains(r.stdout, "identical") {
		t.Errorf("qemu-img compare over TLS:\n%s", r)
	}

	// Refusals, each with a log line.
	for _, tc := range []struct{ name, certs, log string }{
		{"client trusts another CA", other, "TLS handshake failed"},
		{"expired client certificate", expired, "expired"},
		{"no client certificate", noClientCert, "didn't provide a certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := runTool(t, 30*time.Second, nbdinfo, uri("secret", tc.certs)); r.code == 0 {
				t.Fatalf("nbdinfo with %s succeeded:\n%s", tc.name, r)
			}
			if !s.log.waitFor(tc.log, 5*time.Second) {
				t.Errorf("no %q log line for %s; log:\n%s", tc.log, tc.name, s.log)
			}
		})
	}
}
