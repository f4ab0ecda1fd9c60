package mcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// upstream is one MCP session with the upstream server. Each downstream
// session gets its own (a stdio server process, or an HTTP session), so
// upstream state never mixes sessions. Implementations are safe for
// concurrent use.
type upstream interface {
	// roundTrip sends request req and returns the upstream's response.
	// The proxy assigns req.ID (unique per upstream); the response's ID is
	// the same.
	roundTrip(ctx context.Context, req *message) (*message, error)
	// send sends a notification (no response is expected).
	send(ctx context.Context, msg *message) error
	// close ends the session and releases its resources.
	close() error
}

// errUpstreamClosed reports a request to an upstream that has gone away.
var errUpstreamClosed = errors.New("mcpproxy: upstream closed")

// stdioUpstream is an MCP server subprocess speaking newline-delimited
// JSON-RPC on its stdin and stdout.
type stdioUpstream struct {
	cmd   *exec.Cmd
	stdin *os.File      // a pipe: writes take deadlines
	done  chan struct{} // closed when stdout ends
	max   int64         // largest line read from stdout
	// writeTimeout bounds a write whose context has no deadline.
	writeTimeout time.Duration

	wmu    sync.Mutex // serializes writes to stdin
	broken error      // a write stopped mid-message: the framing is lost

	// replies holds the answers to the server's own requests, written by
	// their own goroutine: a write blocked on a full stdin must not stop
	// the read loop from delivering responses (the server may be waiting
	// for its stdout to drain before it reads stdin again).
	replies chan *message

	mu      sync.Mutex
	pending map[string]chan *message
	err     error // why the upstream closed
}

// maxServerRequests bounds the server requests waiting for their answer to
// be written; a server that sends more at once gets no answer to the rest.
const maxServerRequests = 64

// dialStdio starts argv as the upstream server. Its stderr goes to
// stderr (nil: discarded). The process outlives no one: close ends it.
func dialStdio(argv []string, stderr io.Writer, max int64, writeTimeout time.Duration) (*stdioUpstream, error) {
	if len(argv) == 0 {
		return nil, errors.New("mcpproxy: empty upstream command")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = stderr
	// A stderr that is not a file is copied by Wait, which a child of the
	// server holding it open would hold forever.
	cmd.WaitDelay = stdioExitTimeout
	// os.Pipe rather than cmd.StdinPipe: a server that stops reading
	// must not hold a write (and every request queued behind it)
	// forever, and only an *os.File pipe takes write deadlines.
	stdinR, stdin, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("mcpproxy: upstream %s: %w", argv[0], err)
	}
	cmd.Stdin = stdinR
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		stdinR.Close()
		stdin.Close()
		return nil, fmt.Errorf("mcpproxy: upstream %s: %w", argv[0], err)
	}
	err = cmd.Start()
	stdinR.Close() // the child holds its own copy
	if err != nil {
		stdin.Close()
		return nil, fmt.Errorf("mcpproxy: start upstream %s: %w", argv[0], err)
	}
	u := &stdioUpstream{cmd: cmd, stdin: stdin, done: make(chan struct{}), max: max, writeTimeout: writeTimeout,
		pending: make(map[string]chan *message), replies: make(chan *message, maxServerRequests)}
	go u.read(stdout)
	go u.reply()
	return u, nil
}

// reply writes the answers to the server's requests until stdout ends.
func (u *stdioUpstream) reply() {
	for {
		select {
		case m := <-u.replies:
			_ = u.write(context.Background(), m)
		case <-u.done:
			return
		}
	}
}

