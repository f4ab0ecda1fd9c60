package chain

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"aegis.dev/aegis/schemas/envelope"
)

var update = flag.Bool("update", false, "rewrite the golden vectors in schemas/testdata/chain")

const vectorsDir = "../testdata/chain"

// Vector is one line of schemas/testdata/chain/vectors.ndjson: a sealed
// record, the exact bytes that are hashed, and the hash.
type Vector struct {
	Record    json.RawMessage `json:"record"`
	Canonical string          `json:"canonical"`
	Hash      string          `json:"hash"`
}

func readEvents(tb testing.TB, path string) []*envelope.Event {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []*envelope.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		e, err := envelope.Decoder{Sealed: true}.Decode(sc.Bytes())
		if err != nil {
			tb.Fatalf("%s: %v", path, err)
		}
		out = append(out, e)
	}
	return out
}

// sealAll links events in order, one chain per session.
func sealAll(tb testing.TB, events []*envelope.Event) []*envelope.Event {
	tb.Helper()
	heads := map[string]*Head{}
	for _, e := range events {
		k := e.TenantID + "/" + e.SessionID
		h, err := Link(heads[k], e)
		if err != nil {
			tb.Fatal(err)
		}
		heads[k] = &h
	}
	return events
}

func TestGoldenVectors(t *testing.T) {
	events := sealAll(t, readEvents(t, filepath.Join(vectorsDir, "events.ndjson")))
	var got bytes.Buffer
	for _, e := range events {
		canonical, err := e.AppendCanonical(nil, false)
		if err != nil {
			t.Fatal(err)
		}
		record, err := e.AppendCanonical(nil, true)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := json.Marshal(Vector{Record: record, Canonical: string(canonical), Hash: e.Hash})
		got.Write(append(line, '\n'))
	}
	path := filepath.Join(vectorsDir, "vectors.ndjson")
	if *update {
		if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("sealing %s no longer produces %s (run with -update only if the chain format changed on purpose)", "events.ndjson", path)
	}
	// The vectors verify with a fresh verifier reading the records back.
	v := NewVerifier()
	for _, line := range bytes.Split(bytes.TrimSpace(want), []byte("\n")) {
		var vec Vector
		if err := json.Unmarshal(line, &vec); err != nil {
			t.Fatal(err)
		}
		e, err := envelope.Decoder{Sealed: true}.Decode(vec.Record)
		if err != nil {
			t.Fatal(err)
		}
		if f := v.Add(e); f != nil {
			t.Fatalf("golden record fails: %v", f)
		}
	}
}

func TestFirstLinkIsGenesis(t *testing.T) {
	e := &envelope.Event{V: 1, TenantID: "t", SessionID: "s", Seq: 1, TsUnixMs: 1, Type: envelope.ModelCallStarted, Payload: json.RawMessage(`{}`)}
	h, err := Link(nil, e)
	if err != nil {
		t.Fatal(err)
	}
	if e.PrevHash != Genesis || h.Hash != e.Hash || len(e.Hash) != 64 || h.Seq != 1 {
		t.Fatalf("%+v %+v", e, h)
	}
	// The documented construction, spelled out.
	want := `{"event_type":"MODEL_CALL_STARTED","payload":{},"prev_hash":"` + Genesis + `","seq":1,"session_id":"s","tenant_id":"t","ts_unix_ms":1,"v":1}`
	got, _ := e.AppendCanonical(nil, false)
	if string(got) != want {
		t.Fatalf("hashed bytes\n got %s\nwant %s", got, want)
	}
}

func TestLinkRejectsWrongSeqOrSession(t *testing.T) {
	e1 := &envelope.Event{V: 1, TenantID: "t", SessionID: "s", Seq: 1, TsUnixMs: 1, Type: envelope.ModelCallStarted, Payload: json.RawMessage(`{}`)}
	h, _ := Link(nil, e1)
	for name, e := range map[string]*envelope.Event{
		"gap":           {V: 1, TenantID: "t", SessionID: "s", Seq: 3, TsUnixMs: 1, Type: envelope.ModelCallStarted},
		"repeat":        {V: 1, TenantID: "t", SessionID: "s", Seq: 1, TsUnixMs: 1, Type: envelope.ModelCallStarted},
		"other session": {V: 1, TenantID: "t", SessionID: "x", Seq: 2, TsUnixMs: 1, Type: envelope.ModelCallStarted},
		"other tenant":  {V: 1, TenantID: "u", SessionID: "s", Seq: 2, TsUnixMs: 1, Type: envelope.ModelCallStarted},
		"first not 1":   nil,
	} {
		t.Run(name, func(t *testing.T) {
			var err error
			if e == nil {
				_, err = Link(nil, &envelope.Event{V: 1, TenantID: "t", SessionID: "s", Seq: 2, TsUnixMs: 1, Type: envelope.ModelCallStarted})
			} else {
				_, err = Link(&h, e)
				if e.Hash != "" || e.PrevHash != "" {
					t.Fatal("event modified on error")
				}
			}
			if err == nil {
				t.Fatal("linked")
			}
		})
	}
}

