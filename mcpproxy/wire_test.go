package mcpproxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/internal/testutil"
	"aegis.dev/aegis/schemas/manifest"
)

// TestResponseWithResultAndErrorIsRefused: a JSON-RPC response carries a
// result or an error, not both. A server that sends both would otherwise
// have its result go to the agent beside the error: the proxy records and
// bounds only the error, so the result would pass max_output_bytes and
// tools/list's filter.
func TestResponseWithResultAndErrorIsRefused(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		m, _ := parseMessage(b)
		if m == nil || !m.isRequest() {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		resp := fakeAnswer(m)
		if m.Method == "tools/call" || m.Method == "tools/list" {
			resp.Error = &rpcError{Code: -32050, Message: "short"}
			resp.Result = json.RawMessage(`{"tools":[{"name":"rm_rf"}],"content":[{"type":"text","text":"` + strings.Repeat("x", 1024) + `"}]}`)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(encode(resp))
	}))
	defer hs.Close()
	pipe := &limitPipeline{}
	p, url := inProcess(t, pipe, nil, nil)
	p.dial = func() (upstream, error) { return newHTTPUpstream(hs.URL, hs.Client(), 1<<20), nil }
	c := connect(t, url)
	for _, method := range []string{"tools/call", "tools/list"} {
		m := c.request(t, method, map[string]any{"name": "echo", "arguments": map[string]any{}})
		if m.Error == nil || len(m.Result) > 0 {
			t.Errorf("%s: the server's result reached the agent beside its error: %+v %.80s", method, m.Error, m.Result)
		}
	}
}

// metaUpstream records the params of the tools/call it gets.
type metaUpstream struct {
	recUpstream
	mu     sync.Mutex
	params []string
}

func (u *metaUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method == "tools/call" {
		u.mu.Lock()
		u.params = append(u.params, string(req.Params))
		u.mu.Unlock()
	}
	return u.recUpstream.roundTrip(ctx, req)
}

