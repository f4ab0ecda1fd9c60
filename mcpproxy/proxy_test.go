package mcpproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/schemas/envelope"
)

// TestToolCallsThroughThePipeline drives one HTTP session over a stdio
// upstream through every outcome, then reads the sealed log.
func TestToolCallsThroughThePipeline(t *testing.T) {
	st := pipelineStack(t)
	p := newProxy(t, nil)
	hs := httptest.NewServer(p.Handler())
	defer hs.Close()
	c := connect(t, hs.URL)

	list := c.request(t, "tools/list", map[string]any{})
	var tools struct {
		Tools []struct {
			Name string `json:"name"`
		} `json:"tools"`
	}
	if err := json.Unmarshal(list.Result, &tools); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
	}
	if want := []string{"echo", "fail", "send_email"}; !slices.Equal(names, want) {
		t.Fatalf("tools/list: %v, want only the declared %v", names, want)
	}

	type want struct {
		code   int    // 0: a result
		reason string // data.reason of an error
		text   string // in the result or the error message
	}
	cases := []struct {
		name string
		tool string
		args map[string]any
		want want
	}{
		{"approval-required tool returns the token", "send_email", map[string]any{"to": "a@example.com"}, want{code: CodeApprovalRequired, reason: envelope.ReasonApprovalRequired}},
		{"allow forwards the call", "echo", map[string]any{"n": 1}, want{text: `echo {\"n\":1}`}},
		{"undeclared tool is denied", "rm_rf", map[string]any{"path": "/"}, want{code: CodeDenied, reason: envelope.ReasonPermissionUndeclared, text: "PERMISSION_UNDECLARED"}},
		{"upstream error is passed on", "fail", map[string]any{}, want{code: -32050, text: "fail always fails"}},
		{"tool error result is passed on", "echo", map[string]any{"tool-error": true}, want{text: "tool-error"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := c.request(t, "tools/call", map[string]any{"name": tc.tool, "arguments": tc.args})
			if tc.want.code == 0 {
				if m.Error != nil || !strings.Contains(string(m.Result), tc.want.text) {
					t.Fatalf("got error %v, result %s; want a result with %q", m.Error, m.Result, tc.want.text)
				}
				return
			}
			if m.Error == nil || m.Error.Code != tc.want.code || !strings.Contains(m.Error.Message, tc.want.text) {
				t.Fatalf("got error %+v, result %s; want code %d with %q", m.Error, m.Result, tc.want.code, tc.want.text)
			}
			d := errorData(t, m)
			if tc.want.reason != "" && d["reason"] != tc.want.reason {
				t.Fatalf("data.reason %v, want %s", d["reason"], tc.want.reason)
			}
			if tc.want.code == CodeApprovalRequired {
				a, _ := d["approval"].(map[string]any)
				if tok, _ := a["token"].(string); !strings.HasPrefix(tok, "apv1.") {
					t.Fatalf("approval data %v: want a token", d)
				}
			}
		})
	}

	// The sealed session: initialize and tools/list as checkpoints, then
	// per call its proposal and what followed.
	wantTypes := []envelope.Type{
		envelope.CheckpointCreated, envelope.CheckpointCreated,
		envelope.ToolCallProposed,                                                 // send_email
		envelope.ToolCallProposed, envelope.ToolCallExecuted, envelope.ToolResult, // echo
		envelope.ToolCallProposed,                                                 // rm_rf
		envelope.ToolCallProposed, envelope.ToolCallExecuted, envelope.ToolResult, // fail
		envelope.ToolCallProposed, envelope.ToolCallExecuted, envelope.ToolResult, // echo tool-error
	}
	evs := st.sealed(t, "acme", "mcp-"+c.session, len(wantTypes))
	var got []envelope.Type
	for i, ev := range evs {
		got = append(got, ev.Type)
		if ev.Seq != uint64(i+1) || ev.Hash == "" {
			t.Fatalf("sealed event %d: seq %d hash %q", i, ev.Seq, ev.Hash)
		}
	}
	if !slices.Equal(got, wantTypes) {
		t.Fatalf("sealed types\n got %v\nwant %v", got, wantTypes)
	}
	var last struct {
		IsError bool   `json:"is_error"`
		Tool    string `json:"tool_name"`
	}
	if err := json.Unmarshal(evs[len(evs)-1].Payload, &last); err != nil || !last.IsError || last.Tool != "echo" {
		t.Fatalf("last TOOL_RESULT payload %s: want is_error true for echo", evs[len(evs)-1].Payload)
	}
	if d := evs[3].Decision; d == nil || d.Outcome != envelope.Allow {
		t.Fatalf("echo proposal decision %+v, want allow", d)
	}
}

