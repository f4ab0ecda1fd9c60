package decider

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/statecache"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// StageName labels the decider's metrics, logs and rejections.
const StageName = "decider"

// Reply is the value of a record on the decisions topic: the decision of
// one proposal, for callers waiting on it. It is also the line format of
// `aegisctl decide --events`.
type Reply struct {
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	Seq       uint64 `json:"seq"`
	CallID    string `json:"call_id"`
	ToolName  string `json:"tool_name"`
	// ContentDigest is the proposal's pipeline.ContentDigest: what tells
	// it from another proposal at the same seq with the same call_id. The
	// decider always sets it; a gateway hands a reply only to the request
	// that published that content.
	ContentDigest string `json:"content_digest,omitempty"`
	envelope.Decision
}

// NewReply returns the reply for a decided proposal, as the decider writes
// it to the decisions topic.
func NewReply(ev *envelope.Event) Reply {
	tc, _ := ev.ToolCall()
	// A decoded event always has a canonical form.
	digest, _, _ := pipeline.ContentDigest(ev, nil)
	return Reply{TenantID: ev.TenantID, SessionID: ev.SessionID, Seq: ev.Seq, CallID: tc.CallID, ToolName: tc.ToolName, ContentDigest: digest, Decision: *ev.Decision}
}

// StageConfig configures the decider stage.
type StageConfig struct {
	Topics pipeline.Topics
	// Partitions is the partition count of the pipeline's topics, used to
	// check that each record sits on its key's partition.
	Partitions int32
	// MaxEventBytes bounds one event (default envelope.DefaultMaxEventBytes).
	MaxEventBytes int
	// Shadow, if set, decides every proposal a second time, on the same
	// snapshot, with a candidate policy. It never changes the outcome: a
	// disagreement (other outcome, reason or constraints) is counted and
	// written as a ShadowDiff to ShadowTopic, which must be co-partitioned
	// with the events topic (docs/replay.md#shadow-mode).
	Shadow      *Engine
	ShadowTopic string
	// State bounds the session snapshots kept in memory.
	State pipeline.StateConfig
	// ApprovalSecret, when set, is the secret the gateway signs approvals
	// with: an APPROVAL_DECIDED without a valid grant (internal/grant) is
	// rejected with pipeline.ReasonApprovalUnauthenticated before the
	// sequence rule, so it takes no seq, changes no state and is never
	// sealed. Without it every APPROVAL_DECIDED is honoured, as whoever
	// can write the events topic recorded it.
	ApprovalSecret []byte
}

// ShadowDiff is the value of a record on the shadow topic: a proposal the
// shadow policy would have decided differently.
type ShadowDiff struct {
	TenantID  string             `json:"tenant_id"`
	SessionID string             `json:"session_id"`
	Seq       uint64             `json:"seq"`
	CallID    string             `json:"call_id"`
	ToolName  string             `json:"tool_name"`
	Active    *envelope.Decision `json:"active"`
	Shadow    *envelope.Decision `json:"shadow"`
}

// Stage is the decider stage: for each owned partition of the events topic
// it keeps every session's snapshot and sequence window, decides proposals,
// and writes decided events, decision replies, rejections and its state in
// one transaction with the consumed offsets.
type Stage struct {
	engine  *Engine
	cfg     StageConfig
	metrics *pipeline.Metrics
	state   *pipeline.StateMetrics
	outcome *prometheus.CounterVec
	shadow  *prometheus.CounterVec
	reasons reasonLabels
	log     *slog.Logger
}

// maxReasonLabels bounds the reason codes of the decision metrics beyond
// the built-in ones: a policy carries its own codes through, even codes
// built from input, and a series per code would then grow without bound.
// Reasons past the first maxReasonLabels are counted under otherReason.
const maxReasonLabels = 64

// otherReason labels the reasons beyond maxReasonLabels.
const otherReason = "other"

// reasonLabels maps a decision's reason to its metric label.
type reasonLabels struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

