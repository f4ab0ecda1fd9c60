package ingest

import (
	"net/http"
	"strings"
)

// RouteErrors makes mux answer the requests it has no route for in the
// API's error format instead of the router's plain text: an unknown path
// is 404 ROUTE_NOT_FOUND, a known path asked with a method it does not
// take is 405 METHOD_NOT_ALLOWED with the methods it takes in Allow.
// Clients get the same {"error":{"code","message"}} body from every
// response that is not a success, whether or not the API is enabled. It
// registers the catch-all pattern "/" on mux, so routed requests are
// matched once, as before; only the unrouted ones look further.
func RouteErrors(mux *http.ServeMux) http.Handler {
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		probe := *r
		for _, m := range routeMethods {
			probe.Method = m
			if _, pattern := mux.Handler(&probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) == 0 {
			writeError(w, errf(http.StatusNotFound, CodeRouteNotFound, "no endpoint at %s (docs/api.md lists them)", r.URL.Path))
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, errf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s does not take %s; it takes %s", r.URL.Path, r.Method, strings.Join(allow, ", ")))
	})
	return mux
}

// routeMethods are the methods a route may take, in the order Allow
// lists them (HEAD is taken wherever GET is).
var routeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}