// sealedLog returns two tenants × two sessions × n events, sealed, as
// independent copies each call.
func sealedLog(tb testing.TB, n int) []*envelope.Event {
	tb.Helper()
	var evs []*envelope.Event
	for i := 1; i <= n; i++ {
		for _, ts := range [][2]string{{"acme", "s1"}, {"acme", "s2"}, {"globex", "s1"}} {
			evs = append(evs, &envelope.Event{V: 1, TenantID: ts[0], SessionID: ts[1], Seq: uint64(i), TsUnixMs: int64(1000 + i), Type: envelope.ToolResult,
				Payload: json.RawMessage(fmt.Sprintf(`{"call_id":"c%d","tool_name":"search"}`, i))})
		}
	}
	return sealAll(tb, evs)
}

func verifyAll(evs []*envelope.Event, heads []Head) []Failure {
	v := NewVerifier()
	for _, e := range evs {
		v.Add(e)
	}
	if heads != nil {
		v.CheckHeads(heads)
	}
	return v.Failures()
}

func heads(evs []*envelope.Event) []Head {
	v := NewVerifier()
	for _, e := range evs {
		v.Add(e)
	}
	return v.Heads()
}

func indexOf(evs []*envelope.Event, tenant, session string, seq uint64) int {
	for i, e := range evs {
		if e.TenantID == tenant && e.SessionID == session && e.Seq == seq {
			return i
		}
	}
	panic("no such event")
}