func (l *reasonLabels) label(reason string) string {
	switch reason {
	case envelope.ReasonOK, envelope.ReasonPermissionUndeclared, envelope.ReasonEgressDeny, envelope.ReasonBudgetExceeded,
		envelope.ReasonLoopDetected, envelope.ReasonTaintedToHighRisk, envelope.ReasonExecDeny, envelope.ReasonApprovalRequired,
		envelope.ReasonManifestUnknown, envelope.ReasonPolicyError, envelope.ReasonApprovalDenied, envelope.ReasonApprovalExpired,
		envelope.ReasonInvalidProposal, envelope.ReasonSessionTerminated:
		return reason
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[reason]; ok {
		return reason
	}
	if len(l.seen) >= maxReasonLabels {
		return otherReason
	}
	if l.seen == nil {
		l.seen = make(map[string]struct{})
	}
	l.seen[reason] = struct{}{}
	return reason
}

// NewStage returns the decider stage. reg and log may be nil.
func NewStage(engine *Engine, cfg StageConfig, reg prometheus.Registerer, log *slog.Logger) *Stage {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stage{engine: engine, cfg: cfg, metrics: pipeline.NewMetrics(reg, StageName), state: pipeline.NewStateMetrics(reg, StageName), log: log.With("stage", StageName),
		outcome: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_decider_decisions_total", Help: "Decisions made, by outcome and reason.",
		}, []string{"outcome", "reason"})}
	if reg != nil {
		s.outcome = pipeline.Register(reg, s.outcome)
	}
	if cfg.Shadow != nil {
		s.shadow = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_decider_shadow_disagreements_total", Help: "Proposals the shadow policy decided differently, by active and shadow reason.",
		}, []string{"active_reason", "shadow_reason"})
		if reg != nil {
			s.shadow = pipeline.Register(reg, s.shadow)
		}
	}
	return s
}

// TransactConfig returns the runtime configuration of the stage's topics;
// the caller sets brokers, group and transactional ID.
func (s *Stage) TransactConfig() stream.TransactConfig {
	t := s.cfg.Topics
	outputs := []string{t.Decided, t.Decisions, t.Rejected}
	if s.cfg.Shadow != nil {
		outputs = append(outputs, s.cfg.ShadowTopic)
	}
	return stream.TransactConfig{Input: t.Events, State: t.DeciderState, Outputs: outputs, Partitions: s.cfg.Partitions}
}

// NewProcessor returns the processor of one events partition.
func (s *Stage) NewProcessor(partition int32) stream.Processor {
	return &processor{stage: s, partition: partition, tally: s.metrics.NewTally(),
		sessions: pipeline.NewStateCache(s.cfg.State, StageName, partition, s.cfg.Partitions, stateCodec)}
}

var stateCodec = statecache.Codec[deciderState]{
	Encode: func(st *deciderState) ([]byte, error) { return st.appendJSON(nil) },
	Decode: decodeState,
}

