package mcpproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
	"aegis.dev/aegis/sealer"
)

// stack is the pipeline the tests share: an embedded broker, the decider
// and sealer stages, and the ingest gateway (dev mode) with its HTTP API.
type stack struct {
	brokers  []string
	topics   pipeline.Topics
	gateway  *ingest.Server
	api      *httptest.Server
	registry *manifest.Registry
	stop     func()
	err      error
}

var (
	sharedOnce  sync.Once
	sharedStack *stack
)

// pipelineStack returns the shared stack, started on first use; TestMain
// stops it.
func pipelineStack(tb testing.TB) *stack {
	tb.Helper()
	sharedOnce.Do(func() { sharedStack = startStack() })
	if sharedStack.err != nil {
		tb.Fatal(sharedStack.err)
	}
	return sharedStack
}

func startStack() *stack {
	st := &stack{}
	ctx, cancel := context.WithCancel(context.Background())
	emb, err := stream.StartEmbedded(ctx, stream.EmbeddedConfig{Addr: "127.0.0.1:0", Partitions: 3})
	if err != nil {
		cancel()
		return &stack{err: err}
	}
	var wg sync.WaitGroup
	st.stop = func() {
		if st.api != nil {
			st.api.Close()
		}
		cancel()
		wg.Wait()
		emb.Close()
	}
	fail := func(err error) *stack { st.stop(); st.stop, st.err = nil, err; return st }
	st.brokers, st.topics = emb.Brokers(), pipeline.NewTopics("aegis.")
	if err := stream.EnsureTopics(ctx, st.brokers, st.topics.Specs(3, 1<<20)); err != nil {
		return fail(err)
	}
	pe, err := policy.New(policy.Default())
	if err != nil {
		return fail(err)
	}
	if st.registry, err = manifest.LoadDir("testdata/manifests"); err != nil {
		return fail(err)
	}
	eng := decider.NewEngine(pe, st.registry)
	dst := decider.NewStage(eng, decider.StageConfig{Topics: st.topics, Partitions: 3}, nil, nil)
	sst := sealer.New(sealer.Config{Topics: st.topics, Partitions: 3}, nil, nil)
	var stages []*stream.Transactor
	for name, s := range map[string]struct {
		tc stream.TransactConfig
		np func(int32) stream.Processor
	}{"decider": {dst.TransactConfig(), dst.NewProcessor}, "sealer": {sst.TransactConfig(), sst.NewProcessor}} {
		tc := s.tc
		tc.Brokers, tc.Group, tc.TransactionalID = st.brokers, "aegis."+name, "aegis."+name+"-mcp-test"
		tc.SessionTimeout, tc.HeartbeatInterval = 6*time.Second, time.Second
		tr, err := stream.NewTransactor(tc, s.np)
		if err != nil {
			return fail(err)
		}
		stages = append(stages, tr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = tr.Run(ctx)
		}()
	}
	if st.gateway, err = ingest.New(ingest.Defaults(), ingest.Env{Brokers: st.brokers, Topics: st.topics, Dev: true, Engine: eng},
		ingest.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))); err != nil {
		return fail(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = st.gateway.Run(ctx)
	}()
	mux := http.NewServeMux()
	st.gateway.Routes(mux)
	st.api = httptest.NewServer(mux)
	deadline := time.Now().Add(30 * time.Second)
	ready := func() bool {
		for _, tr := range stages {
			if !tr.Ready() {
				return false
			}
		}
		return st.gateway.Ready()
	}
	for !ready() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !ready() {
		return fail(context.DeadlineExceeded)
	}
	return st
}

// sealed returns the sealed events of tenant/session once there are at
// least want of them.
func (st *stack) sealed(tb testing.TB, tenant, session string, want int) []*envelope.Event {
	tb.Helper()
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: st.brokers, Topics: []string{st.topics.Sealed}})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var out []*envelope.Event
	key := tenant + "/" + session
	deadline := time.Now().Add(20 * time.Second)
	for len(out) < want && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		recs, err := c.Poll(ctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			tb.Fatal(err)
		}
		for _, r := range recs {
			if string(r.Key) != key {
				continue
			}
			ev, err := envelope.Decoder{Sealed: true}.Decode(r.Value)
			if err != nil {
				tb.Fatalf("sealed record %s: %v", r.Value, err)
			}
			out = append(out, ev)
		}
	}
	if len(out) < want {
		tb.Fatalf("%s: %d sealed events, want at least %d", key, len(out), want)
	}
	return out
}

// newProxy returns a proxy on the shared stack with cfg adjusted by edit,
// spawning the fake stdio server unless edit sets an upstream URL.
func newProxy(tb testing.TB, edit func(*Config), opts ...Option) *Proxy {
	tb.Helper()
	st := pipelineStack(tb)
	tb.Setenv(fakeStdioEnv, "1")
	cfg := Defaults()
	cfg.Tenant, cfg.UpstreamCmd, cfg.Addr = "acme", testExecutable(tb), "127.0.0.1:0"
	if edit != nil {
		edit(&cfg)
	}
	p, err := New(cfg, st.gateway, st.registry, append([]Option{WithUpstreamStderr(io.Discard)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.closeAll)
	return p
}

// testExecutable is the test binary: with fakeStdioEnv set it is the
// fake MCP server.
func testExecutable(tb testing.TB) string {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	return exe
}

// client is a Streamable HTTP MCP client of one session.
type client struct {
	url     string
	session string
	n       int
	mu      sync.Mutex
}

// post sends one message and returns the status, the session header and
// the decoded response (nil for an empty body).
func (c *client) post(tb testing.TB, body string) (int, string, *message) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, c.url, bytes.NewBufferString(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if c.session != "" {
		req.Header.Set(headerSession, c.session)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return resp.StatusCode, resp.Header.Get(headerSession), nil
	}
	var m message
	if err := json.Unmarshal(raw, &m); err != nil {
		tb.Fatalf("response %d %s: %v", resp.StatusCode, raw, err)
	}
	return resp.StatusCode, resp.Header.Get(headerSession), &m
}

// request sends a request with the next id and returns the response.
func (c *client) request(tb testing.TB, method string, params any) *message {
	tb.Helper()
	c.mu.Lock()
	c.n++
	id := c.n
	c.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	status, _, m := c.post(tb, string(b))
	if status != http.StatusOK || m == nil {
		tb.Fatalf("%s: status %d, response %+v", method, status, m)
	}
	if string(m.ID) != string(json.RawMessage(jsonInt(id))) {
		tb.Fatalf("%s: response id %s, want %d", method, m.ID, id)
	}
	return m
}

func jsonInt(n int) []byte { b, _ := json.Marshal(n); return b }

// connect initializes a session on the proxy served at url.
func connect(tb testing.TB, url string) *client {
	tb.Helper()
	c := &client{url: url}
	status, sid, m := c.post(tb, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}`)
	if status != http.StatusOK || sid == "" || m == nil || m.Error != nil {
		tb.Fatalf("initialize: status %d, session %q, response %+v", status, sid, m)
	}
	c.session = sid
	if status, _, _ := c.post(tb, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); status != http.StatusAccepted {
		tb.Fatalf("notifications/initialized: status %d, want 202", status)
	}
	return c
}

// errorData decodes a JSON-RPC error's data.
func errorData(tb testing.TB, m *message) map[string]any {
	tb.Helper()
	if m.Error == nil {
		tb.Fatalf("want an error, got result %s", m.Result)
	}
	var d map[string]any
	if len(m.Error.Data) > 0 {
		if err := json.Unmarshal(m.Error.Data, &d); err != nil {
			tb.Fatal(err)
		}
	}
	return d
}
