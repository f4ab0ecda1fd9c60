package pipeline

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

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
	out := NewRejection("decider", rec, "INVALID_UTF8", "bad").Output("aegis.rejected", rec, 0)
	var r Rejection
	if err := json.Unmarshal(out.Value, &r); err != nil {
		t.Fatal(err)
	}
	if string(r.OriginalBase64) != "\xff\x00bin" || r.Original != "" || r.Offset != 9 || out.Partition != 2 || string(out.Key) != "k" {
		t.Fatalf("%+v %+v", r, out)
	}
	rec.Value = []byte(`{"x":1}`)
	out = NewRejection("decider", rec, "R", "d").Output("aegis.rejected", rec, 0)
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
	// Small events: the state topics still take a full state record.
	for _, s := range NewTopics("x.").Specs(1, 64<<10) {
		want := "196608"
		if s.Cleanup == stream.CleanupCompact {
			want = fmt.Sprint(StateRecordMaxBytes)
		}
		if s.Configs["max.message.bytes"] != want {
			t.Fatalf("%s: max.message.bytes %s, want %s", s.Name, s.Configs["max.message.bytes"], want)
		}
	}
	if ValidatePrefix("ok.prefix-1_") != nil || ValidatePrefix("bad/prefix") == nil {
		t.Fatal("prefix validation")
	}
}

func TestWindowAppendJSONRoundTrips(t *testing.T) {
	for _, format := range []string{"%032x", "sha256:%064x", "%064x", "%031x", "%032X", `a"b\\%d`, "é%d"} {
		windowRoundTrips(t, &Window{}, 1, func(seq uint64) string { return fmt.Sprintf(format, seq*0x9e3779b97f4a7c15) })
	}
	// Content digests and others in turn: the window switches form as
	// the others enter and leave it.
	windowRoundTrips(t, &Window{}, 1, func(seq uint64) string {
		if seq%7 == 0 {
			return fmt.Sprintf(`"%d"`, seq)
		}
		return fmt.Sprintf("%032x", seq)
	})
}

// windowRoundTrips adds WindowSize+3 events from seq first to w, digests
// made by digest, and checks before each that AppendJSON reads back equal,
// that MarshalJSON agrees, and that the compact form is used exactly when
// every digest is a content digest.
func windowRoundTrips(t *testing.T, w *Window, first uint64, digest func(uint64) string) {
	t.Helper()
	for seq := first; seq < first+WindowSize+3; seq++ {
		b, err := w.AppendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := json.Marshal(w)
		if err != nil || string(m) != string(b) {
			t.Fatalf("MarshalJSON %s, %v; AppendJSON %s", m, err, b)
		}
		var got Window
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if got.Last != w.Last || !slices.Equal(got.Recent, w.Recent) {
			t.Fatalf("seq %d: %s read back as %+v, want %+v", seq, b, got, *w)
		}
		compact := len(w.Recent) > 0
		for _, r := range w.Recent {
			if _, err := hex.DecodeString(r.Digest); err != nil || len(r.Digest) != 32 || strings.ToLower(r.Digest) != r.Digest {
				compact = false
			}
		}
		if got := strings.Contains(string(b), `"digests":`); got != compact {
			t.Fatalf("seq %d: compact form %v, want %v: %s", seq, got, compact, b)
		}
		w.Add(seq, digest(seq))
	}
}

// The compact form is the base64 of the binary digests, oldest first.
func TestWindowCompactForm(t *testing.T) {
	var w Window
	var bin []byte
	for seq := uint64(1); seq <= WindowSize+4; seq++ {
		sum := sha256.Sum256([]byte{byte(seq)})
		w.Add(seq, hex.EncodeToString(sum[:16]))
		if seq > 4 {
			bin = append(bin, sum[:16]...)
		}
	}
	want := fmt.Sprintf(`{"last_seq":%d,"digests":"%s"}`, WindowSize+4, base64.StdEncoding.EncodeToString(bin))
	if b, err := w.AppendJSON(nil); err != nil || string(b) != want {
		t.Fatalf("got %s, %v\nwant %s", b, err, want)
	}
	if b, _ := (&Window{Last: 7}).AppendJSON(nil); string(b) != `{"last_seq":7}` {
		t.Fatalf("empty window: %s", b)
	}
}

