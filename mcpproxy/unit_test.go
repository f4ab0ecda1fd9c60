package mcpproxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/schemas/envelope"
)

// scriptedPipeline answers proposals with a fixed outcome or error and
// fails records of one event type; it remembers what was recorded.
type scriptedPipeline struct {
	outcome    envelope.Outcome
	proposeErr error
	failRecord envelope.Type

	mu       sync.Mutex
	recorded []envelope.Type
}

func (s *scriptedPipeline) Propose(_ context.Context, ev *envelope.Event) (*ingest.ProposalResponse, error) {
	if s.proposeErr != nil {
		return nil, s.proposeErr
	}
	tc, err := ev.ToolCall()
	if err != nil {
		return nil, err
	}
	return &ingest.ProposalResponse{Reply: decider.Reply{TenantID: ev.TenantID, SessionID: ev.SessionID, Seq: 1, CallID: tc.CallID,
		ToolName: tc.ToolName, Decision: envelope.Decision{Outcome: s.outcome, Reason: envelope.ReasonOK}}}, nil
}

func (s *scriptedPipeline) Record(_ context.Context, ev *envelope.Event) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Type == s.failRecord {
		return 0, errors.New("broker unavailable")
	}
	s.recorded = append(s.recorded, ev.Type)
	return uint64(len(s.recorded)), nil
}

// newScriptedProxy serves a proxy over the fake stdio server that
// publishes to pipe, and connects one session.
func newScriptedProxy(t *testing.T, pipe Pipeline) *client {
	t.Helper()
	t.Setenv(fakeStdioEnv, "1")
	cfg := Defaults()
	cfg.UpstreamCmd = testExecutable(t)
	p, err := New(cfg, pipe, nil, WithUpstreamStderr(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.closeAll)
	hs := httptest.NewServer(p.Handler())
	t.Cleanup(hs.Close)
	return connect(t, hs.URL)
}

func TestCallNotForwardedWithoutDecision(t *testing.T) {
	cases := []struct {
		name     string
		pipe     *scriptedPipeline
		wantCode int
		wantText string
	}{
		{"decision timeout", &scriptedPipeline{proposeErr: ingest.ErrDecisionTimeout}, CodeDenied, "DECISION_TIMEOUT"},
		{"rejected proposal", &scriptedPipeline{proposeErr: &ingest.RejectedError{Reason: "SEQ_CONFLICT"}}, CodeInternalError, "not forwarded"},
		{"audit record fails", &scriptedPipeline{outcome: envelope.Allow, failRecord: envelope.ToolResult}, CodeInternalError, "withheld"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newScriptedProxy(t, tc.pipe)
			m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
			if m.Error == nil || m.Error.Code != tc.wantCode || !strings.Contains(m.Error.Message, tc.wantText) {
				t.Fatalf("got %+v %s, want error %d with %q", m.Error, m.Result, tc.wantCode, tc.wantText)
			}
			tc.pipe.mu.Lock()
			defer tc.pipe.mu.Unlock()
			executed := false
			for _, typ := range tc.pipe.recorded {
				executed = executed || typ == envelope.ToolCallExecuted
			}
			if executed != (tc.pipe.proposeErr == nil) {
				t.Fatalf("recorded %v: TOOL_CALL_EXECUTED only when the call was allowed", tc.pipe.recorded)
			}
		})
	}
}

func TestToolsListWithoutManifestListsNothing(t *testing.T) {
	c := newScriptedProxy(t, &scriptedPipeline{outcome: envelope.Allow})
	m := c.request(t, "tools/list", map[string]any{})
	var r struct {
		Tools []json.RawMessage `json:"tools"`
	}
	if err := json.Unmarshal(m.Result, &r); err != nil || r.Tools == nil || len(r.Tools) != 0 {
		t.Fatalf("tools/list without a manifest: %s, want an empty tools array", m.Result)
	}
}

