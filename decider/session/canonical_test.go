package session

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"aegis.dev/aegis/schemas/canon"
)

// legacyCanonical is the definition AppendCanonical must match byte for
// byte: recorded input digests were computed over it.
func legacyCanonical(s *Snapshot) ([]byte, error) {
	raw, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return canon.Append(nil, raw)
}

func randomString(rng *rand.Rand) string {
	pieces := []string{"", "a", "Z", "search", "<", ">", "&", "\"", "\\", "\n", "\u2028", "\x01", "é", "\uE000", "\uFFFD", "😀", "\U0001F600x", "sha256:0f", "/", " "}
	var b []byte
	for range rng.IntN(4) {
		b = append(b, pieces[rng.IntN(len(pieces))]...)
	}
	return string(b)
}

func randomSnapshot(rng *rand.Rand) *Snapshot {
	s := New(randomString(rng), randomString(rng))
	n := func() int64 { return rng.Int64N(1<<53) - 1<<52 }
	s.Manifest = randomString(rng)
	s.LastSeq, s.FirstTsMs, s.LastTsMs = uint64(rng.Int64N(1<<53)), n(), n()
	s.Events, s.Steps, s.ModelCalls, s.ToolCalls, s.ConsecutiveErrors = n(), n(), n(), n(), n()
	s.Tainted, s.Terminated = rng.IntN(2) == 0, rng.IntN(2) == 0
	list := func() []string {
		switch rng.IntN(3) {
		case 0:
			return nil
		case 1:
			return []string{}
		}
		var l []string
		for range 1 + rng.IntN(4) {
			l = append(l, randomString(rng))
		}
		return l
	}
	s.TaintSources, s.SanitizerKeys, s.RecentTools = list(), list(), list()
	s.Handoff = Handoff{State: randomString(rng), From: randomString(rng), To: randomString(rng)}
	s.Loop = Loop{Detected: rng.IntN(2) == 0, Seq: uint64(rng.IntN(3))}
	switch rng.IntN(3) {
	case 0:
		s.Approvals = nil
	case 1:
		s.Approvals = map[string]Approval{}
	default:
		s.Approvals = map[string]Approval{}
		for range 1 + rng.IntN(5) {
			s.Approvals[randomString(rng)] = Approval{ToolName: randomString(rng), ArgsDigest: randomString(rng), State: randomString(rng),
				RequestedSeq: uint64(rng.IntN(1000)), RequestedTsMs: n()}
		}
	}
	switch rng.IntN(3) {
	case 0:
		s.Calls = nil
	case 1:
		s.Calls = map[string]int64{}
	default:
		s.Calls = map[string]int64{}
		for range 1 + rng.IntN(8) {
			s.Calls[randomString(rng)] = n()
		}
	}
	return s
}

func TestAppendCanonical(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range 20000 {
		s := randomSnapshot(rng)
		want, werr := legacyCanonical(s)
		got, gerr := s.AppendCanonical([]byte("prefix"))
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("case %d: error %v, legacy %v", i, gerr, werr)
		}
		if werr == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, got[6:], want)
		}
	}
}

func TestAppendCanonicalEdgeValues(t *testing.T) {
	for name, s := range map[string]*Snapshot{
		"zero":         {},
		"invalid utf8": {TenantID: "a\xffb", Calls: map[string]int64{"\xfe": 1}},
		"beyond 2^53":  {Events: 1<<53 + 1},
		"new":          New("acme", "s1"),
	} {
		want, werr := legacyCanonical(s)
		got, gerr := s.AppendCanonical(nil)
		if (werr == nil) != (gerr == nil) || !bytes.Equal(got, want) {
			t.Errorf("%s: got %s, %v; want %s, %v", name, got, gerr, want, werr)
		}
	}
}

func BenchmarkAppendCanonical(b *testing.B) {
	s := randomSnapshot(rand.New(rand.NewPCG(1, 1)))
	b.Run("direct", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf, _ = s.AppendCanonical(buf[:0])
		}
	})
	b.Run("marshal+canon", func(b *testing.B) {
		for b.Loop() {
			_, _ = legacyCanonical(s)
		}
	})
}