func TestVerifyDetectsTampering(t *testing.T) {
	type tamper func(evs []*envelope.Event) []*envelope.Event
	cases := []struct {
		name       string
		tamper     tamper
		withHeads  bool
		wantReason string
		wantAt     [3]any // tenant, session, seq of the first bad record
	}{
		{"edit payload", func(evs []*envelope.Event) []*envelope.Event {
			evs[indexOf(evs, "acme", "s1", 3)].Payload = json.RawMessage(`{"call_id":"c3","tool_name":"exec"}`)
			return evs
		}, false, ReasonHashMismatch, [3]any{"acme", "s1", uint64(3)}},
		{"edit decision", func(evs []*envelope.Event) []*envelope.Event {
			e := evs[indexOf(evs, "acme", "s2", 2)]
			e.Decision = &envelope.Decision{Outcome: envelope.Allow, Reason: "OK"}
			return evs
		}, false, ReasonHashMismatch, [3]any{"acme", "s2", uint64(2)}},
		{"edit timestamp", func(evs []*envelope.Event) []*envelope.Event {
			evs[indexOf(evs, "globex", "s1", 4)].TsUnixMs++
			return evs
		}, false, ReasonHashMismatch, [3]any{"globex", "s1", uint64(4)}},
		{"edit and rehash one record", func(evs []*envelope.Event) []*envelope.Event {
			e := evs[indexOf(evs, "acme", "s1", 3)]
			e.Payload = json.RawMessage(`{"call_id":"c3","tool_name":"exec"}`)
			e.Hash, _ = Hash(e)
			return evs
		}, false, ReasonPrevHashMismatch, [3]any{"acme", "s1", uint64(4)}},
		{"delete middle", func(evs []*envelope.Event) []*envelope.Event {
			i := indexOf(evs, "acme", "s1", 2)
			return append(evs[:i], evs[i+1:]...)
		}, false, ReasonSeqGap, [3]any{"acme", "s1", uint64(3)}},
		{"delete first", func(evs []*envelope.Event) []*envelope.Event {
			i := indexOf(evs, "globex", "s1", 1)
			return append(evs[:i], evs[i+1:]...)
		}, false, ReasonSeqGap, [3]any{"globex", "s1", uint64(2)}},
		{"reorder", func(evs []*envelope.Event) []*envelope.Event {
			i, j := indexOf(evs, "acme", "s2", 2), indexOf(evs, "acme", "s2", 3)
			evs[i], evs[j] = evs[j], evs[i]
			return evs
		}, false, ReasonSeqGap, [3]any{"acme", "s2", uint64(3)}},
		{"duplicate record", func(evs []*envelope.Event) []*envelope.Event {
			i := indexOf(evs, "acme", "s1", 2)
			dup := *evs[i]
			return append(evs[:i+1], append([]*envelope.Event{&dup}, evs[i+1:]...)...)
		}, false, ReasonSeqOrder, [3]any{"acme", "s1", uint64(2)}},
		{"renumber after delete", func(evs []*envelope.Event) []*envelope.Event {
			i := indexOf(evs, "acme", "s1", 2)
			evs = append(evs[:i], evs[i+1:]...)
			for _, e := range evs {
				if e.TenantID == "acme" && e.SessionID == "s1" && e.Seq > 2 {
					e.Seq--
				}
			}
			return evs
		}, false, ReasonHashMismatch, [3]any{"acme", "s1", uint64(2)}},
		{"splice across sessions", func(evs []*envelope.Event) []*envelope.Event {
			// Record 3 of acme/s2 relabelled as record 3 of acme/s1.
			src := *evs[indexOf(evs, "acme", "s2", 3)]
			src.SessionID = "s1"
			evs[indexOf(evs, "acme", "s1", 3)] = &src
			return evs
		}, false, ReasonHashMismatch, [3]any{"acme", "s1", uint64(3)}},
		{"splice across tenants", func(evs []*envelope.Event) []*envelope.Event {
			src := *evs[indexOf(evs, "globex", "s1", 2)]
			src.TenantID = "acme"
			evs[indexOf(evs, "acme", "s1", 2)] = &src
			return evs
		}, false, ReasonHashMismatch, [3]any{"acme", "s1", uint64(2)}},
		{"truncate tail", func(evs []*envelope.Event) []*envelope.Event {
			i := indexOf(evs, "acme", "s2", 5)
			return append(evs[:i], evs[i+1:]...)
		}, true, ReasonTruncated, [3]any{"acme", "s2", uint64(5)}},
		{"drop whole session", func(evs []*envelope.Event) []*envelope.Event {
			var out []*envelope.Event
			for _, e := range evs {
				if e.TenantID != "globex" {
					out = append(out, e)
				}
			}
			return out
		}, true, ReasonMissingSession, [3]any{"globex", "s1", uint64(1)}},
		{"rewrite and rehash tail", func(evs []*envelope.Event) []*envelope.Event {
			// An attacker who recomputes every hash from the edit on is
			// caught only by the expected head.
			var head *Head
			for _, e := range evs {
				if e.TenantID == "acme" && e.SessionID == "s1" {
					if e.Seq == 4 {
						e.Payload = json.RawMessage(`{"call_id":"c4","tool_name":"exec"}`)
					}
					e.PrevHash, e.Hash = "", ""
					h, err := Link(head, e)
					if err != nil {
						panic(err)
					}
					head = &h
				}
			}
			return evs
		}, true, ReasonHeadMismatch, [3]any{"acme", "s1", uint64(5)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := sealedLog(t, 5)
			var hs []Head
			if tc.withHeads {
				hs = heads(evs)
			}
			if f := verifyAll(evs, hs); len(f) != 0 {
				t.Fatalf("untampered log fails: %v", f)
			}
			fs := verifyAll(tc.tamper(evs), hs)
			if len(fs) == 0 {
				t.Fatal("tampering not detected")
			}
			f := fs[0]
			if f.Reason != tc.wantReason || f.TenantID != tc.wantAt[0] || f.SessionID != tc.wantAt[1] || f.Seq != tc.wantAt[2] {
				t.Fatalf("got %v, want %s at %v", &f, tc.wantReason, tc.wantAt)
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	evs := sealedLog(b, 1000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := NewVerifier()
		for _, e := range evs {
			if f := v.Add(e); f != nil {
				b.Fatal(f)
			}
		}
	}
	b.ReportMetric(float64(len(evs)*b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkLink(b *testing.B) {
	e := &envelope.Event{V: 1, TenantID: "acme", SessionID: "s-42", Seq: 7, TsUnixMs: 1767225600123, Type: envelope.ToolCallProposed,
		Payload:  json.RawMessage(`{"args":{"domain":"api.example.com","url":"https://api.example.com/v1/items?limit=10"},"call_id":"c-7","tool_name":"web_fetch"}`),
		Decision: &envelope.Decision{Outcome: envelope.Allow, Reason: "OK", Constraints: envelope.Constraints{MaxOutputBytes: 1048576, TimeoutMs: 30000}, PolicyRevision: "sha256:ab", ManifestDigest: "sha256:cd", InputDigest: "sha256:ef"}}
	head := &Head{TenantID: "acme", SessionID: "s-42", Seq: 6, Hash: Genesis}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Link(head, e); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVectorsCheckedByAnotherLanguage runs the stand-alone Python checker
// on the golden vectors: the chain format can be re-implemented from
// docs/chain.md without Aegis' code.
func TestVectorsCheckedByAnotherLanguage(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is required for the cross-language vector check: %v", err)
	}
	out, err := exec.Command(py, filepath.Join(vectorsDir, "check_vectors.py"), filepath.Join(vectorsDir, "vectors.ndjson")).CombinedOutput()
	if err != nil {
		t.Fatalf("check_vectors.py: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("7 vectors OK")) {
		t.Fatalf("unexpected output: %s", out)
	}
}
