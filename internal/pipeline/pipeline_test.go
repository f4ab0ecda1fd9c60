package pipeline

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

func TestWindow(t *testing.T) {
	var w Window
	steps := []struct {
		name   string
		seq    uint64
		digest string
		want   Verdict
		add    bool
	}{
		{"first must be 1", 2, "b", Gap, false},
		{"first", 1, "a", Accept, true},
		{"retry of 1", 1, "a", Duplicate, false},
		{"conflict on 1", 1, "x", Conflict, false},
		{"next", 2, "b", Accept, true},
		{"gap", 4, "d", Gap, false},
		{"retry of 2", 2, "b", Duplicate, false},
	}
	for _, s := range steps {
		got, detail := w.Check(s.seq, s.digest)
		if got != s.want {
			t.Fatalf("%s: got %v (%s), want %v", s.name, got, detail, s.want)
		}
		if (got == Accept || got == Duplicate) != (detail == "") {
			t.Fatalf("%s: detail %q", s.name, detail)
		}
		if s.add {
			w.Add(s.seq, s.digest)
		}
	}
	for seq := uint64(3); seq <= 3+WindowSize; seq++ {
		w.Add(seq, "z")
	}
	if len(w.Recent) != WindowSize || w.Recent[0].Seq != 4 || w.Last != 3+WindowSize {
		t.Fatalf("window %+v", w)
	}
	if v, _ := w.Check(2, "b"); v != Stale {
		t.Fatalf("seq older than the window: %v", v)
	}
	for v, r := range map[Verdict]string{Conflict: ReasonSeqConflict, Gap: ReasonSeqGap, Stale: ReasonSeqStale, Accept: "", Duplicate: ""} {
		if v.Reason() != r {
			t.Errorf("%v.Reason() = %q", v, v.Reason())
		}
	}
}

