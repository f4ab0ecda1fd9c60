// Package sealer is the single writer of each session's hash chain: it reads
// decided events, links them (schemas/chain), and writes the sealed log and
// the chain heads in one Kafka transaction with the consumed offsets, so a
// session has exactly one chain across crashes, restarts and rebalances.
package sealer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/statecache"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// StageName labels the sealer's metrics, logs and rejections.
const StageName = "sealer"

// Config configures the sealer stage.
type Config struct {
	Topics pipeline.Topics
	// Partitions is the partition count of the pipeline's topics.
	Partitions int32
	// MaxEventBytes bounds one decided event (default
	// envelope.DefaultMaxEventBytes plus room for the decision).
	MaxEventBytes int
	// MaxRecordBytes is the largest record the pipeline's topics carry
	// (default pipeline.MaxRecordBytes(envelope.DefaultMaxEventBytes));
	// it bounds the sealed records and the rejections the sealer writes.
	MaxRecordBytes int
	// State bounds the chain heads kept in memory.
	State pipeline.StateConfig
}

// HeadRecord is the value of a record on the chain-heads topic: the
// session's chain head, plus the sequence window the sealer uses to drop
// retried events. An export of the topic is a valid `aegisctl verify
// --heads` file.
type HeadRecord struct {
	chain.Head
	Window pipeline.Window `json:"window"`
}

// Stage is the sealer stage.
type Stage struct {
	cfg     Config
	metrics *pipeline.Metrics
	state   *pipeline.StateMetrics
	log     *slog.Logger
}

// New returns the sealer stage. reg and log may be nil.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) *Stage {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxEventBytes <= 0 {
		cfg.MaxEventBytes = pipeline.DecidedMaxBytes(envelope.DefaultMaxEventBytes)
	}
	if cfg.MaxRecordBytes <= 0 {
		cfg.MaxRecordBytes = pipeline.MaxRecordBytes(envelope.DefaultMaxEventBytes)
	}
	return &Stage{cfg: cfg, metrics: pipeline.NewMetrics(reg, StageName), state: pipeline.NewStateMetrics(reg, StageName), log: log.With("stage", StageName)}
}

// sealedExtraBytes is what a sealed record may add to its decided record
// (prev_hash and hash): pipeline.SealedMaxBytes - pipeline.DecidedMaxBytes.
const sealedExtraBytes = 64 << 10

// sealedLimit is the largest sealed record value the stage emits with a key
// of keyBytes: what the sealed topic's readers take, and no more than the
// topic itself carries, which is less when the event limit is under 64 KiB.
func (s *Stage) sealedLimit(keyBytes int) int {
	return min(s.cfg.MaxEventBytes+sealedExtraBytes, s.cfg.MaxRecordBytes-keyBytes-pipeline.RecordOverhead)
}

// TransactConfig returns the runtime configuration of the stage's topics;
// the caller sets brokers, group and transactional ID.
func (s *Stage) TransactConfig() stream.TransactConfig {
	t := s.cfg.Topics
	return stream.TransactConfig{Input: t.Decided, State: t.ChainHeads, Outputs: []string{t.Sealed, t.Rejected}, Partitions: s.cfg.Partitions}
}

// NewProcessor returns the processor of one decided partition.
func (s *Stage) NewProcessor(partition int32) stream.Processor {
	return &processor{stage: s, partition: partition, tally: s.metrics.NewTally(),
		heads: pipeline.NewStateCache(s.cfg.State, StageName, partition, s.cfg.Partitions, headCodec)}
}

var headCodec = statecache.Codec[HeadRecord]{
	Encode: func(h *HeadRecord) ([]byte, error) { return h.appendJSON(nil) },
	Decode: decodeHead,
}

// appendJSON appends the head record's JSON (the fields and order of its
// struct tags) without reflection: it is written once per touched session
// and transaction.
func (h *HeadRecord) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"tenant_id":`...)
	b, err := canon.AppendString(b, h.TenantID)
	if err == nil {
		b = append(b, `,"session_id":`...)
		b, err = canon.AppendString(b, h.SessionID)
	}
	if err != nil {
		return b, fmt.Errorf("sealer: head of %s/%s: %w", h.TenantID, h.SessionID, err)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, h.Seq, 10)
	b = append(b, `,"hash":"`...)
	b = append(b, h.Hash...) // lower-case hex (chain.Link, decodeHead): verbatim in JSON
	b = append(b, `","window":`...)
	if b, err = h.Window.AppendJSON(b); err != nil {
		return b, err
	}
	return append(b, '}'), nil
}

// decodeHead parses and checks the head record of key.
func decodeHead(key string, value []byte) (*HeadRecord, error) {
	var h HeadRecord
	if err := json.Unmarshal(value, &h); err != nil {
		return nil, err
	}
	// A head is written once a session's first record is sealed: a seq
	// of 0 would link that record onto this hash instead of the genesis.
	if h.Seq == 0 || h.Seq != h.Window.Last || len(h.Hash) != len(chain.Genesis) || key != h.TenantID+"/"+h.SessionID {
		return nil, fmt.Errorf("inconsistent head record (seq %d, window %d)", h.Seq, h.Window.Last)
	}
	if !chain.IsHash(h.Hash) {
		// Not a hash chain.Link wrote: chained on, it would break the
		// session's chain, and written back verbatim (appendJSON) a
		// quote or backslash would make the head record unreadable.
		return nil, fmt.Errorf("head hash %q is not lower-case hex", h.Hash)
	}
	return &h, nil
}

