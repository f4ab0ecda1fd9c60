package mcpproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/schemas/envelope"
)

// cancellableUpstream holds each tools/call until released or cancelled by
// a notifications/cancelled naming its (upstream) id; a cancelled call
// gets no response, as the MCP SDKs do.
type cancellableUpstream struct {
	recUpstream
	mu        sync.Mutex
	inflight  map[string]chan bool // upstream id → release (false) or cancel (true)
	cancelled []string             // upstream ids named by cancellations
	calls     []string             // upstream ids in arrival order
}

func (u *cancellableUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method != "tools/call" {
		return u.recUpstream.roundTrip(ctx, req)
	}
	ch := make(chan bool, 1)
	u.mu.Lock()
	u.inflight[string(req.ID)] = ch
	u.calls = append(u.calls, string(req.ID))
	u.mu.Unlock()
	select {
	case cancelled := <-ch:
		if cancelled {
			<-ctx.Done()
			return nil, ctx.Err()
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &message{JSONRPC: "2.0", ID: req.ID, Result: json.RawMessage(`{"content":[{"type":"text","text":"ran"}]}`)}, nil
}

func (u *cancellableUpstream) send(ctx context.Context, m *message) error {
	if m.Method == "notifications/cancelled" {
		var p struct {
			RequestID json.RawMessage `json:"requestId"`
		}
		_ = json.Unmarshal(m.Params, &p)
		u.mu.Lock()
		u.cancelled = append(u.cancelled, string(p.RequestID))
		if ch := u.inflight[string(p.RequestID)]; ch != nil {
			ch <- true
			delete(u.inflight, string(p.RequestID))
		}
		u.mu.Unlock()
	}
	return u.recUpstream.send(ctx, m)
}

func (u *cancellableUpstream) waitCalls(t *testing.T, n int) []string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		u.mu.Lock()
		calls := append([]string(nil), u.calls...)
		u.mu.Unlock()
		if len(calls) >= n {
			return calls
		}
	}
	t.Fatalf("fewer than %d calls reached the server", n)
	return nil
}