// read dispatches the server's messages until its stdout ends. Requests
// from the server (sampling, roots, elicitation) are answered with
// CodeMethodNotFound, through reply: the proxy does not relay
// server-initiated requests. Server notifications are dropped.
func (u *stdioUpstream) read(stdout io.Reader) {
	defer close(u.done)
	r := bufio.NewReaderSize(stdout, 64<<10)
	var readErr error
	for {
		line, long, err := readLine(r, u.max)
		if long {
			// Which request it answers is unknown: the session cannot go
			// on. Everything pending fails; close kills the process.
			readErr = fmt.Errorf("a message larger than %d bytes", u.max)
			break
		}
		if len(bytes.TrimSpace(line)) > 0 {
			if m, perr := parseMessage(line); perr == nil {
				switch {
				case m.isResponse():
					u.mu.Lock()
					ch := u.pending[string(m.ID)]
					delete(u.pending, string(m.ID))
					u.mu.Unlock()
					if ch != nil {
						ch <- m
					}
				case m.isRequest():
					select {
					case u.replies <- errorResponse(m.ID, CodeMethodNotFound, "the Aegis MCP proxy does not relay server requests", nil):
					default:
					}
				}
			}
		}
		if err != nil {
			readErr = err
			break
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.err = fmt.Errorf("%w: stdout: %w", errUpstreamClosed, readErr)
	for id, ch := range u.pending {
		close(ch)
		delete(u.pending, id)
	}
}

// write sends one message line, within ctx (or writeTimeout when ctx has
// no deadline). A write that stops midway leaves a partial line the server
// cannot frame: the upstream is then broken and its process killed, which
// fails every request waiting on it.
func (u *stdioUpstream) write(ctx context.Context, m *message) error {
	b := append(encode(m), '\n')
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if u.broken != nil {
		return u.broken
	}
	if err := ctx.Err(); err != nil {
		// Cancelled while it waited for its turn: not sent. (A deadline
		// already past fails the write below, but a cancellation only
		// sets one from another goroutine, which the write could beat.)
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(u.writeTimeout)
	}
	_ = u.stdin.SetWriteDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = u.stdin.SetWriteDeadline(time.Now()) })
	n, err := u.stdin.Write(b)
	stop()
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%w: stdin: %w", errUpstreamClosed, err)
	if n > 0 {
		u.broken = err
		_ = u.cmd.Process.Kill()
	}
	return err
}

func (u *stdioUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	ch := make(chan *message, 1)
	u.mu.Lock()
	if u.err != nil {
		err := u.err
		u.mu.Unlock()
		return nil, err
	}
	u.pending[string(req.ID)] = ch
	u.mu.Unlock()
	forget := func() {
		u.mu.Lock()
		delete(u.pending, string(req.ID))
		u.mu.Unlock()
	}
	if err := u.write(ctx, req); err != nil {
		forget()
		return nil, err
	}
	select {
	case m, ok := <-ch:
		if !ok {
			u.mu.Lock()
			defer u.mu.Unlock()
			return nil, u.err
		}
		return m, nil
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

func (u *stdioUpstream) send(ctx context.Context, msg *message) error { return u.write(ctx, msg) }

// close closes the server's stdin (the MCP stdio shutdown), waits up to
// two seconds for it to exit, and kills it otherwise. A server that closed
// its stdout but lives on is killed too: the wait for its exit is bounded
// as well, since close holds idle expiry, a DELETE and the proxy's
// shutdown.
func (u *stdioUpstream) close() error {
	_ = u.stdin.Close()
	select {
	case <-u.done:
	case <-time.After(stdioExitTimeout):
		_ = u.cmd.Process.Kill()
	}
	exited := make(chan struct{})
	go func() {
		_ = u.cmd.Wait()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(stdioExitTimeout):
		_ = u.cmd.Process.Kill()
		<-exited
	}
	return nil
}

// stdioExitTimeout is how long a stdio server has to exit once its stdin
// is closed.
const stdioExitTimeout = 2 * time.Second

// httpUpstream is an MCP server behind the Streamable HTTP transport: every
// message is a POST to one endpoint; the session is the Mcp-Session-Id the
// server assigned in its answer to initialize.
type httpUpstream struct {
	url    string
	name   string // url without credentials or query, for errors and logs
	client *http.Client
	max    int64 // largest answer read

	session  atomic.Pointer[string] // Mcp-Session-Id, once assigned
	protocol atomic.Pointer[string] // negotiated MCP-Protocol-Version
}

func newHTTPUpstream(url string, client *http.Client, max int64) *httpUpstream {
	return &httpUpstream{url: url, name: redactURL(url), client: client, max: max}
}

func (u *httpUpstream) post(ctx context.Context, m *message) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.url, bytes.NewReader(encode(m)))
	if err != nil {
		return nil, fmt.Errorf("mcpproxy: upstream request to %s: %w", u.name, unwrapURLError(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if s := u.session.Load(); s != nil {
		req.Header.Set(headerSession, *s)
	}
	if v := u.protocol.Load(); v != nil {
		req.Header.Set(headerProtocol, *v)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errUpstreamClosed, u.name, unwrapURLError(err))
	}
	return resp, nil
}

// maxStatusBody bounds what is kept of the body of an answer other than
// 200 OK.
const maxStatusBody = 512

// statusError is an HTTP upstream's answer other than 200 OK: the status
// code (not the server's reason phrase, whose length the server chooses)
// and the start of the body. The body is the server's words: it reaches
// the agent only within a decision's max_output_bytes.
type statusError struct {
	name string
	code int
	body []byte
}

func (e *statusError) Error() string {
	msg := fmt.Sprintf("%v: %s answered %d %s", errUpstreamClosed, e.name, e.code, http.StatusText(e.code))
	if len(e.body) > 0 {
		msg += ": " + string(e.body)
	}
	return msg
}

func (e *statusError) Unwrap() error { return errUpstreamClosed }

func (u *httpUpstream) roundTrip(ctx context.Context, req *message) (*message, error) {
	resp, err := u.post(ctx, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxStatusBody))
		return nil, &statusError{name: u.name, code: resp.StatusCode, body: bytes.TrimSpace(b)}
	}
	if req.Method == "initialize" {
		if s := resp.Header.Get(headerSession); s != "" {
			u.session.Store(&s)
		}
	}
	var m *message
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch ct {
	case "text/event-stream":
		m, err = readSSEResponse(resp.Body, req.ID, u.max)
	default:
		b, rerr := io.ReadAll(io.LimitReader(resp.Body, u.max+1))
		if rerr != nil {
			return nil, fmt.Errorf("%w: read: %w", errUpstreamClosed, rerr)
		}
		if int64(len(b)) > u.max {
			return nil, fmt.Errorf("mcpproxy: upstream response larger than %d bytes", u.max)
		}
		var perr *rpcError
		if m, perr = parseMessage(b); perr != nil {
			err = fmt.Errorf("mcpproxy: upstream response: %w", perr)
		} else if !m.isResponse() || string(m.ID) != string(req.ID) {
			err = errors.New("mcpproxy: upstream answered with something other than the response to the request")
		}
	}
	if err != nil {
		return nil, err
	}
	if req.Method == "initialize" && m.Error == nil {
		var r struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		if json.Unmarshal(m.Result, &r) == nil && r.ProtocolVersion != "" {
			u.protocol.Store(&r.ProtocolVersion)
		}
	}
	return m, nil
}

