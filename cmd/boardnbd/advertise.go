package main

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"boardnbd/discovery"
)

// hotplugInterval is how often the appliance looks for storage that
// appeared or vanished, to announce or withdraw its export.
const hotplugInterval = 3 * time.Second

// advertiser keeps the mDNS / DNS-SD picture equal to what is servable.
type advertiser struct {
	a    *appliance
	adv  discovery.Advertiser
	mu   sync.Mutex
	last []discovery.Export
	stop chan struct{}
	done chan struct{}
}

// startAdvertising starts discovery if the config enables it. The
// advertised port is that of the first TCP listener.
func (a *appliance) startAdvertising(lns []net.Listener) (*advertiser, error) {
	d := a.cfg.Discovery
	if !d.Enabled {
		return nil, nil
	}
	port := discovery.DefaultPort
	for _, ln := range lns {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok {
			port = ta.Port
			break
		}
	}
	adv, err := discovery.New(discovery.Config{
		Backend:    d.Backend,
		Interfaces: d.Interfaces,
		Port:       port,
		Board:      d.Board,
		Instance:   d.Instance,
		Logger:     a.log.With("part", "discovery"),
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("advertising exports over mDNS / DNS-SD", "backend", adv.Backend(), "port", port)
	ad := &advertiser{a: a, adv: adv, stop: make(chan struct{}), done: make(chan struct{})}
	ad.refresh()
	go ad.watch()
	return ad, nil
}

// refresh advertises what can be served now, if that changed.
func (ad *advertiser) refresh() {
	if ad == nil {
		return
	}
	ad.mu.Lock()
	defer ad.mu.Unlock()
	now := ad.a.advertisable()
	if slices.Equal(now, ad.last) {
		return
	}
	if err := ad.adv.Update(now); err != nil {
		ad.a.log.Warn("discovery update failed", "err", err)
		return
	}
	ad.last = now
}

// watch refreshes periodically, so hotplugged storage is announced and
// vanished storage withdrawn.
func (ad *advertiser) watch() {
	defer close(ad.done)
	t := time.NewTicker(hotplugInterval)
	defer t.Stop()
	for {
		select {
		case <-ad.stop:
			return
		case <-t.C:
			ad.a.probeStorage()
			ad.refresh()
		}
	}
}

// close withdraws every export (goodbye packets) and stops.
func (ad *advertiser) close() {
	if ad == nil {
		return
	}
	close(ad.stop)
	<-ad.done
	if err := ad.adv.Close(); err != nil {
		ad.a.log.Warn("discovery close failed", "err", err)
	}
}

// advertisable lists the exports to announce: those open to every client
// (an allow list means the export is not for the whole network) whose
// storage is there now.
func (a *appliance) advertisable() []discovery.Export {
	var out []discovery.Export
	for _, e := range a.exports.exports() {
		if len(e.cfg.Allow) > 0 {
			continue
		}
		d := discovery.Export{
			Name:        e.cfg.Name,
			Description: e.cfg.Description,
			ReadOnly:    e.cfg.ReadOnly,
			TLS:         e.exp.TLSOnly,
		}
		if !e.perClient() {
			st := e.current()
			if st == nil {
				continue
			}
			info := st.b.Info()
			d.Size = st.b.Size()
			d.ReadOnly = d.ReadOnly || info.ReadOnly && e.cfg.CopyOnWrite == ""
			d.BlockSize = info.MinBlock
		}
		out = append(out, d)
	}
	return out
}

// probeStorage opens storage that has appeared and drops storage that has
// vanished or been replaced, for exports that are not per client.
func (a *appliance) probeStorage() {
	for _, e := range a.exports.exports() {
		if e.perClient() {
			continue
		}
		had := e.current() != nil
		st, err := e.acquire(netip.Addr{})
		switch {
		case err == nil:
			e.put(st)
			if !had {
				a.log.Info("storage appeared; export available", "export", e.cfg.Name, "path", e.cfg.Path)
			}
		case had:
			a.log.Warn("storage vanished; export unavailable until it is back", "export", e.cfg.Name, "path", e.cfg.Path, "err", err)
		}
	}
}
