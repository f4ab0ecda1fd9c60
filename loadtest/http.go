package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// httpSink publishes through POST /v1/events. Sessions are sharded over
// the workers by key, and each worker sends one request at a time, so a
// session's events reach the gateway in seq order.
//
// Once ctx ends (Ctrl-C), the request in flight is cancelled and what is
// still queued fails at once with ctx's error instead of being sent.
type httpSink struct {
	ctx    context.Context
	r      *run
	client *http.Client
	queues []chan pending
	wg     sync.WaitGroup
}

func newHTTPSink(ctx context.Context, r *run) *httpSink {
	h := &httpSink{ctx: ctx, r: r, client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: r.cfg.HTTPConcurrency}}}
	for range r.cfg.HTTPConcurrency {
		q := make(chan pending, 1<<16)
		h.queues = append(h.queues, q)
		h.wg.Add(1)
		go h.worker(q)
	}
	return h
}

func (h *httpSink) send(ps []pending) {
	for _, p := range ps {
		f := fnv.New32a()
		_, _ = io.WriteString(f, strings.TrimSuffix(p.key, "-bad"))
		h.queues[f.Sum32()%uint32(len(h.queues))] <- p
	}
}

func (h *httpSink) close() error {
	for _, q := range h.queues {
		close(q)
	}
	h.wg.Wait()
	return nil
}

// worker sends what its queue holds, up to HTTPBatch events per request.
func (h *httpSink) worker(q chan pending) {
	defer h.wg.Done()
	var batch []pending
	for p := range q {
		batch = append(batch[:0], p)
	more:
		for len(batch) < h.r.cfg.HTTPBatch {
			select {
			case p, ok := <-q:
				if !ok {
					break more
				}
				batch = append(batch, p)
			default:
				break more
			}
		}
		err := h.ctx.Err()
		if err == nil {
			err = h.post(batch)
		}
		for _, p := range batch {
			h.r.acked(p.key, p.value, err)
		}
	}
}

// post sends one NDJSON batch; a 202 acknowledges all of it. The key is
// not sent: the gateway derives it from the event, so FaultBadKey has no
// effect over HTTP.
func (h *httpSink) post(batch []pending) error {
	var body bytes.Buffer
	for _, p := range batch {
		body.Write(p.value)
		body.WriteByte('\n')
	}
	req, err := http.NewRequestWithContext(h.ctx, http.MethodPost, strings.TrimSuffix(h.r.cfg.HTTP, "/")+"/v1/events", &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	if h.r.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+h.r.cfg.APIKey)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST /v1/events: %s: %s", resp.Status, msg)
	}
	return nil
}