// readSSEResponse reads server-sent events until the response to id.
// Other messages on the stream (server notifications and requests) are
// dropped: the proxy does not relay server-initiated messages.
func readSSEResponse(body io.Reader, id json.RawMessage, max int64) (*message, error) {
	r := bufio.NewReaderSize(body, 64<<10)
	var data bytes.Buffer
	for {
		raw, long, err := readLine(r, max)
		if long || int64(data.Len()+len(raw)) > max {
			return nil, fmt.Errorf("mcpproxy: upstream event larger than %d bytes", max)
		}
		line := strings.TrimRight(string(raw), "\r\n")
		switch {
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			data.WriteByte('\n')
		case line == "" && data.Len() > 0:
			if m, perr := parseMessage(data.Bytes()); perr == nil && m.isResponse() && string(m.ID) == string(id) {
				return m, nil
			}
			data.Reset()
		}
		if err != nil {
			return nil, fmt.Errorf("%w: the event stream ended without the response", errUpstreamClosed)
		}
	}
}

func (u *httpUpstream) send(ctx context.Context, msg *message) error {
	resp, err := u.post(ctx, msg)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return &statusError{name: u.name, code: resp.StatusCode}
	}
	return nil
}

// close ends the HTTP session with DELETE (a server may refuse with 405;
// either way the proxy forgets it).
func (u *httpUpstream) close() error {
	s := u.session.Load()
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.url, nil)
	if err != nil {
		return fmt.Errorf("mcpproxy: upstream request to %s: %w", u.name, unwrapURLError(err))
	}
	req.Header.Set(headerSession, *s)
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("mcpproxy: close the upstream session at %s: %w", u.name, unwrapURLError(err))
	}
	resp.Body.Close()
	return nil
}

// idSource numbers the requests the proxy sends upstream.
type idSource struct{ n atomic.Int64 }

func (s *idSource) next() json.RawMessage {
	return json.RawMessage(strconv.FormatInt(s.n.Add(1), 10))
}

// redactURL is raw without user info, query and fragment: what errors,
// logs and audit records may show of the upstream's address (its
// credentials, in the user info or a ?token=, are the operator's, not the
// agent's).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable upstream URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// unwrapURLError drops the *url.Error around a transport error: it names
// the request's whole URL, query included.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
