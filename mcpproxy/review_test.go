package mcpproxy

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
