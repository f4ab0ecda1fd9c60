package pipeline

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// Rejection reasons of the pipeline, beyond the decoder's codes
// (envelope.Code*), which are used as reasons as they are.
const (
	// ReasonKeyMismatch: the record key is not "<tenant_id>/<session_id>"
	// of its value.
	ReasonKeyMismatch = "KEY_MISMATCH"
	// ReasonWrongPartition: the record is not on the partition the murmur2
	// partitioner assigns to its key, so another instance owns its session.
	ReasonWrongPartition = "WRONG_PARTITION"
	// ReasonSeqConflict: the seq was already accepted with other content.
	ReasonSeqConflict = "SEQ_CONFLICT"
	// ReasonSeqGap: the seq is beyond the session's next one.
	ReasonSeqGap = "SEQ_GAP"
	// ReasonSeqStale: the seq is older than the duplicate-detection window,
	// so its content cannot be compared; it was accepted long ago.
	ReasonSeqStale = "SEQ_STALE"
	// ReasonMissingDecision: a proposal reached the sealer without a
	// decision, or with one that has no outcome.
	ReasonMissingDecision = "MISSING_DECISION"
	// ReasonUnexpectedDecision: a non-proposal event carries a decision.
	ReasonUnexpectedDecision = "UNEXPECTED_DECISION"
	// ReasonApprovalUnauthenticated: an APPROVAL_DECIDED without a valid
	// grant (internal/grant), refused by a decider that has the approval
	// secret: nobody holding the secret recorded this decision for this
	// session.
	ReasonApprovalUnauthenticated = "APPROVAL_UNAUTHENTICATED"
	// ReasonManifestMismatch: an event names another manifest than the
	// one its session was opened with (its first event's). A session's
	// manifest never changes; refusing the event keeps a key bound to one
	// manifest from acting in a session opened under another.
	ReasonManifestMismatch = "MANIFEST_MISMATCH"
)

// Rejection is the value of a record on the rejected topic: why a record was
// not accepted, where it came from, and its original bytes (as a string when
// they are valid UTF-8, base64 otherwise), so nothing is lost.
//
// A rejection must fit in one record of the rejected topic, which carries
// records no larger than the input topic's. Quoting can make the original
// up to six times larger (a control byte becomes \u00XX), so when the whole
// rejection would not fit, it carries the original's first
// TruncatedOriginalBytes bytes instead, with OriginalTruncated set and the
// length and SHA-256 of the whole: the full record stays on its input topic
// at Topic/Partition/Offset for as long as that topic keeps it.
type Rejection struct {
	V         int    `json:"v"`
	Stage     string `json:"stage"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail"`
	TenantID  string `json:"tenant_id,omitempty"`
	SessionID string `json:"session_id,omitempty"`
	Seq       uint64 `json:"seq,omitempty"`
	// Expected is the seq the session expected next, for sequence
	// rejections.
	Expected       uint64 `json:"expected_seq,omitempty"`
	Topic          string `json:"topic"`
	Partition      int32  `json:"partition"`
	Offset         int64  `json:"offset"`
	Key            string `json:"key,omitempty"`
	Original       string `json:"original,omitempty"`
	OriginalBase64 []byte `json:"original_base64,omitempty"`
	// OriginalTruncated reports that Original (or OriginalBase64) holds
	// only a prefix of the record; OriginalBytes and OriginalSHA256
	// (lower-case hex) describe the whole record.
	OriginalTruncated bool   `json:"original_truncated,omitempty"`
	OriginalBytes     int    `json:"original_bytes,omitempty"`
	OriginalSHA256    string `json:"original_sha256,omitempty"`
}

// TruncatedOriginalBytes is how much of the original a rejection keeps when
// the whole would not fit in a record.
const TruncatedOriginalBytes = 4 << 10

// TruncatedDetailBytes is how much of the detail such a rejection keeps.
const TruncatedDetailBytes = 1 << 10

// RecordOverhead bounds what a record adds to its key and value in a batch
// of one (batch header, lengths, timestamp and offset deltas).
const RecordOverhead = 1 << 10

// NewRejection describes rec as rejected by stage for reason.
func NewRejection(stage string, rec *stream.Record, reason, detail string) *Rejection {
	r := &Rejection{V: 1, Stage: stage, Reason: reason, Detail: detail, Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset}
	if utf8.Valid(rec.Key) {
		r.Key = string(rec.Key)
	}
	if utf8.Valid(rec.Value) {
		r.Original = string(rec.Value)
	} else {
		r.OriginalBase64 = rec.Value
	}
	return r
}

// WithEvent fills the session fields from a decoded event.
func (r *Rejection) WithEvent(ev *envelope.Event) *Rejection {
	r.TenantID, r.SessionID, r.Seq = ev.TenantID, ev.SessionID, ev.Seq
	return r
}

// Output returns the rejection as a record for topic, on the input
// record's partition and with its key, so rejections stay co-partitioned.
// maxRecordBytes is the largest record the topic carries (MaxRecordBytes):
// a rejection that would be larger keeps only a prefix of the original, and
// of the key when that alone is too large. Zero means no bound.
func (r *Rejection) Output(topic string, rec *stream.Record, maxRecordBytes int) stream.Output {
	key := rec.Key
	b := r.encode()
	if maxRecordBytes > 0 && len(key)+len(b)+RecordOverhead > maxRecordBytes {
		t := *r
		if len(t.Detail) > TruncatedDetailBytes {
			// A detail may quote input (a key, an event type), which
			// JSON can blow up six times (\u0001).
			t.Detail = string(TrimPartialRune([]byte(t.Detail[:TruncatedDetailBytes]))) + "… (detail truncated)"
		}
		t.truncate(rec.Value)
		if len(t.Key) > TruncatedOriginalBytes {
			t.Key = ""
		}
		if len(key) > TruncatedOriginalBytes {
			// No pipeline key is this long (tenant and session ids are
			// bounded); the partition, not the key, places the record.
			key = key[:TruncatedOriginalBytes]
		}
		b = t.encode()
	}
	return stream.Output{Topic: topic, Partition: rec.Partition, Key: key, Value: b}
}

// truncate replaces the original with a prefix of value and describes the
// whole.
func (r *Rejection) truncate(value []byte) {
	sum := sha256.Sum256(value)
	r.OriginalTruncated, r.OriginalBytes, r.OriginalSHA256 = true, len(value), hex.EncodeToString(sum[:])
	prefix := value[:min(len(value), TruncatedOriginalBytes)]
	// The detail says it too: it reaches the audit store's
	// rejected_records, which has no columns for the fields above.
	r.Detail += fmt.Sprintf(" (original truncated: first %d of %d bytes kept, sha256 %s)", len(prefix), len(value), r.OriginalSHA256)
	r.Original, r.OriginalBase64 = "", nil
	if p := TrimPartialRune(prefix); utf8.Valid(p) {
		r.Original = string(p)
	} else {
		r.OriginalBase64 = prefix
	}
}

// TrimPartialRune drops an incomplete UTF-8 sequence cut at the end of p
// (a prefix cut at a byte bound).
func TrimPartialRune(p []byte) []byte {
	for i := 1; i < utf8.UTFMax && i <= len(p); i++ {
		if c := p[len(p)-i]; utf8.RuneStart(c) {
			if !utf8.FullRune(p[len(p)-i:]) {
				return p[:len(p)-i]
			}
			break
		}
	}
	return p
}

// encode writes r as JSON without HTML escaping, which would turn each of
// < > & into six bytes.
func (r *Rejection) encode() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		// Only plain strings and integers: cannot fail.
		panic(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
