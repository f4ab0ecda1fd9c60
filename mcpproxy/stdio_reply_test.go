package mcpproxy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServerRequestDoesNotBlockResponses: a server request is answered off
// the read loop. The server here never reads its stdin, whose pipe is full;
// it sends a request, then the response to a call in flight. Answering the
// request in the read loop would hold that response until the write gave
// up (an hour here), so the call would time out.
func TestServerRequestDoesNotBlockResponses(t *testing.T) {
	dir := t.TempDir()
	goFile := filepath.Join(dir, "go")
	script := `while [ ! -f "$1" ]; do sleep 0.02; done
printf '%s\n' '{"jsonrpc":"2.0","id":"s1","method":"roots/list"}'
printf '%s\n' '{"jsonrpc":"2.0","id":1,"result":{"ok":true}}'
exec sleep 60`
	u, err := dialStdio([]string{"sh", "-c", script, "sh", goFile}, nil, 1<<20, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	defer u.cmd.Process.Kill() // it never reads stdin, so never sees it close

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		m, err := u.roundTrip(ctx, &message{JSONRPC: "2.0", ID: json.RawMessage(`1`), Method: "ping"})
		if err == nil && string(m.Result) != `{"ok":true}` {
			err = &rpcError{Message: "result " + string(m.Result)}
		}
		got <- err
	}()
	// Fill the server's stdin to the last bytes: lines up to PIPE_BUF are
	// written whole or not at all, so the first of each size that times
	// out leaves the pipe framed, with less room than that line.
	for _, size := range []int{3900, 400, 40, 0} {
		pad := &message{JSONRPC: "2.0", Method: "notifications/pad", Params: json.RawMessage(`"` + strings.Repeat("x", size) + `"`)}
		for i := 0; ; i++ {
			wctx, wcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			err := u.send(wctx, pad)
			wcancel()
			if err != nil {
				break
			}
			if i > 100000 {
				t.Fatal("the server's stdin never filled")
			}
		}
	}
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("call in flight: %v", err)
	}
}

// TestServerRequestAnswered: a stdio server's own request gets −32601
// with its id. The server here passes the answer back as the result of
// the call in flight.
func TestServerRequestAnswered(t *testing.T) {
	script := `read -r call
printf '%s\n' '{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage"}'
read -r answer
printf '{"jsonrpc":"2.0","id":1,"result":%s}\n' "$answer"
cat >/dev/null`
	u, err := dialStdio([]string{"sh", "-c", script}, nil, 1<<20, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := u.roundTrip(ctx, &message{JSONRPC: "2.0", ID: json.RawMessage(`1`), Method: "ping"})
	if err != nil {
		t.Fatal(err)
	}
	var answer message
	if err := json.Unmarshal(m.Result, &answer); err != nil {
		t.Fatalf("answer %s: %v", m.Result, err)
	}
	if string(answer.ID) != `"s1"` || answer.Error == nil || answer.Error.Code != CodeMethodNotFound {
		t.Fatalf("answer to the server's request: %s", m.Result)
	}
}
