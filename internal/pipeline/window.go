package pipeline

import (
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
// of the stages' state records.
type Window struct {
	Last   uint64   `json:"last_seq"`
	Recent []Recent `json:"recent,omitempty"`
	// plain is how many of the newest entries of Recent Add found to be
	// lower-case hex, which AppendJSON then writes without checking them
	// again (16 digests per state record, written once per transaction
	// that touches the session). Zero in a window decoded from a state
	// record: its entries are checked until they leave the window.
	plain int
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
	if len(w.Recent) == WindowSize {
		copy(w.Recent, w.Recent[1:])
		w.Recent = w.Recent[:WindowSize-1]
	}
	w.Recent = append(w.Recent, Recent{Seq: seq, Digest: digest})
	if plainDigest(digest) {
		w.plain = min(w.plain+1, len(w.Recent))
	} else {
		w.plain = 0
	}
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

// AppendJSON appends the window's JSON form (the one its struct tags
// describe) to b, without reflection: it is written once per touched
// session and transaction.
func (w *Window) AppendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"last_seq":`...)
	b = strconv.AppendUint(b, w.Last, 10)
	if len(w.Recent) > 0 {
		checked := len(w.Recent) - min(w.plain, len(w.Recent)) // Recent[checked:] came through Add as plain hex
		b = append(b, `,"recent":[`...)
		for i, r := range w.Recent {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"seq":`...)
			b = strconv.AppendUint(b, r.Seq, 10)
			b = append(b, `,"digest":`...)
			if i >= checked || plainDigest(r.Digest) {
				// What ContentDigest makes: no escaping or UTF-8
				// check needed.
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
		b = append(b, ']')
	}
	return append(b, '}'), nil
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
