package pipeline

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// CheckKey verifies that rec's key is "<tenant_id>/<session_id>" of ev and
// that rec sits on the partition the murmur2 partitioner gives that key
// among partitions. It returns a reason and detail, or "" when both hold.
func CheckKey(rec *stream.Record, ev *envelope.Event, partitions int32) (reason, detail string) {
	key := ev.Key()
	if !bytes.Equal(rec.Key, key) {
		return ReasonKeyMismatch, fmt.Sprintf("record key %q, event is of session %q", rec.Key, key)
	}
	if partitions > 0 {
		if want := stream.Partition(key, partitions); want != rec.Partition {
			return ReasonWrongPartition, fmt.Sprintf("key %q belongs on partition %d of %d, found on %d (producers must use the murmur2 partitioner)", key, want, partitions, rec.Partition)
		}
	}
	return "", ""
}

// ContentDigest identifies what a client sent: the first 128 bits, in hex,
// of the SHA-256 of the canonical event without the fields the pipeline adds
// (decision, prev_hash, hash). It only tells a session's retries from
// conflicting events, so 128 bits keep the per-session state small at no
// risk to anyone but the client itself.
// Two deliveries of the same event have the same digest whatever their key
// order or number spelling.
func ContentDigest(ev *envelope.Event, buf []byte) (string, []byte, error) {
	bare := *ev
	bare.Decision, bare.PrevHash, bare.Hash = nil, "", ""
	b, err := bare.AppendCanonical(buf[:0], false)
	if err != nil {
		return "", b, err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16]), b, nil
}