// appendJSON appends the state record's JSON (the snapshot in canonical
// form, then the window) without reflection; decodeState reads it back.
func (st *deciderState) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"snapshot":`...)
	b, err := st.Snapshot.AppendCanonical(b)
	if err != nil {
		return b, err
	}
	b = append(b, `,"window":`...)
	if b, err = st.Window.AppendJSON(b); err != nil {
		return b, err
	}
	return append(b, '}'), nil
}

// decodeState parses and checks the state record of key.
func decodeState(key string, value []byte) (*deciderState, error) {
	var st deciderState
	if err := json.Unmarshal(value, &st); err != nil {
		return nil, err
	}
	if st.Snapshot == nil || key != st.Snapshot.TenantID+"/"+st.Snapshot.SessionID || st.Window.Last != st.Snapshot.LastSeq {
		return nil, errInconsistent
	}
	return &st, nil
}

var errInconsistent = errors.New("inconsistent state record")

// deciderState is the value of a record on the decider-state topic.
type deciderState struct {
	Window   pipeline.Window   `json:"window"`
	Snapshot *session.Snapshot `json:"snapshot"`
}

type processor struct {
	stage     *Stage
	partition int32
	sessions  *statecache.Cache[deciderState]
	tally     *pipeline.Tally // counted once the batch commits
	counted   statecache.Stats
	// Scratch kept across batches: the event being processed in canonical
	// form without decision (content digest, input digest and decided
	// event are all made of it), an output being encoded, the sessions the
	// batch touched.
	bare    []byte
	buf     []byte
	seen    map[string]struct{}
	touched [][]byte
	values  valueArena
}

func (p *processor) Restore(key, value []byte) error {
	st, err := decodeState(string(key), value)
	if err != nil {
		return fmt.Errorf("decider: state of %q on partition %d: %w", key, p.partition, err)
	}
	if err := p.sessions.Put(string(key), st); err != nil {
		return err
	}
	return p.sessions.SetSize(key, len(value)) // restored states count toward --state-bytes too
}

// Close releases the processor's spill file.
func (p *processor) Close() error { return p.sessions.Close() }

// Committed counts the committed batch's records and decisions
// (stream.Committer).
func (p *processor) Committed() { p.tally.Flush() }

func (p *processor) Process(ctx context.Context, batch []*stream.Record, emit func(stream.Output)) error {
	s := p.stage
	t := s.cfg.Topics
	maxEvent := cmp.Or(s.cfg.MaxEventBytes, envelope.DefaultMaxEventBytes)
	dec := envelope.Decoder{MaxBytes: maxEvent}
	maxRecord := pipeline.MaxRecordBytes(maxEvent)
	if p.seen == nil {
		p.seen = make(map[string]struct{})
	}
	clear(p.seen)
	touched := p.touched[:0]
	defer func() {
		clear(touched) // the record keys belong to the batch
		p.touched = touched[:0]
	}()
	reject := func(rec *stream.Record, ev *envelope.Event, reason, detail string) {
		r := pipeline.NewRejection(StageName, rec, reason, detail)
		if ev != nil {
			r.WithEvent(ev)
		}
		p.tally.Reject(reason)
		emit(r.Output(t.Rejected, rec, maxRecord))
	}
	for _, rec := range batch {
		ev, err := dec.Decode(rec.Value)
		if err != nil {
			reject(rec, nil, envelope.Code(err), err.Error())
			continue
		}
		if reason, detail := pipeline.CheckKey(rec, ev, s.cfg.Partitions); reason != "" {
			reject(rec, ev, reason, detail)
			continue
		}
		// CheckKey passed: the key is the event's "<tenant>/<session>".
		key := rec.Key
		st, err := p.sessions.GetBytes(key)
		if err != nil {
			return fmt.Errorf("decider: %w", err)
		}
		if st == nil {
			st = &deciderState{Snapshot: session.New(ev.TenantID, ev.SessionID)}
		}
		var digest string
		if digest, p.bare, err = pipeline.ContentDigest(ev, p.bare); err != nil {
			return fmt.Errorf("decider: content digest of %s/%d: %w", key, ev.Seq, err)
		}
		if len(p.bare) > maxEvent {
			// The canonical form is what travels on: the sealer and the
			// projector size their limits by it (pipeline.DecidedMaxBytes).
			reject(rec, ev, envelope.CodeTooLarge, fmt.Sprintf("the event's canonical form is %d bytes, limit is %d", len(p.bare), maxEvent))
			continue
		}
		if s.cfg.ApprovalSecret != nil && ev.Type == envelope.ApprovalDecided {
			// Before the sequence rule: a forged decision must not take
			// the seq the gateway's next event of the session needs.
			if err := grant.VerifyEvent(s.cfg.ApprovalSecret, ev); err != nil {
				reject(rec, ev, pipeline.ReasonApprovalUnauthenticated, err.Error())
				continue
			}
		}
		switch verdict, detail := st.Window.Check(ev.Seq, digest); verdict {
		case pipeline.Duplicate:
			p.tally.Duplicate()
			continue
		case pipeline.Accept:
		default:
			r := pipeline.NewRejection(StageName, rec, verdict.Reason(), detail).WithEvent(ev)
			r.Expected = st.Window.Last + 1
			p.tally.Reject(r.Reason)
			emit(r.Output(t.Rejected, rec, maxRecord))
			continue
		}
		if ev.Manifest != "" && st.Snapshot.Events > 0 && ev.Manifest != st.Snapshot.Manifest {
			// After the sequence rule, so that an exact retry of the
			// first event stays a duplicate; the rejected event takes no
			// seq.
			reject(rec, ev, pipeline.ReasonManifestMismatch, fmt.Sprintf("the session's manifest is %q (named by its first event); this event names %q", st.Snapshot.Manifest, ev.Manifest))
			continue
		}
		var shadow *envelope.Decision
		if s.cfg.Shadow != nil && ev.Type == envelope.ToolCallProposed {
			if shadow, _, _, err = s.cfg.Shadow.decideResolved(ctx, st.Snapshot, ev, p.bare); err != nil {
				return fmt.Errorf("decider: shadow %s seq %d: %w", key, ev.Seq, err)
			}
		}
		tc, err := s.engine.step(ctx, st.Snapshot, ev, p.bare)
		if errors.Is(err, session.ErrPayload) {
			// Bad input, not a failure of the stage: retrying the batch
			// would fail the same way forever. The session is unchanged.
			reject(rec, ev, envelope.CodeInvalidField, err.Error())
			continue
		}
		if err != nil {
			// Every outcome failure is a decision; what is left is a
			// cancelled context or a bug. Abort: the batch is retried.
			return fmt.Errorf("decider: %s seq %d: %w", key, ev.Seq, err)
		}
		if shadow != nil && (shadow.Outcome != ev.Decision.Outcome || shadow.Reason != ev.Decision.Reason || shadow.Constraints != ev.Decision.Constraints) {
			r := NewReply(ev)
			v, _ := json.Marshal(ShadowDiff{TenantID: r.TenantID, SessionID: r.SessionID, Seq: r.Seq, CallID: r.CallID, ToolName: r.ToolName,
				Active: ev.Decision, Shadow: shadow})
			emit(stream.Output{Topic: s.cfg.ShadowTopic, Partition: rec.Partition, Key: rec.Key, Value: v})
			p.tally.Count(s.shadow, s.reasons.label(ev.Decision.Reason), s.reasons.label(shadow.Reason))
		}
		st.Window.Add(ev.Seq, digest)
		if err := p.sessions.PutBytes(key, st); err != nil {
			return fmt.Errorf("decider: %w", err)
		}
		if _, ok := p.seen[string(key)]; !ok {
			p.seen[string(key)] = struct{}{}
			touched = append(touched, key)
		}
		if p.buf, err = p.appendDecided(p.buf[:0], ev); err != nil {
			return fmt.Errorf("decider: encode %s seq %d: %w", key, ev.Seq, err)
		}
		emit(stream.Output{Topic: t.Decided, Partition: rec.Partition, Key: rec.Key, Value: p.values.copy(p.buf)})
		if ev.Decision != nil {
			reply := Reply{TenantID: ev.TenantID, SessionID: ev.SessionID, Seq: ev.Seq, CallID: tc.CallID, ToolName: tc.ToolName, ContentDigest: digest, Decision: *ev.Decision}
			p.buf = reply.AppendJSON(p.buf[:0])
			emit(stream.Output{Topic: t.Decisions, Partition: rec.Partition, Key: rec.Key, Value: p.values.copy(p.buf)})
			p.tally.Count(s.outcome, string(ev.Decision.Outcome), s.reasons.label(ev.Decision.Reason))
		}
		p.tally.Accept()
	}
	// One state record per session touched by the batch: compaction keeps
	// only the latest anyway.
	defer func() { p.counted = s.state.CountState(p.sessions.Stats(), p.counted) }()
	for _, key := range touched {
		st, err := p.sessions.GetBytes(key)
		if err != nil {
			return fmt.Errorf("decider: %w", err)
		}
		if p.buf, err = st.appendJSON(p.buf[:0]); err != nil {
			return fmt.Errorf("decider: encode state of %s: %w", key, err)
		}
		emit(stream.Output{Topic: t.DeciderState, Partition: p.partition, Key: key, Value: p.values.copy(p.buf)})
		if err := p.sessions.SetSize(key, len(p.buf)); err != nil {
			return fmt.Errorf("decider: %w", err)
		}
	}
	return nil
}

// appendDecided appends the decided event's canonical form (without hash)
// to b: ev.AppendCanonical(b, false), built from p.bare, the form without
// decision that ContentDigest encoded, rather than encoding the event and
// its payload again.
func (p *processor) appendDecided(b []byte, ev *envelope.Event) ([]byte, error) {
	if ev.PrevHash != "" {
		return ev.AppendCanonical(b, false)
	}
	if ev.Decision == nil {
		return append(b, p.bare...), nil
	}
	b = append(b, `{"decision":`...)
	b, err := ev.Decision.AppendCanonical(b)
	if err != nil {
		return b, err
	}
	b = append(b, ',')
	return append(b, p.bare[1:]...), nil
}

// valueChunk is the size of the blocks output values are copied into.
const valueChunk = 32 << 10

// valueArena copies output values into shared blocks, so that a batch's
// hundreds of small values cost a few allocations. Each value is a
// distinct, capacity-capped slice that is never written again; a block is
// freed once none of its values is referenced.
type valueArena struct {
	block []byte
}

func (a *valueArena) copy(v []byte) []byte {
	if len(v) > valueChunk/4 {
		return bytes.Clone(v)
	}
	if len(v) > cap(a.block)-len(a.block) {
		a.block = make([]byte, 0, valueChunk)
	}
	n := len(a.block)
	a.block = append(a.block, v...)
	return a.block[n:len(a.block):len(a.block)]
}
