package ingest

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A client that asks and never reads the answer holds the handler only
// until the answer's write deadline; and the deadline does not outlive
// the answer, so a kept-alive connection's next request is served.
func TestAnswerWriteIsBounded(t *testing.T) {
	t0, r0 := answerWriteTime, answerWriteRate
	answerWriteTime, answerWriteRate = 300*time.Millisecond, 1<<30
	defer func() { answerWriteTime, answerWriteRate = t0, r0 }()

	big := strings.Repeat("a", 64<<20) // more than loopback's socket buffers
	returned := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			defer func() { returned <- struct{}{} }()
			writeJSON(w, http.StatusOK, map[string]string{"x": big})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"ok": "yes"})
	}))
	defer srv.Close()

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-returned:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler is still writing to a client that does not read")
	}

	// Two requests on one connection, the second after the first
	// answer's deadline has passed.
	c2, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	br := bufio.NewReader(c2)
	for i := range 2 {
		if _, err := io.WriteString(c2, "GET /small HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"ok":"yes"`) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
		time.Sleep(2 * answerWriteTime)
	}
}
