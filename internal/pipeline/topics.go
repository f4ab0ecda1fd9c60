// Package pipeline holds what the decider and sealer stages share on top of
// the Kafka runtime: topic names and specs, the session-key and partition
// checks, the sequence window that makes retries idempotent, and rejection
// records.
package pipeline

import (
	"fmt"
	"strings"

	"aegis.dev/aegis/internal/stream"
)

// DefaultTopicPrefix starts every topic name unless configured otherwise.
const DefaultTopicPrefix = "aegis."

// DefaultPartitions is the partition count of topics Aegis creates.
const DefaultPartitions = 6

// Topics names the pipeline's topics. All of them are keyed by
// "<tenant_id>/<session_id>" and co-partitioned.
type Topics struct {
	Events       string // agents publish here
	Decided      string // events with decisions on proposals (decider → sealer)
	Decisions    string // decision replies for callers waiting on a proposal
	Sealed       string // the chained audit log
	Rejected     string // every rejected record, with its reason and original bytes
	DeciderState string // compacted: per-session decider state
	ChainHeads   string // compacted: per-session chain head
}

// NewTopics returns the topic names under prefix ("aegis." by default).
func NewTopics(prefix string) Topics {
	return Topics{
		Events:       prefix + "events",
		Decided:      prefix + "decided",
		Decisions:    prefix + "decisions",
		Sealed:       prefix + "sealed",
		Rejected:     prefix + "rejected",
		DeciderState: prefix + "decider-state",
		ChainHeads:   prefix + "chain-heads",
	}
}

// ShadowTopic names the topic that receives a shadow policy's
// disagreements (aegisd --shadow-policy); it exists only where one ran.
func ShadowTopic(prefix string) string { return prefix + "shadow-diffs" }

// ValidatePrefix checks that a topic prefix yields legal Kafka topic names.
func ValidatePrefix(prefix string) error {
	for _, c := range prefix {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-", c)) {
			return fmt.Errorf("topic prefix %q: character %q is not allowed in Kafka topic names", prefix, c)
		}
	}
	if len(prefix) > 200 {
		return fmt.Errorf("topic prefix %q is too long", prefix)
	}
	return nil
}

// MaxRecordBytes is the largest record the pipeline's topics carry when
// events may be up to maxEventBytes.
func MaxRecordBytes(maxEventBytes int) int { return 2*maxEventBytes + 64<<10 }

// StateRecordMaxBytes bounds one state record: the decider's session state
// at every bound of the reducer, with identifiers of the longest canonical
// form, is ~0.9 MB (TestWorstCaseStateRecordFitsItsTopic).
const StateRecordMaxBytes = 2 << 20

// StageMaxRecordBytes is the largest record a transactional stage
// produces: an output record or a state record.
func StageMaxRecordBytes(maxEventBytes int) int {
	return max(MaxRecordBytes(maxEventBytes), StateRecordMaxBytes)
}

// The size contract between the stages, for events of at most
// maxEventBytes: the decider accepts an event only if its canonical form
// (RFC 8785, which writes 1e15 as 1000000000000000) is at most
// maxEventBytes too, so the decided record it emits (that form plus the
// decision, well under 64 KiB) is at most DecidedMaxBytes, which the sealer
// reads; the sealed record adds prev_hash and hash, and the projector and
// every reader of the sealed topic take up to SealedMaxBytes. Each limit
// covers everything the stage before it can emit, so no record a stage
// accepted is refused downstream for its size.
func DecidedMaxBytes(maxEventBytes int) int { return maxEventBytes + 64<<10 }

// SealedMaxBytes is the largest sealed record (see DecidedMaxBytes).
func SealedMaxBytes(maxEventBytes int) int { return maxEventBytes + 128<<10 }

// Specs returns the specs of every topic with the given partition count:
// state topics compacted, the others deleted by retention. maxEventBytes is
// the largest event the pipeline accepts: topics are created to carry
// records of twice that (a rejection carries its original, a decided event
// its decision), so an oversized event reaches the decider and is rejected
// with TOO_LARGE and its reason instead of failing at the producer.
//
// The state topics carry records of at least StateRecordMaxBytes, whatever
// the event limit: a session's state is bounded by the reducer's bounds,
// not by the size of one event.
func (t Topics) Specs(partitions int32, maxEventBytes int) []stream.TopicSpec {
	configs := map[string]string{"max.message.bytes": fmt.Sprint(MaxRecordBytes(maxEventBytes))}
	stateConfigs := map[string]string{"max.message.bytes": fmt.Sprint(StageMaxRecordBytes(maxEventBytes))}
	spec := func(name string, c stream.Cleanup) stream.TopicSpec {
		if c == stream.CleanupCompact {
			return stream.TopicSpec{Name: name, Partitions: partitions, Cleanup: c, Configs: stateConfigs}
		}
		return stream.TopicSpec{Name: name, Partitions: partitions, Cleanup: c, Configs: configs}
	}
	return []stream.TopicSpec{
		spec(t.Events, stream.CleanupDelete),
		spec(t.Decided, stream.CleanupDelete),
		spec(t.Decisions, stream.CleanupDelete),
		spec(t.Sealed, stream.CleanupDelete),
		spec(t.Rejected, stream.CleanupDelete),
		spec(t.DeciderState, stream.CleanupCompact),
		spec(t.ChainHeads, stream.CleanupCompact),
	}
}