// Any byte that is not lower-case hex, anywhere in any digest, sends the
// window to the entry form, which keeps it exactly.
func TestWindowCompactOnlyLowerHex(t *testing.T) {
	base := fmt.Sprintf("%032x", uint64(0x0123456789abcdef))
	for pos := range 32 {
		for _, c := range []byte{'A', 'F', 'g', '/', ':', '`', ' ', '"'} {
			w := Window{}
			w.Add(1, base)
			d := []byte(base)
			d[pos] = c
			w.Add(2, string(d))
			b, err := w.AppendJSON(nil)
			if err != nil {
				t.Fatal(err)
			}
			var got Window
			if err := json.Unmarshal(b, &got); err != nil || strings.Contains(string(b), `"digests"`) || !slices.Equal(got.Recent, w.Recent) {
				t.Fatalf("byte %q at %d: %s read back as %+v (%v)", c, pos, b, got.Recent, err)
			}
		}
	}
}

// Windows written entry by entry (every window, before the compact form)
// are read, and written back compact when they can be.
func TestWindowReadsEntryForm(t *testing.T) {
	d1, d2 := fmt.Sprintf("%032x", 1), fmt.Sprintf("%032x", 2)
	var w Window
	if err := json.Unmarshal([]byte(`{"last_seq":9,"recent":[{"seq":8,"digest":"`+d1+`"},{"seq":9,"digest":"`+d2+`"}]}`), &w); err != nil {
		t.Fatal(err)
	}
	if w.Last != 9 || !slices.Equal(w.Recent, []Recent{{8, d1}, {9, d2}}) {
		t.Fatalf("read %+v", w)
	}
	if b, _ := w.AppendJSON(nil); !strings.Contains(string(b), `"digests":`) {
		t.Fatalf("not compact: %s", b)
	}
	// Seqs that are not consecutive up to last_seq cannot be implied.
	for _, in := range []string{
		`{"last_seq":9,"recent":[{"seq":7,"digest":"` + d1 + `"},{"seq":9,"digest":"` + d2 + `"}]}`,
		`{"last_seq":10,"recent":[{"seq":8,"digest":"` + d1 + `"},{"seq":9,"digest":"` + d2 + `"}]}`,
		`{"last_seq":1,"recent":[{"seq":0,"digest":"` + d1 + `"},{"seq":1,"digest":"` + d2 + `"}]}`,
	} {
		var w Window
		if err := json.Unmarshal([]byte(in), &w); err != nil {
			t.Fatal(err)
		}
		b, _ := w.AppendJSON(nil)
		var got Window
		if err := json.Unmarshal(b, &got); err != nil || strings.Contains(string(b), `"digests"`) || got.Last != w.Last || !slices.Equal(got.Recent, w.Recent) {
			t.Fatalf("%s written as %s, read back as %+v (%v)", in, b, got, err)
		}
	}
}

// An entry-form window longer than WindowSize keeps its newest entries,
// and stays at WindowSize as events are added.
func TestWindowLongEntryFormIsBounded(t *testing.T) {
	var in strings.Builder
	in.WriteString(`{"last_seq":40,"recent":[`)
	for seq := 1; seq <= 40; seq++ {
		if seq > 1 {
			in.WriteByte(',')
		}
		fmt.Fprintf(&in, `{"seq":%d,"digest":"%032x"}`, seq, seq)
	}
	in.WriteString(`]}`)
	var w Window
	if err := json.Unmarshal([]byte(in.String()), &w); err != nil {
		t.Fatal(err)
	}
	if len(w.Recent) != WindowSize || w.Recent[0].Seq != 40-WindowSize+1 || w.Recent[WindowSize-1].Seq != 40 {
		t.Fatalf("read %d entries, %+v", len(w.Recent), w.Recent)
	}
	if v, _ := w.Check(40, fmt.Sprintf("%032x", 40)); v != Duplicate {
		t.Fatalf("seq 40 again: %v", v)
	}
	long := Window{Last: 40}
	for seq := uint64(1); seq <= 40; seq++ {
		long.Recent = append(long.Recent, Recent{seq, fmt.Sprintf("%032x", seq)})
	}
	for seq := uint64(41); seq <= 45; seq++ {
		long.Add(seq, fmt.Sprintf("%032x", seq))
		if len(long.Recent) != WindowSize || long.Recent[WindowSize-1].Seq != seq || long.Recent[0].Seq != seq-WindowSize+1 {
			t.Fatalf("after adding %d: %d entries from %d", seq, len(long.Recent), long.Recent[0].Seq)
		}
	}
}

