package mcpproxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
)

// fakeStdioEnv makes the test binary a fake MCP server on stdin/stdout
// (the helper-process pattern): the proxy spawns os.Args[0] with it set.
const fakeStdioEnv = "MCPPROXY_FAKE_UPSTREAM"

func TestMain(m *testing.M) {
	if os.Getenv(fakeStdioEnv) == "1" {
		serveFakeStdio(os.Stdin, os.Stdout)
		os.Exit(0)
	}
	code := m.Run()
	if sharedStack != nil && sharedStack.stop != nil {
		sharedStack.stop()
	}
	os.Exit(code)
}

// fakeTools is what the fake server lists: the manifest of the tests
// declares echo, fail and send_email; rm_rf and secret are undeclared.
var fakeTools = []string{"echo", "fail", "send_email", "rm_rf", "secret"}

// fakeAnswer is the fake MCP server's answer to one request.
func fakeAnswer(m *message) *message {
	ok := func(v any) *message {
		b, _ := json.Marshal(v)
		return &message{JSONRPC: "2.0", ID: m.ID, Result: b}
	}
	switch m.Method {
	case "initialize":
		return ok(map[string]any{"protocolVersion": "2025-06-18", "capabilities": map[string]any{"tools": map[string]any{}},
			"serverInfo": map[string]any{"name": "fake", "version": "1.0.0"}})
	case "ping":
		return ok(map[string]any{})
	case "tools/list":
		var tools []map[string]any
		for _, t := range fakeTools {
			tools = append(tools, map[string]any{"name": t, "inputSchema": map[string]any{"type": "object"}})
		}
		return ok(map[string]any{"tools": tools})
	case "resources/read":
		return ok(map[string]any{"contents": []map[string]any{{"uri": "file:///notes", "text": "notes"}}})
	case "tools/call":
		var p struct {
			Name      string          `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
		}
		_ = json.Unmarshal(m.Params, &p)
		switch p.Name {
		case "fail":
			return &message{JSONRPC: "2.0", ID: m.ID, Error: &rpcError{Code: -32050, Message: "fail always fails"}}
		default:
			return ok(map[string]any{"content": []map[string]any{{"type": "text", "text": p.Name + " " + string(p.Arguments)}},
				"isError": strings.Contains(string(p.Arguments), "tool-error")})
		}
	}
	return &message{JSONRPC: "2.0", ID: m.ID, Error: &rpcError{Code: CodeMethodNotFound, Message: "no method " + m.Method}}
}

// serveFakeStdio answers requests concurrently, one JSON line each.
func serveFakeStdio(in io.Reader, out io.Writer) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	br := bufio.NewReader(in)
	for {
		line, err := br.ReadBytes('\n')
		if m, perr := parseMessage(line); perr == nil && m.isRequest() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := append(encode(fakeAnswer(m)), '\n')
				mu.Lock()
				defer mu.Unlock()
				_, _ = out.Write(b)
			}()
		}
		if err != nil {
			wg.Wait()
			return
		}
	}
}

// fakeHTTPServer is a Streamable HTTP MCP server: JSON answers, except
// tools/call, answered on an event stream preceded by a notification;
// sessions by Mcp-Session-Id.
type fakeHTTPServer struct {
	mu       sync.Mutex
	sessions map[string]bool
	n        int
}

func (f *fakeHTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodDelete {
		f.mu.Lock()
		delete(f.sessions, r.Header.Get(headerSession))
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") || !strings.Contains(r.Header.Get("Accept"), "application/json") {
		http.Error(w, "bad Accept", http.StatusNotAcceptable)
		return
	}
	b, _ := io.ReadAll(r.Body)
	m, perr := parseMessage(b)
	if perr != nil {
		http.Error(w, perr.Message, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	if m.Method == "initialize" {
		f.n++
		id := fmt.Sprintf("fake-%d", f.n)
		f.sessions[id] = true
		w.Header().Set(headerSession, id)
	} else if !f.sessions[r.Header.Get(headerSession)] || r.Header.Get(headerProtocol) != "2025-06-18" {
		f.mu.Unlock()
		http.Error(w, "unknown session", http.StatusNotFound)
		return
	}
	f.mu.Unlock()
	if !m.isRequest() {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	resp := fakeAnswer(m)
	if m.Method == "tools/call" {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: message\ndata: %s\n\n", `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}`)
		fmt.Fprintf(w, "event: message\ndata: %s\n\n", encode(resp))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(encode(resp))
}
