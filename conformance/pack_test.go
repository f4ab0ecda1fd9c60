package conformance_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
)

const onePack = `name: one
cases:
  - {id: ONE-001, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: deny}}}
`

// TestParseRejectsSecondDocument: a file holding a second YAML document
// (after "---") is an error, not a pack whose later cases silently never
// run.
func TestParseRejectsSecondDocument(t *testing.T) {
	for _, ok := range []string{onePack, "---\n" + onePack, onePack + "---\n", onePack + "...\n"} {
		if _, err := conformance.Parse([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	two := onePack + "---\ncases:\n  - {id: ONE-002, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: allow}}}\n"
	p, err := conformance.Parse([]byte(two))
	if !errors.Is(err, conformance.ErrPack) {
		t.Fatalf("Parse of two documents: %v, %+v", err, p)
	}
}

// TestParseRejectsEmptyTamperAndReplay: a tamper or replay step must name
// at least one statement or session (the schema's minItems); an empty one
// would otherwise pass without doing anything.
func TestParseRejectsEmptyTamperAndReplay(t *testing.T) {
	for _, step := range []string{"{tamper: []}", "{replay: []}",
		// expect on a step that checks nothing would be silently ignored
		"{tamper: [\"DELETE FROM audit_events\"], expect: {status: 200}}", "{tenant: t, replay: [s], expect: {outcome: deny}}"} {
		pack := "cases:\n  - {id: ONE-001, requirement: REQ-TAMPER-EDIT, description: d, scenario: {steps: [" + step + "]}}\n"
		if p, err := conformance.Parse([]byte(pack)); !errors.Is(err, conformance.ErrPack) {
			t.Errorf("%s: %v, %+v", step, err, p)
		}
	}
}

// TestLoopIdenticalCaseSendsDifferentSpellings: LOOP-SCN-001 claims that
// the same arguments in another key order and number spelling are one
// call; its proposals must reach the target spelled differently, or a
// target that digests the raw bytes would pass it.
func TestLoopIdenticalCaseSendsDifferentSpellings(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	packs = filterCases(packs, "LOOP-SCN-001")
	var mu sync.Mutex
	var args []string
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !strings.HasSuffix(r.URL.Path, "/proposals") {
			_, _ = w.Write([]byte(`{"snapshot":{"events":4,"loop":{"detected":true,"seq":3}}}`))
			return
		}
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		n++
		if i := bytes.Index(b, []byte(`"args":`)); i >= 0 {
			if j := bytes.IndexByte(b[i:], '}'); j >= 0 { // the args are a flat object
				args = append(args, string(b[i:i+j+1]))
			}
		}
		if n <= 2 {
			_, _ = w.Write([]byte(`{"outcome":"allow","reason":"OK"}`))
			return
		}
		_, _ = w.Write([]byte(`{"outcome":"deny","reason":"LOOP_DETECTED"}`))
	}))
	defer srv.Close()
	rep, err := conformance.Run(context.Background(), packs, conformance.Options{Target: srv.URL, PollTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 0 || len(args) < 3 {
		t.Fatalf("%d failed, %d proposals: %+v", rep.Failed, len(args), rep.Cases)
	}
	if args[0] == args[1] || args[0] == args[2] || args[1] == args[2] {
		t.Errorf("the three identical calls were sent with the same bytes:\n%s\n%s\n%s", args[0], args[1], args[2])
	}
}