func TestCheckKey(t *testing.T) {
	ev := &envelope.Event{TenantID: "acme", SessionID: "s1"}
	right := stream.Partition([]byte("acme/s1"), 6)
	cases := []struct {
		name string
		rec  stream.Record
		want string
	}{
		{"ok", stream.Record{Key: []byte("acme/s1"), Partition: right}, ""},
		{"no key", stream.Record{Partition: right}, ReasonKeyMismatch},
		{"other session", stream.Record{Key: []byte("acme/s2"), Partition: right}, ReasonKeyMismatch},
		{"tenant only", stream.Record{Key: []byte("acme"), Partition: right}, ReasonKeyMismatch},
		{"wrong partition", stream.Record{Key: []byte("acme/s1"), Partition: (right + 1) % 6}, ReasonWrongPartition},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, _ := CheckKey(&tc.rec, ev, 6); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestContentDigestIgnoresPipelineFields(t *testing.T) {
	a := &envelope.Event{V: 1, TenantID: "t", SessionID: "s", Seq: 1, TsUnixMs: 1, Type: envelope.ToolCallProposed, Payload: json.RawMessage(`{"b":1,"a":2}`)}
	b := *a
	b.Decision = &envelope.Decision{Outcome: envelope.Deny, Reason: "X"}
	b.PrevHash, b.Hash = "p", "h"
	da, _, err := ContentDigest(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, _, _ := ContentDigest(&b, nil)
	c := *a
	c.TsUnixMs = 2
	dc, _, _ := ContentDigest(&c, nil)
	if da != db || da == dc || len(da) != 32 {
		t.Fatalf("digests %s %s %s", da, db, dc)
	}
}

func TestRejectionKeepsOriginal(t *testing.T) {
	rec := &stream.Record{Topic: "aegis.events", Partition: 2, Offset: 9, Key: []byte("k"), Value: []byte("\xff\x00bin")}
	out := NewRejection("decider", rec, "INVALID_UTF8", "bad").Output("aegis.rejected", rec)
	var r Rejection
	if err := json.Unmarshal(out.Value, &r); err != nil {
		t.Fatal(err)
	}
	if string(r.OriginalBase64) != "\xff\x00bin" || r.Original != "" || r.Offset != 9 || out.Partition != 2 || string(out.Key) != "k" {
		t.Fatalf("%+v %+v", r, out)
	}
	rec.Value = []byte(`{"x":1}`)
	out = NewRejection("decider", rec, "R", "d").Output("aegis.rejected", rec)
	_ = json.Unmarshal(out.Value, &r)
	if r.Original != `{"x":1}` {
		t.Fatalf("%+v", r)
	}
}

func TestTopicSpecs(t *testing.T) {
	specs := NewTopics("x.").Specs(4, 1<<20)
	if len(specs) != 7 {
		t.Fatalf("%d specs", len(specs))
	}
	compact := 0
	for _, s := range specs {
		if s.Partitions != 4 || s.Configs["max.message.bytes"] != "2162688" {
			t.Fatalf("%+v", s)
		}
		if s.Cleanup == stream.CleanupCompact {
			compact++
		}
	}
	if compact != 2 {
		t.Fatalf("%d compacted topics", compact)
	}
	if ValidatePrefix("ok.prefix-1_") != nil || ValidatePrefix("bad/prefix") == nil {
		t.Fatal("prefix validation")
	}
}

func TestWindowAppendJSONRoundTrips(t *testing.T) {
	for _, format := range []string{"sha256:%064x", "%032x", "%032X", `a"b\\%d`, "é%d"} {
		windowRoundTrips(t, &Window{}, 1, func(seq uint64) string { return fmt.Sprintf(format, seq) })
	}
	// Plain and escaped digests in turn, so that the run of plain ones
	// AppendJSON trusts restarts at every escaped one.
	windowRoundTrips(t, &Window{}, 1, func(seq uint64) string {
		if seq%3 == 0 {
			return fmt.Sprintf(`"%d"`, seq)
		}
		return fmt.Sprintf("%064x", seq)
	})
}

// A window decoded from a state record is not trusted to hold plain
// digests: entries that need escaping are escaped until they leave it,
// while plain digests are added after them.
func TestWindowAppendJSONAfterDecode(t *testing.T) {
	var w Window
	for seq := uint64(1); seq <= WindowSize; seq++ {
		w.Add(seq, fmt.Sprintf("\"\\é%d\n", seq))
	}
	b, err := json.Marshal(&w)
	if err != nil {
		t.Fatal(err)
	}
	var restored Window
	if err := json.Unmarshal(b, &restored); err != nil {
		t.Fatal(err)
	}
	windowRoundTrips(t, &restored, WindowSize+1, func(seq uint64) string { return fmt.Sprintf("%064x", seq) })
}

// windowRoundTrips adds WindowSize+3 events from seq first to w, digests
// made by digest, and checks AppendJSON against encoding/json before each.
func windowRoundTrips(t *testing.T, w *Window, first uint64, digest func(uint64) string) {
	t.Helper()
	for seq := first; seq < first+WindowSize+3; seq++ {
		b, err := w.AppendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(w)
		var got Window
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if got.Last != w.Last || !slices.Equal(got.Recent, w.Recent) || string(b) != string(want) {
			t.Fatalf("seq %d: AppendJSON %s, encoding/json %s", seq, b, want)
		}
		w.Add(seq, digest(seq))
	}
}

func TestPlainDigestEveryByte(t *testing.T) {
	for i := range 256 {
		c := byte(i)
		want := c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
		if got := plainDigest("0123456789abcdef" + string([]byte{c}) + "fedcba"); got != want {
			t.Errorf("byte %#x: plain %v, want %v", c, got, want)
		}
	}
	if !plainDigest("") {
		t.Error("empty digest")
	}
}

// BenchmarkWindowAppendJSON writes a full window of content digests, as
// every state record of a session that has seen WindowSize events does.
func BenchmarkWindowAppendJSON(b *testing.B) {
	var w Window
	for seq := uint64(1); seq <= WindowSize; seq++ {
		w.Add(seq, fmt.Sprintf("%064x", seq*0x9e3779b97f4a7c15))
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = w.AppendJSON(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
