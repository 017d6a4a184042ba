package nbd

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// testPKI is a CA with a server and a client certificate, made per test.
type testPKI struct {
	pool           *x509.CertPool
	server, client tls.Certificate
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "boardnbd test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.server = leaf(2, "localhost", x509.ExtKeyUsageServerAuth)
	p.client = leaf(3, "board-1", x509.ExtKeyUsageClientAuth)
	return p
}

// starttls upgrades a test client after the STARTTLS ACK.
func (tc *tclient) starttls(cfg *tls.Config) {
	tc.t.Helper()
	tc.opt(optStartTLS, nil)
	if r := tc.reply(); r.typ != repAck {
		tc.t.Fatalf("STARTTLS reply = %#x %s, want ACK", r.typ, r.data)
	}
	c := tls.Client(tc.c, cfg)
	if err := c.Handshake(); err != nil {
		tc.t.Fatalf("TLS handshake: %v", err)
	}
	tc.c, tc.br = c, bufio.NewReader(c)
}

func tlsServer(t *testing.T, p *testPKI, require bool) (string, *Server) {
	secret := memExport("secret", newMem(testSize))
	secret.TLSOnly = true
	s := &Server{
		TLSConfig:  &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12},
		RequireTLS: require,
	}
	return startServer(t, s, memExport("open", newMem(testSize)), secret), s
}

func TestSelectiveTLS(t *testing.T) {
	p := newPKI(t)
	addr, _ := tlsServer(t, p, false)
	tc := dialFixed(t, addr)

	// In the clear: the TLS-only export is hidden and refused with TLS_REQD.
	tc.opt(optList, nil)
	if rs := tc.replies(optList); len(rs) != 2 {
		t.Errorf("LIST before TLS gave %d replies, want the open export and ACK", len(rs))
	}
	tc.opt(optInfo, exportReq("secret"))
	if rs := tc.replies(optInfo); rs[len(rs)-1].typ != repErrTLSReqd {
		t.Errorf("INFO secret before TLS = %#x, want TLS_REQD", rs[len(rs)-1].typ)
	}
	tc.opt(optStructuredReply, nil)
	tc.replies(optStructuredReply)

	tc.starttls(&tls.Config{RootCAs: p.pool, ServerName: "localhost"})
	tc.opt(optStartTLS, nil)
	if r := tc.reply(); r.typ != repErrInvalid {
		t.Errorf("second STARTTLS = %#x, want INVALID", r.typ)
	}
	tc.opt(optList, nil)
	if rs := tc.replies(optList); len(rs) != 3 {
		t.Errorf("LIST after TLS gave %d replies, want both exports and ACK", len(rs))
	}
	// Structured replies negotiated in the clear did not survive: GO
	// without renegotiating gives simple replies.
	size, flags := tc.goExport("secret", false)
	if size != testSize || flags&flagSendDF != 0 {
		t.Errorf("GO secret over TLS = size %d flags %#x, want %d without DF", size, flags, testSize)
	}
	tc.request(0, cmdWrite, 1, 0, 5, []byte("hello"))
	if e, _ := tc.simple(); e != 0 {
		t.Fatalf("WRITE over TLS = %d", e)
	}
	tc.request(0, cmdRead, 2, 0, 5, nil)
	tc.simple()
	got := make([]byte, 5)
	tc.read(got)
	if string(got) != "hello" {
		t.Errorf("READ over TLS = %q", got)
	}
}

func TestForcedTLS(t *testing.T) {
	p := newPKI(t)
	addr, _ := tlsServer(t, p, true)
	tc := dialFixed(t, addr)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{{optList, nil}, {optInfo, exportReq("open")}, {optGo, exportReq("open")}, {optStructuredReply, nil}, {99, nil}} {
		tc.opt(o.opt, o.data)
		if rs := tc.replies(o.opt); rs[len(rs)-1].typ != repErrTLSReqd {
			t.Errorf("option %d before TLS = %#x, want TLS_REQD", o.opt, rs[len(rs)-1].typ)
		}
	}
	tc.starttls(&tls.Config{RootCAs: p.pool, ServerName: "localhost"})
	if size, _ := tc.goExport("open", true); size != testSize {
		t.Errorf("GO after TLS: size %d", size)
	}
	// EXPORT_NAME in the clear cannot be refused politely: hang up.
	plain := dialFixed(t, addr)
	plain.opt(optExportName, []byte("open"))
	plain.closed()
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	secret := memExport("secret", newMem(testSize))
	secret.TLSOnly = true
	addr := startServer(t, &Server{TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientCAs:    p.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}}, secret)

	good := dialFixed(t, addr)
	good.starttls(&tls.Config{RootCAs: p.pool, ServerName: "localhost", Certificates: []tls.Certificate{p.client}})
	if size, _ := good.goExport("secret", false); size != testSize {
		t.Errorf("GO with a client certificate: size %d", size)
	}

	// Without a client certificate the server refuses the handshake: with
	// TLS 1.3 the client learns it on its first read.
	bad := dialFixed(t, addr)
	bad.opt(optStartTLS, nil)
	if r := bad.reply(); r.typ != repAck {
		t.Fatalf("STARTTLS = %#x", r.typ)
	}
	c := tls.Client(bad.c, &tls.Config{RootCAs: p.pool, ServerName: "localhost"})
	err := c.Handshake()
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if err == nil {
		t.Errorf("TLS without a client certificate succeeded")
	}
}
