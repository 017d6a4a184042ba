package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"boardnbd/config"
)

// serverTLS builds the TLS configuration of the server, or nil when TLS is
// off. With a CA, clients must present a certificate it signed.
func serverTLS(c config.TLS) (*tls.Config, error) {
	if c.EffectiveMode() == config.TLSOff {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: loading tls.cert %s and tls.key %s: %w", c.Cert, c.Key, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("tls: tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: tls.ca %s holds no PEM certificate", c.CA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
