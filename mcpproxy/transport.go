package mcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"

	"aegis.dev/aegis/ingest"
)

// Streamable HTTP headers.
const (
	headerSession  = "Mcp-Session-Id"
	headerProtocol = "MCP-Protocol-Version"
)

// Handler serves the Streamable HTTP transport on one endpoint:
//
//   - POST a JSON-RPC message (Accept must admit application/json). An
//     initialize request without Mcp-Session-Id opens a session: the
//     response carries its Mcp-Session-Id, which every later message must
//     send (400 without it, 404 for an unknown or expired session). A
//     request is answered 200 with one JSON message; a notification or a
//     response is answered 202 without body.
//   - DELETE with Mcp-Session-Id ends the session (204).
//   - GET is 405: the proxy opens no server-initiated stream.
//
// With WithKeys, every request needs an agent or operator API key, and a
// session is reachable only with a key of the tenant that opened it.
// Requests whose Origin names another host than the request's are refused
// (403); without API keys, so is a Host header that is not an IP address,
// localhost or one of Config.AllowedHosts (403), against DNS rebinding.
func (p *Proxy) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.keys == nil && !p.hostAllowed(r.Host) {
			httpError(w, http.StatusForbidden, "host %q is not allowed (--mcp-allowed-hosts)", r.Host)
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			if u, err := url.Parse(o); err != nil || u.Host != r.Host {
				httpError(w, http.StatusForbidden, "origin %q is not allowed", o)
				return
			}
		}
		tenant := p.cfg.Tenant
		if p.keys != nil {
			pr, ok := p.keys.Authenticate(r)
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="aegis"`)
				httpError(w, http.StatusUnauthorized, "missing or unknown API key")
				return
			}
			if pr.Role != ingest.RoleAgent && pr.Role != ingest.RoleOperator {
				httpError(w, http.StatusForbidden, "role %s may not use the MCP proxy", pr.Role)
				return
			}
			if !pr.AllowsManifest(p.cfg.Manifest) {
				// The proxy names its --mcp-manifest on every session's
				// events: a key bound to other manifests may not use it.
				httpError(w, http.StatusForbidden, "key %q may not open sessions under this proxy's manifest %q", pr.ID, p.cfg.Manifest)
				return
			}
			tenant = pr.Tenant
		}
		switch r.Method {
		case http.MethodPost:
			p.post(w, r, tenant)
		case http.MethodDelete:
			s := p.lookup(w, r, tenant)
			if s == nil {
				return
			}
			p.mu.Lock()
			delete(p.sessions, r.Header.Get(headerSession))
			p.metrics.sessions.Set(float64(len(p.sessions)))
			p.mu.Unlock()
			s.close()
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "POST, DELETE")
			httpError(w, http.StatusMethodNotAllowed, "the MCP proxy accepts POST and DELETE")
		}
	})
}

func (p *Proxy) post(w http.ResponseWriter, r *http.Request, tenant string) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		httpError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	if a := r.Header.Get("Accept"); a != "" && !strings.Contains(a, "application/json") && !strings.Contains(a, "*/*") {
		httpError(w, http.StatusNotAcceptable, "Accept must include application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.cfg.MaxMessageBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			httpError(w, http.StatusRequestEntityTooLarge, "message larger than %d bytes", p.cfg.MaxMessageBytes)
			return
		}
		httpError(w, http.StatusBadRequest, "read body: %v", err)
		return
	}
	m, perr := parseMessage(body)
	if perr != nil {
		writeMessage(w, http.StatusBadRequest, errorResponse(nil, perr.Code, perr.Message, nil))
		return
	}
	var s *session
	if m.Method == "initialize" && !m.isRequest() {
		// A notification gets no answer to carry a session id: opening
		// one (and starting its upstream) would only leak it.
		httpError(w, http.StatusBadRequest, "initialize must be a request (with an id)")
		return
	}
	if m.Method == "initialize" && r.Header.Get(headerSession) == "" {
		if s, err = p.open(tenant); err != nil {
			p.log.Error("MCP session not opened", "err", err)
			writeMessage(w, http.StatusServiceUnavailable, errorResponse(m.ID, CodeInternalError, "upstream MCP server: "+err.Error(), nil))
			return
		}
	} else if s = p.lookup(w, r, tenant); s == nil {
		return
	}
	if m.isRequest() {
		// Bounded like a stdio session's; notifications (a cancellation,
		// say) always pass.
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
		default:
			w.Header().Set("Retry-After", "1")
			writeMessage(w, http.StatusTooManyRequests, errorResponse(m.ID, CodeInternalError,
				fmt.Sprintf("aegis: %d requests of this session in progress, the limit; retry once one is answered", maxSessionInFlight), nil))
			return
		}
	}
	resp := s.handle(r.Context(), m)
	if m.Method == "initialize" {
		if resp != nil && resp.Error != nil && r.Header.Get(headerSession) == "" {
			p.drop(s)
		} else {
			w.Header().Set(headerSession, strings.TrimPrefix(s.id, "mcp-"))
		}
	}
	if resp == nil {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	writeMessage(w, http.StatusOK, resp)
}

// hostAllowed reports whether a request's Host may reach a proxy without
// API keys: an IP literal (a rebinding page sends its own name), localhost,
// or a name of Config.AllowedHosts.
func (p *Proxy) hostAllowed(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if net.ParseIP(host) != nil || host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	return slices.ContainsFunc(p.cfg.AllowedHosts, func(a string) bool { return strings.EqualFold(strings.TrimSuffix(a, "."), host) })
}

// open creates a session of tenant, within MaxSessions.
func (p *Proxy) open(tenant string) (*session, error) {
	// Run also expires idle sessions on a ticker; doing it here too keeps
	// a program that mounts only Handler from filling MaxSessions with
	// sessions nobody uses.
	p.expireIdle()
	id := randomHex(16)
	p.mu.Lock()
	opening, ofTenant := 0, p.opening[tenant]
	for _, n := range p.opening {
		opening += n
	}
	for _, o := range p.sessions {
		if o.tenant == tenant {
			ofTenant++
		}
	}
	full := len(p.sessions)+opening >= p.cfg.MaxSessions
	tenantFull := ofTenant >= min(p.cfg.MaxTenantSessions, p.cfg.MaxSessions)
	if !full && !tenantFull {
		p.opening[tenant]++ // the slot is taken while the upstream starts
	}
	p.mu.Unlock()
	switch {
	case full:
		return nil, fmt.Errorf("mcpproxy: %d sessions open, the limit", p.cfg.MaxSessions)
	case tenantFull:
		return nil, fmt.Errorf("mcpproxy: tenant %s has %d sessions open, the limit per tenant", tenant, ofTenant)
	}
	s, err := p.newSession(tenant, "mcp-"+id)
	p.mu.Lock()
	if p.opening[tenant]--; p.opening[tenant] <= 0 {
		delete(p.opening, tenant)
	}
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	p.sessions[id] = s
	p.metrics.sessions.Set(float64(len(p.sessions)))
	p.mu.Unlock()
	p.log.Info("MCP session opened", "tenant", tenant, "session", s.id)
	return s, nil
}

func (p *Proxy) drop(s *session) {
	p.mu.Lock()
	delete(p.sessions, strings.TrimPrefix(s.id, "mcp-"))
	p.metrics.sessions.Set(float64(len(p.sessions)))
	p.mu.Unlock()
	s.close()
}

// lookup returns the request's session, or writes the error and returns nil.
func (p *Proxy) lookup(w http.ResponseWriter, r *http.Request, tenant string) *session {
	id := r.Header.Get(headerSession)
	if id == "" {
		httpError(w, http.StatusBadRequest, "%s header required (send initialize first)", headerSession)
		return nil
	}
	p.mu.Lock()
	s := p.sessions[id]
	p.mu.Unlock()
	if s == nil || s.tenant != tenant {
		httpError(w, http.StatusNotFound, "unknown or expired session; initialize a new one")
		return nil
	}
	return s
}

func writeMessage(w http.ResponseWriter, status int, m *message) {
	b := append(encode(m), '\n')
	defer ingest.BoundWrite(w, len(b))()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// httpError answers a transport-level error as a JSON-RPC error without id.
func httpError(w http.ResponseWriter, status int, format string, args ...any) {
	writeMessage(w, status, errorResponse(nil, CodeInvalidRequest, fmt.Sprintf(format, args...), nil))
}

// maxSessionInFlight bounds the requests of one session in progress at
// once: a stdio session reads its next request when one is answered, an
// HTTP session answers more with 429.
const maxSessionInFlight = 64

// ServeStdio serves one MCP session on newline-delimited JSON-RPC: it
// reads messages from in, handles requests concurrently and writes each
// response to out as one line. It returns when in ends (after every
// request in flight is answered) or ctx is cancelled; the upstream session
// is closed either way. The session is Config.Tenant's, with Aegis session
// id Config.Session (default: "mcp-" and random hex digits).
func (p *Proxy) ServeStdio(ctx context.Context, in io.Reader, out io.Writer) error {
	id := p.cfg.Session
	if id == "" {
		id = "mcp-" + randomHex(16)
	}
	s, err := p.newSession(p.cfg.Tenant, id)
	if err != nil {
		return err
	}
	defer s.close()
	p.markReady()
	p.log.Info("MCP stdio session", "tenant", s.tenant, "session", s.id, "upstream", p.upstreamName())
	var wmu sync.Mutex
	write := func(m *message) error {
		wmu.Lock()
		defer wmu.Unlock()
		_, err := out.Write(append(encode(m), '\n'))
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	type line struct {
		b    []byte
		long bool // over MaxMessageBytes: read and dropped
	}
	lines := make(chan line)
	readErr := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(in, 64<<10)
		for {
			b, long, err := readLine(br, p.cfg.MaxMessageBytes)
			if long || len(bytes.TrimSpace(b)) > 0 {
				select {
				case lines <- line{b, long}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				readErr <- err
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			if err != nil {
				return fmt.Errorf("mcpproxy: stdin: %w", err)
			}
			return nil
		case l := <-lines:
			if l.long {
				_ = write(errorResponse(nil, CodeInvalidRequest, fmt.Sprintf("message larger than %d bytes", p.cfg.MaxMessageBytes), nil))
				continue
			}
			m, perr := parseMessage(l.b)
			if perr != nil {
				_ = write(errorResponse(nil, perr.Code, perr.Message, nil))
				continue
			}
			if !m.isRequest() {
				// Notifications (a cancellation of a call in flight, say)
				// and responses are passed on in order, without waiting
				// for a request's slot.
				s.handle(ctx, m)
				continue
			}
			// At most maxSessionInFlight requests are handled at once; the
			// reader waits for a slot, so a client cannot start goroutines
			// without bound.
			select {
			case s.slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-s.slots }()
				defer func() {
					// One message must not take the process (and the stages
					// it may run) down with it, as net/http ensures for HTTP.
					if r := recover(); r != nil {
						p.log.Error("MCP message handler panicked", "method", m.Method, "panic", r, "stack", string(debug.Stack()))
						if len(m.ID) > 0 {
							_ = write(errorResponse(m.ID, CodeInternalError, "aegis: internal error", nil))
						}
					}
				}()
				if resp := s.handle(ctx, m); resp != nil {
					if err := write(resp); err != nil {
						p.log.Warn("stdout write failed", "err", err)
					}
				}
			}()
		}
	}
}
