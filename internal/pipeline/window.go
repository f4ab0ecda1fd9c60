package pipeline

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"aegis.dev/aegis/schemas/canon"
)

// WindowSize is how many recent (seq, content digest) pairs a session keeps
// to tell a retried event (dropped) from a conflicting one (rejected).
const WindowSize = 16

// Verdict is what to do with an event given its session's window.
type Verdict int

// Verdicts of Window.Check.
const (
	Accept    Verdict = iota // the next seq: process it
	Duplicate                // same seq, same content: a retry, drop it
	Conflict                 // same seq, other content: reject SEQ_CONFLICT
	Gap                      // beyond the next seq: reject SEQ_GAP
	Stale                    // older than the window: reject SEQ_STALE
)

// Recent is one accepted event of a session.
type Recent struct {
	Seq    uint64 `json:"seq"`
	Digest string `json:"digest"`
}

// Window is the sequence state of a session: the last accepted seq and the
// content digests of the most recent accepted events. Its JSON form is part
// of the stages' state records (see AppendJSON).
type Window struct {
	Last   uint64
	Recent []Recent
}

// Check classifies seq with content digest against the window. Sequence
// rule: seqs are dense from 1; the next one is accepted, a repeat with the
// same content is a duplicate, anything else is rejected at once. Holding
// early events back would make the outcome depend on timing, not on the
// log, and Kafka keeps a session's records in order on its partition anyway.
func (w *Window) Check(seq uint64, digest string) (Verdict, string) {
	switch {
	case seq == w.Last+1:
		return Accept, ""
	case seq > w.Last+1:
		return Gap, fmt.Sprintf("seq %d, expected %d", seq, w.Last+1)
	}
	for _, r := range w.Recent {
		if r.Seq == seq {
			if r.Digest == digest {
				return Duplicate, ""
			}
			return Conflict, fmt.Sprintf("seq %d was already accepted with different content (digest %s, this event %s)", seq, r.Digest, digest)
		}
	}
	return Stale, fmt.Sprintf("seq %d is older than the last %d accepted events (last seq %d)", seq, WindowSize, w.Last)
}

// Add records seq (which Check accepted) with its content digest.
func (w *Window) Add(seq uint64, digest string) {
	w.Last = seq
	if n := len(w.Recent); n >= WindowSize {
		copy(w.Recent, w.Recent[n-WindowSize+1:])
		w.Recent = w.Recent[:WindowSize-1]
	}
	w.Recent = append(w.Recent, Recent{Seq: seq, Digest: digest})
}

// Reason maps a rejecting verdict to its reason code.
func (v Verdict) Reason() string {
	switch v {
	case Conflict:
		return ReasonSeqConflict
	case Gap:
		return ReasonSeqGap
	case Stale:
		return ReasonSeqStale
	}
	return ""
}

// digestBytes is the length of a content digest (ContentDigest: the first
// 16 bytes of a SHA-256, in lower-case hex).
const digestBytes = 16

