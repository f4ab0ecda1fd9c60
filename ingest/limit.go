package ingest

import (
	"math"
	"sync"
	"time"
)

// limiter is a per-tenant token bucket: each tenant's bucket holds up to
// burst tokens and refills at rate tokens per second; one event costs one
// token. It is safe for concurrent use. Buckets of tenants idle long enough
// to be full again are dropped, so memory follows the active tenants.
type limiter struct {
	rate  float64
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: make(map[string]*bucket)}
}

// take charges n events to tenant at time now. It returns 0 when they are
// admitted, else how long until the bucket holds enough tokens (nothing is
// charged then). A request larger than the burst is admitted when the bucket
// is full, so the burst never locks out a maximal batch.
func (l *limiter) take(tenant string, n int, now time.Time) time.Duration {
	if l == nil || l.rate <= 0 {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > time.Minute {
		l.sweep = now
		for t, b := range l.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
				delete(l.buckets, t)
			}
		}
	}
	b := l.buckets[tenant]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[tenant] = b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+el*l.rate)
		b.last = now
	}
	need := math.Min(float64(n), l.burst)
	if b.tokens >= need {
		b.tokens -= float64(n)
		return 0
	}
	wait := time.Duration((need - b.tokens) / l.rate * float64(time.Second))
	return max(wait, time.Millisecond)
}