type processor struct {
	stage     *Stage
	partition int32
	heads     *statecache.Cache[HeadRecord]
	tally     *pipeline.Tally // counted once the batch commits
	counted   statecache.Stats
	buf       []byte
}

func (p *processor) Restore(key, value []byte) error {
	h, err := decodeHead(string(key), value)
	if err != nil {
		return fmt.Errorf("sealer: head of %q on partition %d: %w", key, p.partition, err)
	}
	if err := p.heads.Put(string(key), h); err != nil {
		return err
	}
	return p.heads.SetSize(key, len(value)) // restored heads count toward --state-bytes too
}

// Close releases the processor's spill file.
func (p *processor) Close() error { return p.heads.Close() }

// Committed counts the committed batch's records (stream.Committer).
func (p *processor) Committed() { p.tally.Flush() }

func (p *processor) Process(_ context.Context, batch []*stream.Record, emit func(stream.Output)) error {
	s := p.stage
	t := s.cfg.Topics
	dec := envelope.Decoder{Sealed: true, MaxBytes: s.cfg.MaxEventBytes}
	var touched []string
	seen := make(map[string]bool)
	reject := func(rec *stream.Record, ev *envelope.Event, reason, detail string, expected uint64) {
		r := pipeline.NewRejection(StageName, rec, reason, detail)
		if ev != nil {
			r.WithEvent(ev)
		}
		r.Expected = expected
		p.tally.Reject(reason)
		emit(r.Output(t.Rejected, rec, s.cfg.MaxRecordBytes))
	}
	for _, rec := range batch {
		ev, err := dec.Decode(rec.Value)
		if err != nil {
			reject(rec, nil, envelope.Code(err), err.Error(), 0)
			continue
		}
		if reason, detail := pipeline.CheckKey(rec, ev, s.cfg.Partitions); reason != "" {
			reject(rec, ev, reason, detail, 0)
			continue
		}
		switch {
		case ev.Type == envelope.ToolCallProposed && ev.Decision == nil:
			reject(rec, ev, pipeline.ReasonMissingDecision, "a proposal must be decided before it is sealed", 0)
			continue
		case ev.Type == envelope.ToolCallProposed && ev.Decision.Outcome == "":
			// The decoder reads every member of a decision as
			// optional, and the canonical form writes a missing one
			// as "": sealed, {} would read as a decision with an
			// empty outcome.
			reject(rec, ev, pipeline.ReasonMissingDecision, "the proposal's decision has no outcome", 0)
			continue
		case ev.Type != envelope.ToolCallProposed && ev.Decision != nil:
			reject(rec, ev, pipeline.ReasonUnexpectedDecision, "only proposals carry decisions", 0)
			continue
		}
		key := string(rec.Key)
		h, err := p.heads.Get(key)
		if err != nil {
			return fmt.Errorf("sealer: %w", err)
		}
		var digest string
		if digest, p.buf, err = pipeline.ContentDigest(ev, p.buf); err != nil {
			return fmt.Errorf("sealer: content digest of %s/%d: %w", key, ev.Seq, err)
		}
		var window pipeline.Window
		var head *chain.Head
		if h != nil {
			window, head = h.Window, &h.Head
		}
		switch verdict, detail := window.Check(ev.Seq, digest); verdict {
		case pipeline.Duplicate:
			p.tally.Duplicate()
			continue
		case pipeline.Accept:
		default:
			reject(rec, ev, verdict.Reason(), detail, window.Last+1)
			continue
		}
		next, err := chain.Link(head, ev)
		if err != nil {
			return fmt.Errorf("sealer: %w", err)
		}
		if p.buf, err = ev.AppendCanonical(p.buf[:0], true); err != nil {
			return fmt.Errorf("sealer: encode %s seq %d: %w", key, ev.Seq, err)
		}
		if limit := s.sealedLimit(len(rec.Key)); len(p.buf) > limit {
			// Only a record the decider did not write can grow this
			// much once canonical (1e15 is 1000000000000000): the
			// sealed topic and its readers take no more. The head
			// does not move.
			reject(rec, ev, envelope.CodeTooLarge, fmt.Sprintf("the sealed record would be %d bytes, limit is %d", len(p.buf), limit), 0)
			continue
		}
		window.Add(ev.Seq, digest)
		if err := p.heads.Put(key, &HeadRecord{Head: next, Window: window}); err != nil {
			return fmt.Errorf("sealer: %w", err)
		}
		if !seen[key] {
			seen[key] = true
			touched = append(touched, key)
		}
		emit(stream.Output{Topic: t.Sealed, Partition: rec.Partition, Key: rec.Key, Value: append([]byte(nil), p.buf...)})
		p.tally.Accept()
	}
	defer func() { p.counted = s.state.CountState(p.heads.Stats(), p.counted) }()
	for _, key := range touched {
		h, err := p.heads.Get(key)
		if err != nil {
			return fmt.Errorf("sealer: %w", err)
		}
		if p.buf, err = h.appendJSON(p.buf[:0]); err != nil {
			return fmt.Errorf("sealer: encode head of %s: %w", key, err)
		}
		v := bytes.Clone(p.buf)
		emit(stream.Output{Topic: t.ChainHeads, Partition: p.partition, Key: []byte(key), Value: v})
		if err := p.heads.SetSize([]byte(key), len(v)); err != nil {
			return fmt.Errorf("sealer: %w", err)
		}
	}
	return nil
}
