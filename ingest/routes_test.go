package ingest_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"aegis.dev/aegis/ingest"
)

func TestRouteErrorsAnswerInTheAPIFormat(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/sessions/{session}", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("session " + r.PathValue("session")))
	})
	mux.HandleFunc("POST /v1/events", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	mux.HandleFunc("GET /old/", func(w http.ResponseWriter, _ *http.Request) {})
	h := ingest.RouteErrors(mux)

	do := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec
	}
	code := func(rec *httptest.ResponseRecorder) string {
		t.Helper()
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q, body %q", ct, rec.Body)
		}
		var b ingest.ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
			t.Fatalf("body %q: %v", rec.Body, err)
		}
		if b.Error.Message == "" {
			t.Fatalf("no message: %q", rec.Body)
		}
		return b.Error.Code
	}

	// Routed requests are served as before, path values included.
	if rec := do("GET", "/v1/sessions/s-1"); rec.Code != 200 || rec.Body.String() != "session s-1" {
		t.Fatalf("routed GET: %d %q", rec.Code, rec.Body)
	}
	if rec := do("POST", "/v1/events"); rec.Code != http.StatusAccepted {
		t.Fatalf("routed POST: %d", rec.Code)
	}
	// HEAD is served by a GET route.
	if rec := do("HEAD", "/v1/sessions/s-1"); rec.Code != 200 {
		t.Fatalf("HEAD: %d", rec.Code)
	}
	// A redirect of the router (subtree without its slash) is kept.
	if rec := do("GET", "/old"); rec.Code/100 != 3 || rec.Header().Get("Location") != "/old/" {
		t.Fatalf("redirect: %d %v", rec.Code, rec.Header())
	}

	rec := do("GET", "/v1/nothing-here")
	if rec.Code != 404 || code(rec) != ingest.CodeRouteNotFound {
		t.Fatalf("unknown path: %d %q", rec.Code, rec.Body)
	}
	rec = do("DELETE", "/v1/events")
	if rec.Code != 405 || code(rec) != ingest.CodeMethodNotAllowed {
		t.Fatalf("wrong method: %d %q", rec.Code, rec.Body)
	}
	if allow := rec.Header().Get("Allow"); allow != "POST" {
		t.Fatalf("Allow %q, want POST", allow)
	}
	rec = do("PUT", "/v1/sessions/s-1")
	if rec.Code != 405 || code(rec) != ingest.CodeMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Fatalf("wrong method on a GET route: %d %q Allow %q", rec.Code, rec.Body, rec.Header().Get("Allow"))
	}
}