// TestCallReachesTheServerAsDecided: the server gets the tool name and
// arguments that were decided, and nothing else of the agent's: _meta and
// other params members are not part of the proposal, so what they carry
// (a secret the policy would have caught in the arguments) must not reach
// the server.
func TestCallReachesTheServerAsDecided(t *testing.T) {
	up := &metaUpstream{}
	_, url := inProcess(t, &countingPipeline{}, up, nil)
	c := connect(t, url)
	m := c.request(t, "tools/call", json.RawMessage(`{"name":"echo","arguments":{"text":"hi"},"_meta":{"progressToken":1,"x":"AKIA-SECRET"},"extra":"AKIA-SECRET"}`))
	if m.Error != nil {
		t.Fatalf("tools/call: %+v", m.Error)
	}
	m = c.request(t, "tools/call", json.RawMessage(`{"name":"echo"}`))
	if m.Error != nil {
		t.Fatalf("tools/call without arguments: %+v", m.Error)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	want := []string{`{"name":"echo","arguments":{"text":"hi"}}`, `{"name":"echo","arguments":{}}`}
	if strings.Join(up.params, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the server got params %q, want %q", up.params, want)
	}
}

// TestClientNotificationsCarryNothingToTheServer: notifications are
// neither decided nor recorded, so none may carry the agent's content to
// the server. A client's notifications/progress reports on a server
// request, which the proxy never relays: it is dropped. The others are
// passed on without their params.
func TestClientNotificationsCarryNothingToTheServer(t *testing.T) {
	up := &paramsNotifyUpstream{}
	_, url := inProcess(t, &countingPipeline{}, up, nil)
	c := connect(t, url)
	for _, n := range []string{
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1,"message":"AKIA-SECRET"}}`,
		`{"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{"_meta":{"x":"AKIA-SECRET"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized","params":{"_meta":{"x":"AKIA-SECRET"}}}`,
	} {
		if status, _, _ := c.post(t, n); status != http.StatusAccepted {
			t.Fatalf("%s: status %d, want 202", n, status)
		}
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for _, s := range up.sent {
		if strings.Contains(s, "AKIA-SECRET") || strings.Contains(s, "notifications/progress") {
			t.Errorf("the server got %s", s)
		}
	}
}

// paramsNotifyUpstream records the notifications it gets, as sent.
type paramsNotifyUpstream struct {
	recUpstream
	mu   sync.Mutex
	sent []string
}

func (u *paramsNotifyUpstream) send(_ context.Context, m *message) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sent = append(u.sent, string(encode(m)))
	return nil
}

// TestStdioServerThatClosesItsStdoutIsStopped: a server that closes its
// stdout and lives on must not hold close (and with it idle expiry, a
// DELETE, the proxy's shutdown) forever: it is killed like one that does
// not exit when its stdin closes.
func TestStdioServerThatClosesItsStdoutIsStopped(t *testing.T) {
	for _, script := range []string{
		"exec sleep 60 >&-",
		// Its own child holds the stderr the proxy reads (a writer of
		// WithUpstreamStderr that is not a file).
		"sleep 60 >/dev/null </dev/null &",
	} {
		u, err := dialStdio([]string{"sh", "-c", script}, &testutil.SyncBuffer{}, 1<<20, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		<-u.done
		closed := make(chan struct{})
		go func() {
			_ = u.close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			_ = u.cmd.Process.Kill()
			t.Fatalf("%s: close did not return within 10s", script)
		}
	}
}

// declaresEcho is a manifest registry whose manifest declares echo only.
type declaresEcho struct{}

func (declaresEcho) Resolve(string, string) (*manifest.Manifest, error) {
	return &manifest.Manifest{Permissions: manifest.Permissions{Tools: []string{"echo"}}}, nil
}

// listingUpstream lists the tools of its listing as they are.
type listingUpstream struct {
	recUpstream
	listing string
}

func (u *listingUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method == "tools/list" {
		return &message{JSONRPC: "2.0", ID: req.ID, Result: json.RawMessage(`{"tools":` + u.listing + `}`)}, nil
	}
	return u.recUpstream.roundTrip(ctx, req)
}

// TestToolsListReadsNamesAsTheAgentDoes: tools/list keeps a tool by its
// "name" as the agent's client reads it (case-sensitive keys); a member
// that differs from "name" only in case must not get an undeclared tool
// listed under a declared tool's name.
func TestToolsListReadsNamesAsTheAgentDoes(t *testing.T) {
	up := &listingUpstream{listing: `[{"name":"echo"},{"name":"rm_rf","Name":"echo"},{"NAME":"echo"}]`}
	p, url := inProcess(t, &countingPipeline{}, up, nil)
	p.manifests = declaresEcho{}
	c := connect(t, url)
	m := c.request(t, "tools/list", map[string]any{})
	if m.Error != nil {
		t.Fatalf("tools/list: %+v", m.Error)
	}
	var r struct {
		Tools []map[string]any `json:"tools"`
	}
	if err := json.Unmarshal(m.Result, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Tools) != 1 || r.Tools[0]["name"] != "echo" || len(r.Tools[0]) != 1 {
		t.Fatalf("listed %v, want only echo", r.Tools)
	}
}

// TestShutdownAnswersCallsInFlight: a call still at the server when the
// proxy's shutdown grace ends is cut short, and Run returns only once it
// is recorded (TOOL_RESULT) and answered: aegisd stops the gateway after
// Run returns, so a record written later would be lost.
func TestShutdownAnswersCallsInFlight(t *testing.T) {
	defer func(g time.Duration) { shutdownGrace = g }(shutdownGrace)
	shutdownGrace = 200 * time.Millisecond
	pipe := &recordingPipeline{}
	cfg := Defaults()
	cfg.UpstreamCmd, cfg.Addr = "unused", "127.0.0.1:0"
	p, err := New(cfg, pipe, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.dial = func() (upstream, error) { return &hangingUpstream{}, nil }
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	for p.Addr() == "" {
		time.Sleep(5 * time.Millisecond)
	}
	c := connect(t, "http://"+p.Addr()+cfg.Path)
	answer := make(chan *message, 1)
	go func() {
		_, _, m := c.post(t, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}`)
		answer <- m
	}()
	recorded := func(prefix string) bool {
		pipe.mu.Lock()
		defer pipe.mu.Unlock()
		for _, s := range pipe.payloads {
			if strings.HasPrefix(s, prefix) {
				return true
			}
		}
		return false
	}
	for !recorded("TOOL_CALL_EXECUTED ") {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of the shutdown")
	}
	if !recorded("TOOL_RESULT ") {
		t.Error("Run returned before the call in flight was recorded")
	}
	select {
	case m := <-answer:
		if m == nil || m.Error == nil {
			t.Errorf("the call in flight: %+v", m)
		}
	case <-time.After(time.Second):
		t.Error("the call in flight was not answered")
	}
}

