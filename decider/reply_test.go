package decider

import (
	"encoding/json"
	"math/rand"
	"testing"

	"aegis.dev/aegis/schemas/envelope"
)

func TestReplyAppendJSONMatchesMarshal(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	pieces := []string{"", "a", "search", "<", ">", "&", `"`, `\`, "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x01", "\x1f", "\x7f", "é", "\u2028", "\u2029", "\u2027", "\U0001F600", "\xff", "\xe2\x80", "\xed\xa0\x80", "sha256:0f"}
	str := func() string {
		s := ""
		for range r.Intn(6) {
			s += pieces[r.Intn(len(pieces))]
		}
		return s
	}
	num := func() int64 {
		switch r.Intn(4) {
		case 0:
			return 0
		case 1:
			return -r.Int63()
		}
		return r.Int63n(1 << 40)
	}
	for range 100000 {
		rep := Reply{TenantID: str(), SessionID: str(), Seq: r.Uint64() >> uint(r.Intn(64)), CallID: str(), ToolName: str(), ContentDigest: str(),
			Decision: envelope.Decision{Outcome: envelope.Outcome(str()), Reason: str(), Constraints: envelope.Constraints{MaxOutputBytes: num(), TimeoutMs: num()},
				PolicyRevision: str(), ManifestDigest: str(), InputDigest: str()}}
		want, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		if got := rep.AppendJSON([]byte("prefix")); string(got[6:]) != string(want) || string(got[:6]) != "prefix" {
			t.Fatalf("%#v:\n got %s\nwant %s", rep, got, want)
		}
	}
}
