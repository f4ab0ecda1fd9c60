package ingest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchLoad runs b.N requests built by body(i) at the given concurrency
// over keep-alive connections and reports requests/s, events/s and the
// p50/p99 latency.
func benchLoad(b *testing.B, h *harness, conc, eventsPerReq int, contentType string, req func(i int64) (string, []byte)) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc * 2}}
	var next atomic.Int64
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				path, body := req(i)
				t0 := time.Now()
				resp, err := client.Post(h.url+path, contentType, bytes.NewReader(body))
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64(len(all))/el.Seconds(), "req/s")
	b.ReportMetric(float64(len(all)*eventsPerReq)/el.Seconds(), "events/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99_ms")
}

func BenchmarkEvents(b *testing.B) {
	h := newHarness(b, harnessOpts{dev: true, noDecider: true, cfg: func(c *Config) { c.RateLimit = 0 }})
	payload := `{"tool_name":"web_fetch","call_id":"c","args":{"url":"https://api.example.com/v1/items?page=1"}}`
	for _, bc := range []struct {
		batch, conc int
	}{{1, 1}, {1, 16}, {100, 1}, {100, 16}} {
		b.Run(fmt.Sprintf("batch=%d/conc=%d", bc.batch, bc.conc), func(b *testing.B) {
			run := time.Now().UnixNano()
			benchLoad(b, h, bc.conc, bc.batch, "application/x-ndjson", func(i int64) (string, []byte) {
				var sb strings.Builder
				for j := 0; j < bc.batch; j++ {
					// One session per request: every event is its next seq.
					sb.WriteString(ev("acme", fmt.Sprintf("b%d-%d", run, i), j+1, "TOOL_CALL_PROPOSED", payload))
					sb.WriteByte('\n')
				}
				return "/v1/events", []byte(sb.String())
			})
		})
	}
}

func BenchmarkDecide(b *testing.B) {
	h := newHarness(b, harnessOpts{dev: true, noDecider: true, cfg: func(c *Config) { c.RateLimit = 0 }})
	body := []byte(`{"event":{"tenant_id":"acme","session_id":"d","seq":1,"ts_unix_ms":1767225600000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{"path":"/a"}}}}`)
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			benchLoad(b, h, conc, 1, "application/json", func(int64) (string, []byte) { return "/v1/policy/decide", body })
		})
	}
}

func BenchmarkProposal(b *testing.B) {
	h := newHarness(b, harnessOpts{dev: true, cfg: func(c *Config) { c.RateLimit = 0 }})
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			run := time.Now().UnixNano()
			// A new session per request: each proposal is seq 1 of its session.
			body := []byte(`{"seq":1,"payload":{"tool_name":"read_file","call_id":"c1","args":{"path":"/a"}}}`)
			benchLoad(b, h, conc, 1, "application/json", func(i int64) (string, []byte) {
				return fmt.Sprintf("/v1/sessions/p%d-%d/proposals?tenant_id=acme", run, i), body
			})
		})
	}
}