func TestWindowRejectsBadDigests(t *testing.T) {
	full := base64.StdEncoding.EncodeToString(make([]byte, WindowSize*16))
	for _, in := range []string{
		`{"last_seq":3,"digests":"not base64!"}`,
		`{"last_seq":3,"digests":"` + base64.StdEncoding.EncodeToString(make([]byte, 15)) + `"}`,
		`{"last_seq":3,"digests":"` + base64.RawStdEncoding.EncodeToString(make([]byte, 16)) + `"}`,
		`{"last_seq":99,"digests":"` + base64.StdEncoding.EncodeToString(make([]byte, (WindowSize+1)*16)) + `"}`,
		`{"last_seq":15,"digests":"` + full + `"}`,
		`{"last_seq":16,"digests":"` + full + `","recent":[]}`,
		`{"last_seq":16,"digests":7}`,
	} {
		var w Window
		if err := json.Unmarshal([]byte(in), &w); err == nil {
			t.Errorf("%s: read as %+v", in, w)
		}
	}
	var w Window
	if err := json.Unmarshal([]byte(`{"last_seq":16,"digests":"`+full+`"}`), &w); err != nil || len(w.Recent) != WindowSize || w.Recent[0].Seq != 1 {
		t.Fatalf("full window: %+v, %v", w, err)
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
		w.Add(seq, fmt.Sprintf("%032x", seq*0x9e3779b97f4a7c15))
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

func TestRejectionFitsItsTopic(t *testing.T) {
	const limit = 64 << 10
	cases := map[string]*stream.Record{
		// é is two bytes: the 4 KiB prefix cuts one in half.
		"control bytes": {Key: []byte("acme/s1"), Value: []byte("x" + strings.Repeat("é\x01", 20<<10))},
		"invalid utf-8": {Key: []byte("acme/s1"), Value: []byte(strings.Repeat("\xff", 60<<10))},
		"huge key":      {Key: []byte(strings.Repeat("k", 50<<10)), Value: []byte(`{}`)},
	}
	for name, rec := range cases {
		out := NewRejection("decider", rec, "R", "d").Output("aegis.rejected", rec, limit)
		if len(out.Key)+len(out.Value)+RecordOverhead > limit {
			t.Fatalf("%s: %d + %d bytes", name, len(out.Key), len(out.Value))
		}
		var r Rejection
		if err := json.Unmarshal(out.Value, &r); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(rec.Value)
		prefix := r.Original
		if r.OriginalBase64 != nil {
			prefix = string(r.OriginalBase64)
		}
		if !r.OriginalTruncated || r.OriginalBytes != len(rec.Value) || r.OriginalSHA256 != hex.EncodeToString(sum[:]) ||
			!strings.HasPrefix(string(rec.Value), prefix) || len(prefix) < min(len(rec.Value), TruncatedOriginalBytes)-utf8.UTFMax {
			t.Fatalf("%s: %+v", name, r)
		}
		if r.Original != "" && !utf8.ValidString(r.Original) {
			t.Fatalf("%s: prefix is not UTF-8", name)
		}
	}
	// A detail quoting a large input (CheckKey quotes the key, the decoder
	// an unknown event type) is cut too: each control byte is ~10 bytes of
	// JSON once quoted with %q.
	big := strings.Repeat("\x01", 40<<10)
	for name, rec := range map[string]*stream.Record{
		"detail quoting the key":  {Key: []byte(big), Value: []byte(`{}`)},
		"detail quoting the type": {Key: []byte("acme/s1"), Value: []byte(`{"event_type":"` + big + `"}`)},
	} {
		out := NewRejection("decider", rec, "R", fmt.Sprintf("quoted %q", big)).Output("aegis.rejected", rec, limit)
		if len(out.Key)+len(out.Value)+RecordOverhead > limit {
			t.Fatalf("%s: %d + %d bytes", name, len(out.Key), len(out.Value))
		}
		var r Rejection
		if err := json.Unmarshal(out.Value, &r); err != nil || !strings.HasPrefix(r.Detail, `quoted "\x01`) || !strings.Contains(r.Detail, "(detail truncated)") ||
			!strings.Contains(r.Detail, "(original truncated") {
			t.Fatalf("%s: %v, detail %.80q…", name, err, r.Detail)
		}
	}
	// What fits stays whole, '<' unescaped.
	rec := &stream.Record{Key: []byte("acme/s1"), Value: []byte(strings.Repeat("<", 30<<10))}
	out := NewRejection("decider", rec, "R", "d").Output("aegis.rejected", rec, limit)
	var r Rejection
	if err := json.Unmarshal(out.Value, &r); err != nil || r.OriginalTruncated || r.Original != string(rec.Value) || len(out.Value) > 31<<10 {
		t.Fatalf("%v truncated=%v %d bytes", err, r.OriginalTruncated, len(out.Value))
	}
}
