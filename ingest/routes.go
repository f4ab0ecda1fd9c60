package ingest

import (
	"net/http"
)

// RouteErrors serves mux, answering the requests it has no route for in the
// API's error format instead of the router's plain text: an unknown path is
// 404 ROUTE_NOT_FOUND, a known path asked with a method it does not take is
// 405 METHOD_NOT_ALLOWED with the methods it takes in Allow. Clients get
// the same {"error":{"code","message"}} body from every response that is not
// a success, whether or not the API is enabled.
func RouteErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			// ServeHTTP, not h: it also sets the request's path values.
			mux.ServeHTTP(w, r)
			return
		}
		// The router's own answer, captured to learn its status and Allow.
		c := &captured{header: http.Header{}}
		h.ServeHTTP(c, r)
		switch c.status {
		case http.StatusNotFound:
			writeError(w, errf(http.StatusNotFound, CodeRouteNotFound, "no endpoint at %s (docs/api.md lists them)", r.URL.Path))
		case http.StatusMethodNotAllowed:
			allow := c.header.Get("Allow")
			w.Header().Set("Allow", allow)
			writeError(w, errf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s does not take %s; it takes %s", r.URL.Path, r.Method, allow))
		default:
			// Anything else the router answers itself (none today) passes
			// through unchanged.
			for k, v := range c.header {
				w.Header()[k] = v
			}
			w.WriteHeader(c.status)
			_, _ = w.Write(c.body)
		}
	})
}

// captured records the router's answer to an unrouted request; it is a
// one-line error message, so the body kept is bounded.
type captured struct {
	header http.Header
	status int
	body   []byte
}

func (c *captured) Header() http.Header { return c.header }

func (c *captured) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

func (c *captured) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if len(c.body) < 4<<10 {
		c.body = append(c.body, p[:min(len(p), 4<<10-len(c.body))]...)
	}
	return len(p), nil
}
