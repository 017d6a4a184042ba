package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from pools by power-of-two size class, shared by all
// connections. A connection holds a buffer only while a request is in
// flight, so an idle connection costs no payload memory, and a busy one
// allocates nothing once the pools are warm.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 30 // 1 GiB, above any MaxPayload we accept
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of length n. Put it back with putBuf.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := bufClass(cap(*p))
	if cap(*p) != 1<<(c+minBufShift) {
		return // not one of ours
	}
	bufPools[c].Put(p)
}

// budget bounds the payload bytes one connection holds at once. Only the
// connection's reader acquires; workers release.
type budget struct {
	mu    sync.Mutex
	cond  sync.Cond
	used  int64
	limit int64
}

func (b *budget) init(limit int64) {
	b.limit = limit
	b.cond.L = &b.mu
}

// acquire waits until n more bytes fit. A request larger than the whole
// budget still runs, alone.
func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.limit {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

// fits says whether n more bytes fit now, so acquire would not wait.
func (b *budget) fits(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used == 0 || b.used+n <= b.limit
}

func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Signal()
}