// TestCancelledCallWaitingToBeWrittenIsNotSent: a call waiting for the
// server's stdin (behind a write the server is slow to read) and cancelled
// meanwhile is not written once its turn comes.
func TestCancelledCallWaitingToBeWrittenIsNotSent(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	u := &stdioUpstream{stdin: w, done: make(chan struct{}), writeTimeout: time.Minute, pending: map[string]chan *message{}}
	u.wmu.Lock() // the write before it, stuck
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan error, 1)
	go func() {
		_, err := u.roundTrip(ctx, &message{JSONRPC: "2.0", ID: json.RawMessage("1"), Method: "tools/call", Params: json.RawMessage(`{"name":"echo"}`)})
		sent <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	time.Sleep(50 * time.Millisecond)
	u.wmu.Unlock()
	if err := <-sent; err == nil {
		t.Fatal("the cancelled call got an answer")
	}
	_ = r.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if b, _ := io.ReadAll(r); len(b) > 0 {
		t.Fatalf("the server got the cancelled call: %s", b)
	}
}

// resultUpstream answers every tools/call with its result.
type resultUpstream struct {
	recUpstream
	result string
}

func (u *resultUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	if req.Method == "tools/call" {
		return &message{JSONRPC: "2.0", ID: req.ID, Result: json.RawMessage(u.result)}, nil
	}
	return u.recUpstream.roundTrip(ctx, req)
}

// TestToolResultIsErrorAsTheAgentReadsIt: the TOOL_RESULT's is_error is
// what the agent's client makes of the result's isError (case-sensitive
// keys, and a value other than false that a client reads as true), not
// what Go's decoder makes of it: a server could otherwise report errors
// to the agent that the log (and the session's consecutive-error count)
// shows as successes.
func TestToolResultIsErrorAsTheAgentReadsIt(t *testing.T) {
	for result, want := range map[string]bool{
		`{"content":[],"isError":true}`:                 true,
		`{"content":[],"isError":false}`:                false,
		`{"content":[]}`:                                false,
		`{"content":[],"isError":null}`:                 false,
		`{"content":[],"isError":true,"ISERROR":false}`: true,
		`{"content":[],"isError":"true"}`:               true,
		`{"content":[],"isError":1}`:                    true,
		`{"content":[],"IsError":true,"isError":false}`: true,
	} {
		pipe := &recordingPipeline{}
		_, url := inProcess(t, pipe, &resultUpstream{result: result}, nil)
		c := connect(t, url)
		if m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}}); m.Error != nil {
			t.Fatalf("%s: %+v", result, m.Error)
		}
		pipe.mu.Lock()
		last := pipe.payloads[len(pipe.payloads)-1]
		pipe.mu.Unlock()
		if got := strings.Contains(last, `"is_error":true`); !strings.HasPrefix(last, "TOOL_RESULT ") || got != want {
			t.Errorf("%s: recorded %s, want is_error %v", result, last, want)
		}
	}
}