// TestCancelReachesTheCallItNames: the agent cancels its request 2 while
// another call travels upstream under id 2. The cancellation must reach the
// server under the id the server knows the cancelled call by, and the other
// call must complete.
func TestCancelReachesTheCallItNames(t *testing.T) {
	up := &cancellableUpstream{inflight: map[string]chan bool{}}
	_, url := inProcess(t, &countingPipeline{}, up, func(c *Config) { c.UpstreamTimeout = 10 * time.Second })
	c := connect(t, url)
	type answer struct {
		who string
		m   *message
	}
	answers := make(chan answer, 2)
	call := func(id int, who string) {
		_, _, m := c.post(t, `{"jsonrpc":"2.0","id":`+strconv.Itoa(id)+`,"method":"tools/call","params":{"name":"echo","arguments":{"who":"`+who+`"}}}`)
		answers <- answer{who, m}
	}
	go call(100, "A")
	upA := up.waitCalls(t, 1)[0]
	go call(2, "B")
	upB := up.waitCalls(t, 2)[1]
	if upA == upB {
		t.Fatal("two calls under one upstream id")
	}
	c.post(t, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}`)
	var b answer
	select {
	case b = <-answers:
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled call did not end")
	}
	if b.who != "B" || b.m.Error == nil {
		t.Fatalf("first answer %s %+v: want B, ended with an error", b.who, b.m)
	}
	up.mu.Lock()
	cancelled := append([]string(nil), up.cancelled...)
	if ch := up.inflight[upA]; ch != nil {
		ch <- false // the server finishes A
	}
	up.mu.Unlock()
	if len(cancelled) != 1 || cancelled[0] != upB {
		t.Errorf("the server was told to cancel %v, want [%s] (B's upstream id; A's is %s)", cancelled, upB, upA)
	}
	select {
	case a := <-answers:
		if a.who != "A" || a.m.Error != nil {
			t.Errorf("A: %+v", a.m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("A did not complete")
	}
}

// TestStuckStdioServerDoesNotHoldRequests: a server that stops reading its
// stdin fills the pipe; the write of a large request must end with the
// request's time limit (here --mcp-upstream-timeout 1s) instead of
// blocking, and the session, whose framing a partial line broke, ends.
func TestStuckStdioServerDoesNotHoldRequests(t *testing.T) {
	script := filepath.Join(t.TempDir(), "srv.sh")
	body := "#!/bin/sh\nread line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{}}}'\nexec sleep 60\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.UpstreamCmd, cfg.UpstreamTimeout = script, time.Second
	p, err := New(cfg, &countingPipeline{}, nil, WithUpstreamStderr(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	hs := httptest.NewServer(p.Handler())
	defer hs.Close()
	c := connect(t, hs.URL)
	done := make(chan *message, 1)
	go func() {
		_, _, m := c.post(t, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"`+strings.Repeat("x", 1<<20)+`"}}}`)
		done <- m
	}()
	select {
	case m := <-done:
		if m == nil || m.Error == nil || !strings.Contains(m.Error.Message, "stdin") {
			t.Fatalf("answer %+v, want the failed write to the server's stdin", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer: the write to the stuck server's stdin is not bounded")
	}
}

// limitPipeline allows every call with max_output_bytes 64 and keeps the
// payloads recorded.
type limitPipeline struct{ recordingPipeline }

func (p *limitPipeline) Propose(ctx context.Context, ev *envelope.Event) (*ingest.ProposalResponse, error) {
	r, err := (&scriptedPipeline{outcome: envelope.Allow}).Propose(ctx, ev)
	if err == nil {
		r.Decision.Constraints.MaxOutputBytes = 64
	}
	return r, err
}

// TestResultOverMaxOutputBytesIsWithheld: the decision's max_output_bytes
// bounds what the agent receives; a larger result is withheld, and its
// size recorded as an error result.
func TestResultOverMaxOutputBytesIsWithheld(t *testing.T) {
	pipe := &limitPipeline{}
	_, url := inProcess(t, pipe, &recUpstream{}, nil)
	c := connect(t, url)
	small := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if small.Error != nil {
		t.Fatalf("a result within the limit: %+v", small.Error)
	}
	up := &bigUpstream{}
	_, url = inProcess(t, pipe, up, nil)
	c = connect(t, url)
	m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if m.Error == nil || !strings.Contains(m.Error.Message, "max_output_bytes 64") || strings.Contains(string(m.Result), "xxxx") {
		t.Fatalf("a result over the limit reached the agent: %+v %s", m.Error, m.Result)
	}
	pipe.mu.Lock()
	defer pipe.mu.Unlock()
	last := pipe.payloads[len(pipe.payloads)-1]
	if !strings.HasPrefix(last, "TOOL_RESULT ") || !strings.Contains(last, `"is_error":true`) {
		t.Fatalf("recorded %q, want an error TOOL_RESULT", last)
	}
}

// bigUpstream answers every tools/call with a 1 KiB result.
type bigUpstream struct{ recUpstream }

func (u *bigUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method != "tools/call" {
		return u.recUpstream.roundTrip(ctx, req)
	}
	return &message{JSONRPC: "2.0", ID: req.ID, Result: json.RawMessage(`{"content":[{"type":"text","text":"` + strings.Repeat("x", 1024) + `"}]}`)}, nil
}

// TestMethodLabelsAreBounded: methods a client invents are counted under
// "other", not as series of their own.
func TestMethodLabelsAreBounded(t *testing.T) {
	for m, want := range map[string]string{"tools/call": "tools/call", "notifications/cancelled": "notifications/cancelled",
		"junk-1": "other", "notifications/" + strings.Repeat("A", 4096): "other", "": "other"} {
		if got := methodLabel(m); got != want {
			t.Errorf("methodLabel(%.20q) = %q, want %q", m, got, want)
		}
	}
}

// TestLongCallKeepsItsSession: a tools/call that runs longer than
// --mcp-idle-timeout keeps its session (and upstream) until it ends; the
// session is idle from its last answer on.
func TestLongCallKeepsItsSession(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
	up := &cancellableUpstream{inflight: map[string]chan bool{}}
	p, url := inProcess(t, &countingPipeline{}, up, func(c *Config) {
		c.IdleTimeout, c.UpstreamTimeout = time.Minute, 10*time.Second
	})
	p.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := connect(t, url)
	answer := make(chan *message, 1)
	go func() {
		_, _, m := c.post(t, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}`)
		answer <- m
	}()
	upID := up.waitCalls(t, 1)[0]
	open := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.sessions)
	}
	clock(2 * time.Minute)
	p.expireIdle()
	if open() != 1 {
		t.Fatal("the session was closed while its call was running")
	}
	up.mu.Lock()
	up.inflight[upID] <- false
	up.mu.Unlock()
	if m := <-answer; m.Error != nil {
		t.Fatalf("the long call: %+v", m.Error)
	}
	clock(30 * time.Second)
	p.expireIdle()
	if open() != 1 {
		t.Fatal("the session was closed 30s after its last answer (idle timeout 1m)")
	}
	clock(time.Minute)
	p.expireIdle()
	if open() != 0 {
		t.Fatal("the session was not closed after being idle")
	}
}

// TestErrorOverMaxOutputBytesIsWithheld: a server's error answer puts its
// message and data in the agent's context like a result, so the
// decision's max_output_bytes bounds it too; the recorded message is cut
// to the limit.
func TestErrorOverMaxOutputBytesIsWithheld(t *testing.T) {
	pipe := &limitPipeline{}
	_, url := inProcess(t, pipe, &bigErrorUpstream{}, nil)
	c := connect(t, url)
	m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if m.Error == nil || !strings.Contains(m.Error.Message, "max_output_bytes 64") || strings.Contains(m.Error.Message, "yyyy") || strings.Contains(string(m.Error.Data), "zzzz") {
		t.Fatalf("an error over the limit reached the agent: %+v", m.Error)
	}
	pipe.mu.Lock()
	defer pipe.mu.Unlock()
	last := pipe.payloads[len(pipe.payloads)-1]
	if !strings.HasPrefix(last, "TOOL_RESULT ") || !strings.Contains(last, `"is_error":true`) || strings.Count(last, "y") > 64+8 {
		t.Fatalf("recorded %q, want an error TOOL_RESULT with the message cut to the limit", last)
	}
}

// bigErrorUpstream answers every tools/call with a JSON-RPC error of 1 KiB
// message and 1 KiB data.
type bigErrorUpstream struct{ recUpstream }

func (u *bigErrorUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method != "tools/call" {
		return u.recUpstream.roundTrip(ctx, req)
	}
	return &message{JSONRPC: "2.0", ID: req.ID, Error: &rpcError{Code: -32000, Message: strings.Repeat("y", 1024),
		Data: json.RawMessage(`"` + strings.Repeat("z", 1024) + `"`)}}, nil
}

// shortErrorBigDataUpstream answers every tools/call with an error whose
// message is short and whose data is 1 KiB.
type shortErrorBigDataUpstream struct{ recUpstream }

func (u *shortErrorBigDataUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method != "tools/call" {
		return u.recUpstream.roundTrip(ctx, req)
	}
	return &message{JSONRPC: "2.0", ID: req.ID, Error: &rpcError{Code: -32000, Message: "short",
		Data: json.RawMessage(`"` + strings.Repeat("z", 1024) + `"`)}}, nil
}

// TestErrorWithLargeDataIsWithheld: a server error whose message is
// within max_output_bytes but whose data is not is withheld and recorded
// like any error over the limit (cutting the message to the limit must not
// slice past its end).
func TestErrorWithLargeDataIsWithheld(t *testing.T) {
	pipe := &limitPipeline{}
	_, url := inProcess(t, pipe, &shortErrorBigDataUpstream{}, nil)
	c := connect(t, url)
	m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if m.Error == nil || !strings.Contains(m.Error.Message, "max_output_bytes 64") || strings.Contains(string(m.Error.Data), "zzzz") {
		t.Fatalf("an error over the limit reached the agent: %+v", m.Error)
	}
	pipe.mu.Lock()
	defer pipe.mu.Unlock()
	last := pipe.payloads[len(pipe.payloads)-1]
	if !strings.HasPrefix(last, "TOOL_RESULT ") || !strings.Contains(last, `"message":"short"`) || !strings.Contains(last, `"output_bytes":1031`) {
		t.Fatalf("recorded %q, want an error TOOL_RESULT with its message and size", last)
	}
}

// TestHTTPErrorStatusWithinMaxOutputBytes: an HTTP server's error status
// carries its words in two places, the reason phrase (whose length it
// chooses) and the body. The phrase never reaches the agent (the status
// text is the proxy's); the body does only within the decision's
// max_output_bytes (64 here), and is withheld, its size recorded, past it.
func TestHTTPErrorStatusWithinMaxOutputBytes(t *testing.T) {
	fake := &fakeHTTPServer{sessions: map[string]bool{}}
	var body atomic.Value
	body.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		if !strings.Contains(string(b), `"tools/call"`) {
			fake.ServeHTTP(w, r)
			return
		}
		// A status line with a reason phrase of the server's choosing.
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		text := body.Load().(string)
		fmt.Fprintf(buf, "HTTP/1.1 500 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", strings.Repeat("P", 4096), len(text), text)
		_ = buf.Flush()
	}))
	defer srv.Close()
	pipe := &limitPipeline{}
	_, url := inProcess(t, pipe, newHTTPUpstream(srv.URL, srv.Client(), 1<<20), nil)
	c := connect(t, url)

	body.Store("short reason")
	m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if m.Error == nil || !strings.Contains(m.Error.Message, "500 Internal Server Error: short reason") || strings.Contains(m.Error.Message, "PPPP") {
		t.Fatalf("error within the limit: %+v", m.Error)
	}

	body.Store(strings.Repeat("z", 300))
	m = c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if m.Error == nil || strings.Contains(m.Error.Message, "zzzz") || !strings.Contains(m.Error.Message, "300-byte body") {
		t.Fatalf("a body over max_output_bytes reached the agent: %+v", m.Error)
	}
	pipe.mu.Lock()
	defer pipe.mu.Unlock()
	last := pipe.payloads[len(pipe.payloads)-1]
	if !strings.HasPrefix(last, "TOOL_RESULT ") || strings.Contains(last, "zzzz") || strings.Contains(last, "PPPP") || !strings.Contains(last, `"output_bytes":300`) {
		t.Fatalf("recorded %q, want an error TOOL_RESULT with the body's size, without the body", last)
	}
}
