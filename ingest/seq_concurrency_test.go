package ingest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentAssignedSeqsAllAccepted: requests that write one session
// at once with gateway-assigned seqs all get a seq of their own. Before,
// they read the same hint, published at the same seq, and the losers
// retried at the decider's expected seq, which the winners' next events
// had often taken by then (and lowered the shared hint to it, so everyone
// collided again): some events ended 409 SEQ_CONFLICT after 8 attempts.
func TestConcurrentAssignedSeqsAllAccepted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	h.tailStarted(t)
	const writers, events = 6, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	seqs := map[uint64]bool{}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lines []string
			for i := range events {
				lines = append(lines, ev("acme", "conc", 0, "MODEL_CALL_STARTED", fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)))
			}
			var resp EventsResponse
			r := h.do(t, "POST", "/v1/events", "", "application/x-ndjson", strings.Join(lines, "\n"), &resp)
			mu.Lock()
			defer mu.Unlock()
			if r.StatusCode != 202 {
				t.Errorf("writer %d: status %d, %+v", w, r.StatusCode, resp.Error)
			}
			for _, res := range resp.Results {
				if res.Status != "accepted" || seqs[res.Seq] {
					t.Errorf("writer %d: %+v %+v", w, res, res.Error)
				}
				seqs[res.Seq] = true
			}
		}()
	}
	wg.Wait()
	h.srv.seqLocks.mu.Lock()
	if n := len(h.srv.seqLocks.m); n != 0 {
		t.Errorf("%d session locks left after the requests ended", n)
	}
	h.srv.seqLocks.mu.Unlock()
	for seq := uint64(1); seq <= writers*events; seq++ {
		if !seqs[seq] {
			t.Errorf("seq %d not reported", seq)
		}
	}
}
