package canon

import (
	"crypto/sha256"
	"testing"

	"github.com/gowebpki/jcs"
)

// benchEvent is a realistic agent event (about 300 bytes) with its keys in
// non-canonical order at every level, as a client would publish it.
const benchEvent = `{"v":1,"tenant_id":"acme","session_id":"s-42","seq":7,"ts_unix_ms":1767225600123,` +
	`"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"web_fetch","call_id":"c-7",` +
	`"args":{"url":"https://api.example.com/v1/items?limit=10","domain":"api.example.com",` +
	`"timeout":2.5,"headers":{"accept":"application/json"}}}}`

// BenchmarkCanonSum300B measures canonicalization plus SHA-256 of
// benchEvent, the work the sealer does per event.
func BenchmarkCanonSum300B(b *testing.B) {
	src := []byte(benchEvent)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Sum(src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCanonAppend300B measures canonicalization alone.
func BenchmarkCanonAppend300B(b *testing.B) {
	src := []byte(benchEvent)
	dst := make([]byte, 0, 2*len(src))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = Append(dst[:0], src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA256Only300B is the floor: hashing the same number of bytes
// without canonicalizing them.
func BenchmarkSHA256Only300B(b *testing.B) {
	src := []byte(benchEvent)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		_ = sha256.Sum256(src)
	}
}

// BenchmarkGowebpkiJCS300B is the same work done with
// github.com/gowebpki/jcs, for comparison.
func BenchmarkGowebpkiJCS300B(b *testing.B) {
	src := []byte(benchEvent)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		out, err := jcs.Transform(src)
		if err != nil {
			b.Fatal(err)
		}
		_ = sha256.Sum256(out)
	}
}