// AppendJSON appends the window's JSON form to b, without reflection: it is
// written once per touched session and transaction. The usual form is
//
//	{"last_seq":42,"digests":"<base64>"}
//
// where digests is the standard base64 of the binary content digests of
// seqs last_seq-n+1 … last_seq, oldest first, 16 bytes each. The digests are
// most of a state record and are random, so Kafka's compression cannot
// shrink them; binary in base64 is two thirds the size of hex, and the seqs
// are implied. A window whose digests are not all ContentDigest's lower-case
// hex, or whose seqs are not consecutive (only possible in a window decoded
// from an earlier record), is written entry by entry instead, the form
// earlier versions wrote for every window:
//
//	{"last_seq":42,"recent":[{"seq":41,"digest":"…"},{"seq":42,"digest":"…"}]}
//
// UnmarshalJSON reads both.
func (w *Window) AppendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"last_seq":`...)
	b = strconv.AppendUint(b, w.Last, 10)
	if len(w.Recent) == 0 {
		return append(b, '}'), nil
	}
	var bin [WindowSize * digestBytes]byte
	if n, ok := w.binary(&bin); ok {
		b = append(b, `,"digests":"`...)
		b = base64.StdEncoding.AppendEncode(b, bin[:n])
		return append(b, `"}`...), nil
	}
	b = append(b, `,"recent":[`...)
	for i, r := range w.Recent {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"seq":`...)
		b = strconv.AppendUint(b, r.Seq, 10)
		b = append(b, `,"digest":`...)
		if plainDigest(r.Digest) {
			// JSON and RFC 8785 write lower-case hex verbatim.
			b = append(b, '"')
			b = append(b, r.Digest...)
			b = append(b, '"')
		} else {
			var err error
			if b, err = canon.AppendString(b, r.Digest); err != nil {
				return b, fmt.Errorf("pipeline: window digest: %w", err)
			}
		}
		b = append(b, '}')
	}
	return append(b, "]}"...), nil
}

// MarshalJSON is AppendJSON.
func (w *Window) MarshalJSON() ([]byte, error) { return w.AppendJSON(nil) }

// binary decodes the digests into bin and returns their length in bytes, if
// the window has the compact form: at most WindowSize entries with
// consecutive seqs ending at Last, each digest digestBytes of lower-case hex.
func (w *Window) binary(bin *[WindowSize * digestBytes]byte) (int, bool) {
	n := len(w.Recent)
	if n > WindowSize || uint64(n) > w.Last {
		return 0, false
	}
	first := w.Last - uint64(n) + 1
	for i, r := range w.Recent {
		if r.Seq != first+uint64(i) || len(r.Digest) != 2*digestBytes {
			return 0, false
		}
		var bad byte
		out := bin[i*digestBytes : (i+1)*digestBytes]
		for j := range out {
			hi, lo := hexValue[r.Digest[2*j]], hexValue[r.Digest[2*j+1]]
			bad |= hi | lo
			out[j] = hi<<4 | lo&0x0f
		}
		if bad&0x80 != 0 {
			return 0, false
		}
	}
	return n * digestBytes, true
}

// UnmarshalJSON reads either form AppendJSON writes.
func (w *Window) UnmarshalJSON(b []byte) error {
	var raw struct {
		Last    uint64   `json:"last_seq"`
		Recent  []Recent `json:"recent"`
		Digests *string  `json:"digests"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw.Digests == nil {
		// The older form, written by hand or by earlier versions: keep the
		// newest WindowSize entries.
		if n := len(raw.Recent); n > WindowSize {
			raw.Recent = raw.Recent[n-WindowSize:]
		}
		*w = Window{Last: raw.Last, Recent: raw.Recent}
		return nil
	}
	if raw.Recent != nil {
		return errors.New("pipeline: window has both digests and recent")
	}
	bin, err := base64.StdEncoding.Strict().DecodeString(*raw.Digests)
	if err != nil {
		return fmt.Errorf("pipeline: window digests: %w", err)
	}
	n := len(bin) / digestBytes
	if len(bin)%digestBytes != 0 || n > WindowSize || uint64(n) > raw.Last {
		return fmt.Errorf("pipeline: window digests: %d bytes for last seq %d, want a multiple of %d, at most %d digests and no more than last_seq",
			len(bin), raw.Last, digestBytes, WindowSize)
	}
	w.Last = raw.Last
	w.Recent = make([]Recent, n, max(n, WindowSize))
	first := raw.Last - uint64(n) + 1
	for i := range n {
		w.Recent[i] = Recent{Seq: first + uint64(i), Digest: hex.EncodeToString(bin[i*digestBytes : (i+1)*digestBytes])}
	}
	return nil
}

// plainDigest reports whether d is lower-case hex, which JSON and RFC 8785
// write verbatim between quotes.
func plainDigest(d string) bool {
	var bad byte
	for i := 0; i < len(d); i++ {
		bad |= notLowerHex[d[i]]
	}
	return bad == 0
}

// notLowerHex is 1 for every byte that is not 0-9 or a-f: one load and an
// OR per byte, with no branch for the CPU to mispredict.
var notLowerHex = func() (t [256]byte) {
	for i := range t {
		if (i < '0' || i > '9') && (i < 'a' || i > 'f') {
			t[i] = 1
		}
	}
	return t
}()

// hexValue is the value of a lower-case hex digit, or 0x80 for any other
// byte.
var hexValue = func() (t [256]byte) {
	for i := range t {
		switch {
		case i >= '0' && i <= '9':
			t[i] = byte(i - '0')
		case i >= 'a' && i <= 'f':
			t[i] = byte(i - 'a' + 10)
		default:
			t[i] = 0x80
		}
	}
	return t
}()