// TestApprovedCallGoesThrough settles the approval over the gateway's API
// and repeats the call: the derived call_id makes it the approved call.
func TestApprovedCallGoesThrough(t *testing.T) {
	st := pipelineStack(t)
	p := newProxy(t, nil)
	hs := httptest.NewServer(p.Handler())
	defer hs.Close()
	c := connect(t, hs.URL)
	params := map[string]any{"name": "send_email", "arguments": map[string]any{"to": "b@example.com", "body": "hi"}}
	held := c.request(t, "tools/call", params)
	if held.Error == nil || held.Error.Code != CodeApprovalRequired {
		t.Fatalf("first call: %+v, want approval required", held.Error)
	}
	tok := errorData(t, held)["approval"].(map[string]any)["token"].(string)
	resp, err := http.Post(st.api.URL+"/v1/approvals/"+tok, "application/json", strings.NewReader(`{"decision":"allow","reason":"test"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("approve: %d %s", resp.StatusCode, body)
	}
	again := c.request(t, "tools/call", params)
	if again.Error != nil || !strings.Contains(string(again.Result), "send_email") {
		t.Fatalf("approved call: error %+v result %s; want it forwarded", again.Error, again.Result)
	}
}

// TestUpstreamErrorTaints: a server's JSON-RPC error reaches the agent
// with the server's message and data, content from outside like any
// result, so it taints the session: a high-risk tool is denied after it.
// It was recorded as ERROR_RAISED, which taints nothing, and the next
// send_email only asked for an approval (an operator's allow then ran it).
func TestUpstreamErrorTaints(t *testing.T) {
	st := pipelineStack(t)
	p := newProxy(t, nil)
	hs := httptest.NewServer(p.Handler())
	defer hs.Close()
	c := connect(t, hs.URL)
	failed := c.request(t, "tools/call", map[string]any{"name": "fail", "arguments": map[string]any{}})
	if failed.Error == nil || !strings.Contains(failed.Error.Message, "fail always fails") {
		t.Fatalf("fail: %+v, want the server's error passed on", failed.Error)
	}
	m := c.request(t, "tools/call", map[string]any{"name": "send_email", "arguments": map[string]any{"to": "a@example.com"}})
	if m.Error == nil || m.Error.Code != CodeDenied || errorData(t, m)["reason"] != envelope.ReasonTaintedToHighRisk {
		t.Fatalf("send_email after an upstream error: %+v, want denied %s", m.Error, envelope.ReasonTaintedToHighRisk)
	}
	evs := st.sealed(t, "acme", "mcp-"+c.session, 5) // initialize, fail (proposal, executed, result), send_email
	var res struct {
		IsError bool   `json:"is_error"`
		Tool    string `json:"tool_name"`
		Code    string `json:"code"`
		RPCCode int    `json:"rpc_code"`
	}
	if err := json.Unmarshal(evs[3].Payload, &res); err != nil || evs[3].Type != envelope.ToolResult || !res.IsError || res.Tool != "fail" ||
		res.Code != "UPSTREAM_ERROR" || res.RPCCode != -32050 {
		t.Fatalf("record of the upstream error: %s %s", evs[3].Type, evs[3].Payload)
	}
}

// TestConcurrentSessions fires 40 concurrent calls over 8 sessions.
func TestConcurrentSessions(t *testing.T) {
	p := newProxy(t, nil)
	hs := httptest.NewServer(p.Handler())
	defer hs.Close()
	const sessions, perSession = 8, 5
	clients := make([]*client, sessions)
	for i := range clients {
		clients[i] = connect(t, hs.URL)
	}
	var wg sync.WaitGroup
	errs := make(chan error, sessions*perSession)
	start := time.Now()
	for i, c := range clients {
		for j := range perSession {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": j + 1, "method": "tools/call",
					"params": map[string]any{"name": "echo", "arguments": map[string]any{"session": i, "call": j}}})
				req, _ := http.NewRequest(http.MethodPost, c.url, bytes.NewReader(b))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(headerSession, c.session)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				var m message
				if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || m.Error != nil ||
					!strings.Contains(string(m.Result), fmt.Sprintf(`{\"call\":%d,\"session\":%d}`, j, i)) {
					errs <- fmt.Errorf("session %d call %d: %v %+v %s", i, j, err, m.Error, m.Result)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d calls over %d sessions in %s", sessions*perSession, sessions, time.Since(start))
}

// TestStdioDownstreamHTTPUpstream serves one session on pipes in front of
// a Streamable HTTP upstream (tools/call answered on an event stream).
func TestStdioDownstreamHTTPUpstream(t *testing.T) {
	st := pipelineStack(t)
	up := httptest.NewServer(&fakeHTTPServer{sessions: map[string]bool{}})
	defer up.Close()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p := newProxy(t, func(c *Config) {
		c.UpstreamCmd, c.UpstreamURL, c.Stdio, c.Session = "", up.URL, true, "stdio-http-1"
	}, WithStdio(inR, outW))
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()); outW.Close() }()
	dec := json.NewDecoder(outR)
	send := func(line string) *message {
		t.Helper()
		if _, err := io.WriteString(inW, line+"\n"); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, `"notifications/`) {
			return nil
		}
		var m message
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		return &m
	}
	if m := send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`); m.Error != nil {
		t.Fatalf("initialize: %+v", m.Error)
	}
	send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	if m := send(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"x":"sse"}}}`); m.Error != nil || !strings.Contains(string(m.Result), "sse") || string(m.ID) != "2" {
		t.Fatalf("tools/call: %+v %s", m.Error, m.Result)
	}
	if m := send(`{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file:///notes"}}`); m.Error != nil || string(m.ID) != `"r"` {
		t.Fatalf("resources/read: %+v", m.Error)
	}
	if m := send(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"secret","arguments":{}}}`); m.Error == nil || m.Error.Code != CodeDenied {
		t.Fatalf("undeclared tool: %+v, want denied", m)
	}
	if m := send(`not json`); m.Error == nil || m.Error.Code != CodeParseError {
		t.Fatalf("garbage: %+v, want a parse error", m)
	}
	inW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	evs := st.sealed(t, "acme", "stdio-http-1", 6)
	var got []envelope.Type
	for _, ev := range evs {
		got = append(got, ev.Type)
	}
	want := []envelope.Type{envelope.CheckpointCreated, envelope.ToolCallProposed, envelope.ToolCallExecuted, envelope.ToolResult,
		envelope.MemoryRead, envelope.ToolCallProposed}
	if !slices.Equal(got, want) {
		t.Fatalf("sealed types\n got %v\nwant %v", got, want)
	}
}
