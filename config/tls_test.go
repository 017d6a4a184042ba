package config

import "testing"

func TestTLSErrors(t *testing.T) {
	runErrorTests(t, []errorTest{
		{"unknown mode", `version: 1
tls:
  mode: sometimes
  cert: s.pem
  key: s.key
`, 3, "tls.mode", "unknown mode"},
		{"required without cert", `version: 1
tls:
  mode: required
`, 2, "tls.cert", "missing"},
		{"cert without key", `version: 1
tls:
  cert: s.pem
`, 2, "tls.key", "missing"},
		{"off with certificates", `version: 1
tls:
  mode: off
  cert: s.pem
  key: s.key
`, 3, "tls.mode", "certificates are given"},
		{"unknown tls key", `version: 1
tls:
  certificate: s.pem
`, 3, "tls.certificate", "unknown key"},
		{"export requires TLS the server lacks", `version: 1
exports:
  - name: a
    path: /a
    tls: required
`, 5, "exports[0].tls", "server has no TLS"},
		{"export tls value", `version: 1
tls: {cert: s.pem, key: s.key}
exports:
  - name: a
    path: /a
    tls: yes-please
`, 6, "exports[0].tls", "unknown value"},
	})
}

func TestTLSDefaults(t *testing.T) {
	c, err := Parse([]byte(`version: 1
tls:
  cert: certs/server.pem
  key: certs/server.key
  ca: certs/ca.pem
exports:
  - name: secret
    path: /dev/sda
    tls: required
`), "/etc/boardnbd/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if m := c.TLS.EffectiveMode(); m != TLSOptional {
		t.Errorf("EffectiveMode() = %q with a certificate, want optional", m)
	}
	if c.TLS.Cert != "/etc/boardnbd/certs/server.pem" || c.TLS.CA != "/etc/boardnbd/certs/ca.pem" {
		t.Errorf("TLS paths = %q, %q, want them relative to the config file", c.TLS.Cert, c.TLS.CA)
	}
	if c.Exports[0].TLS != TLSRequired {
		t.Errorf("exports[0].tls = %q", c.Exports[0].TLS)
	}
	if m := Default().TLS.EffectiveMode(); m != TLSOff {
		t.Errorf("default EffectiveMode() = %q, want off", m)
	}
}
