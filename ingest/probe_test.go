package ingest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// TestConcurrentClientsAndHugeBodies is the load probe: 64
// concurrent clients write their sessions while 8 clients send 10 MB
// bodies. The huge bodies get 413 with a code, the gateway stays up, and
// every event it acknowledged reaches the decided topic exactly once.
func TestConcurrentClientsAndHugeBodies(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true, cfg: func(c *Config) { c.RateLimit = 0 }})
	const clients, perClient = 64, 10
	huge := `[` + ev("acme", "huge", 1, "MODEL_CALL_STARTED", `{"blob":"`+strings.Repeat("x", 10<<20)+`"}`) + `]`

	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := map[string]int{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp errResp
			if r := h.do(t, "POST", "/v1/events", "", "application/json", huge, &resp); r.StatusCode != 413 || resp.Error.Code == "" {
				t.Errorf("10 MB body: %d %+v", r.StatusCode, resp.Error)
			}
		}()
	}
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sid := fmt.Sprintf("conc-%02d", c)
			for seq := 1; seq <= perClient; seq++ {
				var resp EventsResponse
				r := h.do(t, "POST", "/v1/events", "", "application/json", ev("acme", sid, seq, "MODEL_CALL_STARTED", `{}`), &resp)
				if r.StatusCode != 202 || resp.Accepted != 1 {
					t.Errorf("client %d seq %d: %d %+v", c, seq, r.StatusCode, resp)
					return
				}
				mu.Lock()
				accepted[fmt.Sprintf("%s/%d", sid, seq)] = 0
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if len(accepted) != clients*perClient {
		t.Fatalf("%d events acknowledged, want %d", len(accepted), clients*perClient)
	}

	// Every acknowledged event is decided exactly once.
	cons, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: h.brokers, Topics: []string{h.topics.Decided}})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	seen, dups := 0, 0
	deadline := time.Now().Add(60 * time.Second)
	for seen < len(accepted) && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		recs, _ := cons.Poll(ctx)
		cancel()
		for _, r := range recs {
			e, err := envelope.Decoder{Sealed: true}.Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			k := fmt.Sprintf("%s/%d", e.SessionID, e.Seq)
			n, ok := accepted[k]
			if !ok {
				continue
			}
			if n > 0 {
				dups++
			}
			accepted[k] = n + 1
			seen++
		}
	}
	if seen != len(accepted) || dups != 0 {
		t.Fatalf("decided %d of %d acknowledged events, %d duplicates", seen, len(accepted), dups)
	}
	// Still serving.
	var resp EventsResponse
	if r := h.do(t, "POST", "/v1/events", "", "application/json", ev("acme", "after", 1, "MODEL_CALL_STARTED", `{}`), &resp); r.StatusCode != 202 {
		t.Fatalf("after the probe: %d %+v", r.StatusCode, resp)
	}
}