func TestStreamableHTTPTransport(t *testing.T) {
	c := newScriptedProxy(t, &scriptedPipeline{outcome: envelope.Allow})
	do := func(method, session, contentType, body string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest(method, c.url, strings.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if session != "" {
			req.Header.Set(headerSession, session)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ping := `{"jsonrpc":"2.0","id":7,"method":"ping"}`
	cases := []struct {
		name, method, session, contentType, body string
		hdr                                      map[string]string
		wantStatus                               int
		wantBody                                 string
	}{
		{"ping in the session", "POST", c.session, "application/json", ping, nil, 200, `"result":{}`},
		{"no session header", "POST", "", "application/json", ping, nil, 400, "Mcp-Session-Id"},
		{"unknown session", "POST", "nope", "application/json", ping, nil, 404, "unknown"},
		{"batch", "POST", c.session, "application/json", "[" + ping + "]", nil, 400, "-32600"},
		{"not JSON", "POST", c.session, "application/json", "{", nil, 400, "-32700"},
		{"wrong media type", "POST", c.session, "text/plain", ping, nil, 415, "Content-Type"},
		{"not acceptable", "POST", c.session, "application/json", ping, map[string]string{"Accept": "text/html"}, 406, "Accept"},
		{"foreign origin", "POST", c.session, "application/json", ping, map[string]string{"Origin": "http://evil.example"}, 403, "origin"},
		{"GET stream not offered", "GET", c.session, "", "", nil, 405, "POST"},
		{"response from the client", "POST", c.session, "application/json", `{"jsonrpc":"2.0","id":9,"result":{}}`, nil, 202, ""},
		{"unknown method refused", "POST", c.session, "application/json", `{"jsonrpc":"2.0","id":8,"method":"nope/nope"}`, nil, 200, "not forwarded"},
		{"delete", "DELETE", c.session, "", "", nil, 204, ""},
		{"deleted session", "POST", c.session, "application/json", ping, nil, 404, "unknown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := do(tc.method, tc.session, tc.contentType, tc.body, tc.hdr)
			if status != tc.wantStatus || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("%d %s, want %d with %q", status, body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"command", func(c *Config) { c.UpstreamCmd = "server --stdio" }, ""},
		{"url", func(c *Config) { c.UpstreamURL = "http://127.0.0.1:9000/mcp" }, ""},
		{"no upstream", func(*Config) {}, "exactly one"},
		{"both upstreams", func(c *Config) { c.UpstreamCmd, c.UpstreamURL = "s", "http://x/mcp" }, "exactly one"},
		{"bad url", func(c *Config) { c.UpstreamURL = "ftp://x" }, "http://"},
		{"bad tenant", func(c *Config) { c.UpstreamCmd, c.Tenant = "s", "a/b" }, "mcp-tenant"},
		{"bad path", func(c *Config) { c.UpstreamCmd, c.Path = "s", "mcp" }, "mcp-path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			tc.edit(&c)
			err := c.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCallIDIsStablePerCall(t *testing.T) {
	a, _ := callIDOf("echo", json.RawMessage(`{"b":1,"a":2}`), nil)
	b, _ := callIDOf("echo", json.RawMessage(`{"a":2,"b":1.0}`), nil)
	c, _ := callIDOf("echo", json.RawMessage(`{"a":3,"b":1}`), nil)
	d, _ := callIDOf("echo", json.RawMessage(`{}`), map[string]json.RawMessage{MetaCallID: json.RawMessage(`"mine"`)})
	if a != b || a == c || !strings.HasPrefix(a, "mcp-") || len(a) != 4+24 || d != "mine" {
		t.Fatalf("call ids %q %q %q %q: want equal for equal canonical arguments, distinct otherwise, _meta honoured", a, b, c, d)
	}
	if _, err := callIDOf("echo", json.RawMessage(`{}`), map[string]json.RawMessage{MetaCallID: json.RawMessage(`7`)}); err == nil {
		t.Fatal("a non-string _meta call id was accepted")
	}
}

// TestExecutedRecordedBeforeTheServerRuns: TOOL_CALL_EXECUTED is written
// before the call is sent; when it cannot be written the call is not sent,
// so the server never runs a call the log does not show as executed.
func TestExecutedRecordedBeforeTheServerRuns(t *testing.T) {
	pipe := &scriptedPipeline{outcome: envelope.Allow, failRecord: envelope.ToolCallExecuted}
	up := &recUpstream{}
	_, url := inProcess(t, pipe, up, nil)
	c := connect(t, url)
	m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	if m.Error == nil || m.Error.Code != CodeInternalError {
		t.Fatalf("tools/call: %+v %s, want an internal error", m.Error, m.Result)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if len(up.executed) != 0 {
		t.Fatalf("the server ran %q though TOOL_CALL_EXECUTED was not recorded", up.executed)
	}
}

// deadlineRecorder records the write deadlines a handler sets.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadlines []time.Time
}

func (d *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	d.deadlines = append(d.deadlines, t)
	return nil
}

// An answer to the agent is written under a deadline that is cleared
// afterwards, as the HTTP API's answers are (ingest.BoundWrite).
func TestAnswersHaveAWriteDeadline(t *testing.T) {
	rec := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
	writeMessage(rec, http.StatusOK, &message{JSONRPC: "2.0", ID: json.RawMessage("1"), Result: json.RawMessage(`{}`)})
	if len(rec.deadlines) != 2 || rec.deadlines[0].IsZero() || time.Until(rec.deadlines[0]) > time.Minute || !rec.deadlines[1].IsZero() {
		t.Fatalf("deadlines %v: want one within a minute, then cleared", rec.deadlines)
	}
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"result":{}`) {
		t.Fatalf("answer %d %q", rec.Code, rec.Body)
	}
}
