package pipeline

import (
	"encoding/json"
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
	// decision.
	ReasonMissingDecision = "MISSING_DECISION"
	// ReasonUnexpectedDecision: a non-proposal event carries a decision.
	ReasonUnexpectedDecision = "UNEXPECTED_DECISION"
)

// Rejection is the value of a record on the rejected topic: why a record was
// not accepted, where it came from, and its original bytes (as a string when
// they are valid UTF-8, base64 otherwise), so nothing is lost.
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
}

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
func (r *Rejection) Output(topic string, rec *stream.Record) stream.Output {
	b, err := json.Marshal(r)
	if err != nil {
		// Only plain strings and integers: cannot fail.
		panic(err)
	}
	return stream.Output{Topic: topic, Partition: rec.Partition, Key: rec.Key, Value: b}
}
