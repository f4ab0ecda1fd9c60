// Package projector is the projector stage: it copies the sealed audit log
// and what goes with it (rejections, chain heads) from Kafka into an audit
// store, and folds each session's events into its latest snapshot.
//
// # Delivery
//
// The projector reads aegis.sealed, aegis.rejected and aegis.chain-heads
// read_committed in one consumer group, so instances share the partitions.
// It buffers records and writes them to the Store as one Batch when
// Config.BatchSize records are buffered or Config.FlushInterval has passed
// since the first of them, whichever comes first. It does not poll while a
// write is pending (backpressure: Kafka holds the records, nothing is
// dropped), retries a failed write forever with exponential backoff, and
// commits the batch's offsets only after the write succeeded. A crash
// between write and commit redelivers the batch; stores make that
// invisible (Store.Write is idempotent, docs/store.md).
//
// # Snapshots
//
// Session snapshots are decider/session.Snapshot folded over the sealed
// events. The projector keeps recent sessions' snapshots in memory
// (Config.CachedSessions; terminated and least recently used sessions
// leave first). A session whose first event it sees is seq 1 starts from an
// empty snapshot; for one it has not cached that starts later (after a
// restart or an eviction), or one whose next event is not the one after
// its cached state (another instance wrote it meanwhile), it rebuilds the
// state from the session's stored events. A record that follows neither
// the cached nor the stored history (a seq past it) is rejected
// (BAD_SEALED_RECORD, SEQ_GAP) and the session goes on with its next record
// that follows; other sessions are never held up by one. So is a record at
// a seq the store holds with another hash, when the store is read for its
// session (SEQ_CONFLICT): it is no redelivery; and one whose prev_hash is
// not the hash of its session's previous record (PREV_HASH_MISMATCH). Each decision row
// records whether the session was tainted before the proposal.
//
// # Shutdown
//
// Cancelling Run's context stops polling; the buffered records are written
// and committed within Config.DrainTimeout, then the consumer leaves the
// group. In aegisd the projector starts last and stops last, after the
// stages that feed it.
package projector

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// StageName is the projector's stage label and default group suffix.
const StageName = "projector"

// Rejection reasons of records the projector cannot project. They are
// written to rejected_records with stage "projector", never skipped.
const (
	// ReasonBadHead: a chain-heads record is not a JSON head that names
	// its session, a seq and a hash (checkHead).
	ReasonBadHead = "BAD_HEAD_RECORD"
	// ReasonBadRejection: a rejected-topic record is not a JSON rejection
	// (one that names its stage, reason and source topic).
	ReasonBadRejection = "BAD_REJECTION_RECORD"
	// ReasonBadSealed: a sealed record does not decode or does not follow
	// its session's previous event (the decoder's code is in the detail).
	ReasonBadSealed = "BAD_SEALED_RECORD"
)

// Config is the operator configuration of a projector.
type Config struct {
	// Brokers are the seed brokers.
	Brokers []string
	// Group is the consumer group (aegisd: "<prefix>projector").
	Group string
	// Topics names the topics read: Sealed, Rejected and ChainHeads.
	Topics pipeline.Topics
	// BatchSize is the number of buffered records that triggers a write
	// (default 5000).
	BatchSize int
	// BatchBytes bounds the record bytes (keys and values) of one write
	// (default 32 MiB): buffered records beyond it are written in several
	// batches, so that large events cannot make one batch of BatchSize
	// records gigabytes big. A single record larger than it is written
	// alone.
	BatchBytes int
	// FlushInterval bounds how long a record waits in the buffer (default
	// 1s).
	FlushInterval time.Duration
	// RetryBackoff is the first wait after a failed write, doubling up to
	// MaxRetryBackoff (defaults 100ms and 10s).
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// DrainTimeout bounds the final write on shutdown (default 30s).
	DrainTimeout time.Duration
	// MaxEventBytes bounds one sealed record (default 1 MiB plus 128 KiB
	// for the decision and chain fields).
	MaxEventBytes int
	// SessionTimeout is the consumer group session timeout (default 45s):
	// how long a crashed projector keeps its partitions.
	SessionTimeout time.Duration
	// Security is how the projector's consumer reaches the brokers (TLS,
	// SASL; zero: plaintext).
	Security stream.Security
	// CachedSessions bounds the snapshots kept in memory (default
	// 10,000); beyond it, terminated and then least recently used ones are
	// dropped, down to nine tenths of it, and rebuilt from the store when
	// their sessions come back.
	CachedSessions int
}

func (c *Config) defaults() error {
	if len(c.Brokers) == 0 || c.Group == "" || c.Topics.Sealed == "" {
		return fmt.Errorf("projector: brokers, group and topics are required: %w", stream.ErrConfig)
	}
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 5000
	}
	if c.BatchBytes <= 0 {
		c.BatchBytes = 32 << 20
	}
	set(&c.FlushInterval, time.Second)
	set(&c.RetryBackoff, 100*time.Millisecond)
	set(&c.MaxRetryBackoff, 10*time.Second)
	set(&c.DrainTimeout, 30*time.Second)
	if c.MaxEventBytes <= 0 {
		c.MaxEventBytes = pipeline.SealedMaxBytes(envelope.DefaultMaxEventBytes)
	}
	if c.CachedSessions <= 0 {
		c.CachedSessions = 10000
	}
	return nil
}

// Projector is the projector stage. Create it with New, run it with Run.
type Projector struct {
	cfg     Config
	store   Store
	log     *slog.Logger
	metrics *metrics
	opts    []stream.Option
	ready   atomic.Bool

	snaps map[SessionKey]*session.Snapshot
	last  map[SessionKey]string // the hash of each cached snapshot's last event
	used  map[SessionKey]uint64 // the batch that last used each cached snapshot
	batch uint64                // batches built so far
}

// New returns a projector writing to store. reg and log may be nil.
func New(cfg Config, store Store, reg prometheus.Registerer, log *slog.Logger) (*Projector, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []stream.Option{stream.WithLogger(log), stream.WithStage(StageName), stream.WithSecurity(cfg.Security)}
	if reg != nil {
		opts = append(opts, stream.WithRegisterer(reg))
	}
	return &Projector{cfg: cfg, store: store, log: log.With("stage", StageName), metrics: newMetrics(reg), opts: opts,
		snaps: make(map[SessionKey]*session.Snapshot), last: make(map[SessionKey]string), used: make(map[SessionKey]uint64)}, nil
}

// Ready reports whether the projector has caught up once: it has joined
// its group, polled its topics and found nothing left to write, or written
// everything up to the end of its input as a poll found it (under steady
// traffic no poll finds nothing). It stays true afterwards.
func (p *Projector) Ready() bool { return p.ready.Load() }

// Run consumes and writes until ctx is cancelled, then drains (see the
// package documentation) and returns nil. It returns an error only for an
// invalid configuration. Run must not be called twice at once.
func (p *Projector) Run(ctx context.Context) error {
	t := p.cfg.Topics
	cons, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: p.cfg.Brokers, Group: p.cfg.Group,
		Topics: []string{t.Sealed, t.Rejected, t.ChainHeads}, Start: stream.FromBeginning(), SessionTimeout: p.cfg.SessionTimeout}, p.opts...)
	if err != nil {
		return fmt.Errorf("projector: %w", err)
	}
	defer cons.Close()
	p.dropCache()
	var buf []*stream.Record
	var bufBytes int
	var first time.Time
	// caughtUp: the last poll that returned records reached the end of
	// the input as it was then; the projector is ready once the records
	// up to it are written, even if more keep arriving (a live fleet never
	// leaves it a poll idle). A later poll that did not reach the end (a
	// backlog on another broker) clears it.
	caughtUp := false
	for {
		// With records buffered, wait no longer than their flush time;
		// otherwise wake up once per interval to notice being idle.
		deadline := time.Now().Add(p.cfg.FlushInterval)
		if len(buf) > 0 {
			deadline = first.Add(p.cfg.FlushInterval)
		}
		pollCtx, cancel := context.WithDeadline(ctx, deadline)
		recs, err := cons.Poll(pollCtx)
		cancel()
		if ctx.Err() != nil {
			buf = append(buf, recs...)
			return p.drain(ctx, cons, buf)
		}
		switch {
		case err == nil:
			if len(recs) > 0 {
				caughtUp = cons.Joined() && cons.AtEnd()
			}
		case errors.Is(err, context.DeadlineExceeded):
			if len(buf) == 0 && cons.Joined() {
				p.ready.Store(true)
			}
		default:
			caughtUp = false
			p.log.Warn("poll failed; retrying", "err", err)
		}
		if len(recs) > 0 && len(buf) == 0 {
			first = time.Now()
		}
		buf = append(buf, recs...)
		for _, r := range recs {
			bufBytes += recordBytes(r)
		}
		// One poll can return more than BatchBytes: write it in parts.
		for bufBytes >= p.cfg.BatchBytes {
			n, size := 1, recordBytes(buf[0])
			for n < len(buf) && size+recordBytes(buf[n]) <= p.cfg.BatchBytes {
				size += recordBytes(buf[n])
				n++
			}
			if err := p.flush(ctx, cons, buf[:n]); err != nil {
				return p.drain(ctx, cons, buf)
			}
			rest := len(buf) - n
			copy(buf, buf[n:])
			clear(buf[rest:])
			buf, bufBytes = buf[:rest], bufBytes-size
			if rest == 0 && caughtUp {
				p.ready.Store(true)
			}
		}
		if len(buf) == 0 || len(buf) < p.cfg.BatchSize && time.Since(first) < p.cfg.FlushInterval {
			continue
		}
		if err := p.flush(ctx, cons, buf); err != nil {
			// flush gives up only when ctx is done.
			return p.drain(ctx, cons, buf)
		}
		clear(buf)
		buf, bufBytes = buf[:0], 0
		if caughtUp {
			p.ready.Store(true)
		}
	}
}

// recordBytes is what a buffered record counts against Config.BatchBytes.
func recordBytes(r *stream.Record) int { return len(r.Key) + len(r.Value) }

// drain writes and commits what is buffered after ctx was cancelled.
func (p *Projector) drain(ctx context.Context, cons *stream.Consumer, buf []*stream.Record) error {
	if len(buf) == 0 {
		return nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.DrainTimeout)
	defer cancel()
	if err := p.flush(dctx, cons, buf); err != nil {
		p.log.Warn("shutdown: buffered records not written; they will be read again", "records", len(buf), "err", err)
	}
	return nil
}

// flush writes buf as one batch, retrying until it succeeds or ctx is
// done, then commits its offsets. A failure to build the batch (reading a
// session's history from the store) is retried like a failed write.
func (p *Projector) flush(ctx context.Context, cons *stream.Consumer, buf []*stream.Record) error {
	start := time.Now()
	backoff := p.cfg.RetryBackoff
	var b *Batch
	for {
		var err error
		if b == nil {
			b, err = p.build(ctx, buf)
		}
		if err == nil {
			if err = p.store.Write(ctx, b); err == nil {
				break
			}
		} else {
			// The cache may hold part of this batch: start over from
			// the store.
			b = nil
			p.dropCache()
		}
		if ctx.Err() != nil {
			p.dropCache()
			return fmt.Errorf("projector: write: %w", ctx.Err())
		}
		p.metrics.retries.Inc()
		p.log.Warn("store failed; retrying", "records", len(buf), "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			p.dropCache()
			return fmt.Errorf("projector: write: %w", ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, p.cfg.MaxRetryBackoff)
	}
	p.metrics.observe(b, len(buf), time.Since(start))
	// The rows are written: commit their offsets even if shutdown began
	// meanwhile, so that a restart does not read them again.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.DrainTimeout)
	defer cancel()
	if err := cons.Commit(cctx, buf...); err != nil {
		// The rows are stored; the records will be read again by this
		// instance or the partition's new owner, and deduplicated.
		p.log.Warn("offset commit failed; records will be redelivered", "records", len(buf), "err", err)
	}
	return nil
}

// dropCache forgets every cached snapshot: after a write that never
// succeeded, the cache is ahead of the store.
func (p *Projector) dropCache() {
	clear(p.snaps)
	clear(p.last)
	clear(p.used)
}

// build turns buffered records into the rows of one batch.
func (p *Projector) build(ctx context.Context, buf []*stream.Record) (*Batch, error) {
	t := p.cfg.Topics
	b := &Batch{}
	dec := envelope.Decoder{Sealed: true, MaxBytes: p.cfg.MaxEventBytes}
	type sealed struct {
		ev  *envelope.Event
		rec *stream.Record
	}
	var events []sealed
	// reject records rec as rejected; ev, if known, names its session.
	reject := func(rec *stream.Record, ev *envelope.Event, reason, detail string) {
		r := pipeline.NewRejection(StageName, rec, reason, detail)
		if ev != nil {
			r.WithEvent(ev)
		}
		b.Rejected = append(b.Rejected, RejectedRow{Rejection: *r, RejectedUnixMs: rec.Timestamp.UnixMilli()})
	}
	// The sealer writes a session's head after each of its transactions,
	// so a batch usually holds several heads per session. Only the last
	// usable one of each session is decoded and stored (the stores keep the
	// highest seq anyway, and compaction drops the others from the topic):
	// heads are read from the end, a tombstone or a malformed head (which
	// is rejected) lets the one before it count.
	headDone := map[string]bool{}
	for i := len(buf) - 1; i >= 0; i-- {
		rec := buf[i]
		if rec.Topic != t.ChainHeads || rec.Value == nil || headDone[string(rec.Key)] {
			continue
		}
		h, err := decodeHead(rec.Value)
		if err == nil {
			err = checkHead(h)
		}
		if err != nil {
			reject(rec, nil, ReasonBadHead, fmt.Sprintf("not a chain head: %v", err))
			continue
		}
		if h.Seq > canon.MaxSafeInteger {
			// No event has such a seq (envelopes refuse it), and
			// SQLite's signed integers could not hold it anyway.
			reject(rec, nil, ReasonBadHead, fmt.Sprintf("seq %d is above %d, the largest an event can have", h.Seq, uint64(canon.MaxSafeInteger)))
			continue
		}
		headDone[string(rec.Key)] = true
		b.Heads = append(b.Heads, h)
	}
	for _, rec := range buf {
		switch rec.Topic {
		case t.Sealed:
			ev, err := dec.Decode(rec.Value)
			if err == nil && ev.Hash == "" {
				// A valid event the sealer never wrote: the decoder takes
				// it, but it has no link in any chain.
				err = &envelope.Error{Code: envelope.CodeMissingField, Field: "hash", Msg: "not a sealed record"}
			}
			if err != nil {
				reject(rec, nil, ReasonBadSealed, fmt.Sprintf("%s: %v", envelope.Code(err), err))
				continue
			}
			events = append(events, sealed{ev, rec})
		case t.Rejected:
			var r pipeline.Rejection
			if err := json.Unmarshal(rec.Value, &r); err != nil {
				reject(rec, nil, ReasonBadRejection, err.Error())
				continue
			}
			if r.Stage == "" || r.Reason == "" || r.Topic == "" {
				// JSON, but no rejection: every rejection names its stage,
				// reason and source topic (pipeline.NewRejection). Stored
				// as one, it would keep none of the record's bytes, and all
				// such records would share one identity.
				reject(rec, nil, ReasonBadRejection, "not a rejection: stage, reason or topic is missing")
				continue
			}
			if r.Seq > canon.MaxSafeInteger || r.Expected > canon.MaxSafeInteger+1 {
				// Aegis names only seqs an event can have (or the next
				// one); a larger one would be stored differently by
				// SQLite (signed) and ClickHouse (unsigned).
				reject(rec, nil, ReasonBadRejection, fmt.Sprintf("seq %d or expected_seq %d is above what an event can have (%d)", r.Seq, r.Expected, uint64(canon.MaxSafeInteger)))
				continue
			}
			b.Rejected = append(b.Rejected, RejectedRow{Rejection: r, RejectedUnixMs: rec.Timestamp.UnixMilli()})
		}
	}
	// Sessions whose cached state does not end right before their first
	// event here are rebuilt from the store, in one query. A session that
	// starts here (seq 1) has nothing stored before it: it starts from an
	// empty snapshot without asking the store, which matters because
	// nearly every session of a fleet is new to the projector once, and
	// the store's answer, always empty, gets slower as the tables grow.
	p.batch++
	firstSeq := map[SessionKey]uint64{}
	// stored: the hashes of the stored rows at the batch's seqs, of the
	// sessions read from the store (the rebuild reads them anyway), and
	// of the records this batch stores.
	stored := make(map[seqKey]string, len(events))
	var load []SessionKey
	for _, s := range events {
		k := SessionKey{s.ev.TenantID, s.ev.SessionID}
		stored[seqKey{k, s.ev.Seq}] = ""
		if _, ok := firstSeq[k]; ok {
			continue
		}
		firstSeq[k] = s.ev.Seq
		p.used[k] = p.batch
		switch sn := p.snaps[k]; {
		case sn == nil && s.ev.Seq == 1:
			p.snaps[k], p.last[k] = session.New(k.TenantID, k.SessionID), chain.Genesis
		case sn == nil || sn.LastSeq+1 < s.ev.Seq:
			load = append(load, k)
		}
	}
	if err := p.rebuild(ctx, load, firstSeq, stored); err != nil {
		return nil, err
	}
	// A session is rebuilt at most once more in the loop below: a gap
	// that a rebuild does not close is a record to reject, not a reason
	// to ask the store again for each of the session's records.
	rebuilt := map[SessionKey]bool{}
	dirty := map[SessionKey]bool{}
	var order []SessionKey
	for _, s := range events {
		ev := s.ev
		k := SessionKey{ev.TenantID, ev.SessionID}
		sn := p.snaps[k]
		if sn.LastSeq+1 < ev.Seq && !rebuilt[k] {
			// Another instance may have written this session
			// meanwhile (a rebalance inside the batch): rebuild it.
			rebuilt[k] = true
			if err := p.rebuild(ctx, []SessionKey{k}, map[SessionKey]uint64{k: ev.Seq}, stored); err != nil {
				return nil, err
			}
			sn = p.snaps[k]
		}
		if h := stored[seqKey{k, ev.Seq}]; h != "" && h != ev.Hash {
			// The store (or this batch) holds another record at this
			// seq (one the sealer wrote, read after or before this
			// one): this record is not a redelivery. Written, it
			// would replace the stored one in ClickHouse (a merge
			// keeps the last copy) and be dropped by SQLite; skipped,
			// it would vanish.
			p.metrics.gaps.Inc()
			p.log.Error("sealed record conflicts with the stored record of its seq; rejected",
				"tenant", ev.TenantID, "session", ev.SessionID, "seq", ev.Seq, "hash", ev.Hash, "stored_hash", h,
				"partition", s.rec.Partition, "offset", s.rec.Offset)
			reject(s.rec, ev, ReasonBadSealed, fmt.Sprintf("SEQ_CONFLICT: %s/%s seq %d is stored with hash %s, this record has hash %s",
				ev.TenantID, ev.SessionID, ev.Seq, h, ev.Hash))
			continue
		}
		if ev.Seq <= sn.LastSeq {
			continue // already written by this instance: a redelivery
		}
		if sn.LastSeq+1 < ev.Seq {
			// Neither the cache nor the store holds the events
			// before it: a record that does not follow its session
			// (written by something other than the sealer), or a
			// store that lost rows whose offsets were committed.
			// Only this record is held back; the session goes on
			// with its next event that follows, the others are
			// unaffected.
			p.metrics.gaps.Inc()
			p.log.Error("sealed record does not follow its session's stored history; rejected",
				"tenant", ev.TenantID, "session", ev.SessionID, "seq", ev.Seq, "stored_through", sn.LastSeq,
				"partition", s.rec.Partition, "offset", s.rec.Offset)
			reject(s.rec, ev, ReasonBadSealed, fmt.Sprintf("SEQ_GAP: %s/%s seq %d does not follow the stored history, which ends at seq %d",
				ev.TenantID, ev.SessionID, ev.Seq, sn.LastSeq))
			continue
		}
		if want, ok := p.last[k]; ok && ev.PrevHash != want {
			// The next seq, but of another chain: not the record
			// the sealer linked to the session's previous one.
			p.metrics.gaps.Inc()
			p.log.Error("sealed record does not link to its session's previous record; rejected",
				"tenant", ev.TenantID, "session", ev.SessionID, "seq", ev.Seq, "prev_hash", ev.PrevHash, "want", want,
				"partition", s.rec.Partition, "offset", s.rec.Offset)
			reject(s.rec, ev, ReasonBadSealed, fmt.Sprintf("PREV_HASH_MISMATCH: %s/%s seq %d has prev_hash %s, the hash of seq %d is %s",
				ev.TenantID, ev.SessionID, ev.Seq, ev.PrevHash, sn.LastSeq, want))
			continue
		}
		// The decision row describes the session before the proposal;
		// it is written only with its event (a record the reducer
		// refuses is rejected whole).
		d, decided := DecisionRowOf(sn, ev)
		if err := sn.Apply(ev); err != nil {
			// The sealer never writes such a record; keep it visible.
			reject(s.rec, ev, ReasonBadSealed, err.Error())
			continue
		}
		if decided {
			b.Decisions = append(b.Decisions, d)
		}
		p.last[k] = ev.Hash
		b.Events = append(b.Events, NewEventRow(ev, s.rec.Partition, s.rec.Offset))
		// Stored with this batch: another record at this seq later in
		// it is a conflict too, not a redelivery.
		stored[seqKey{k, ev.Seq}] = ev.Hash
		if !dirty[k] {
			dirty[k] = true
			order = append(order, k)
		}
	}
	for _, k := range order {
		r, err := NewSnapshotRow(p.snaps[k])
		if err != nil {
			return nil, err
		}
		b.Snapshots = append(b.Snapshots, r)
	}
	p.evict()
	return b, nil
}

// checkHead reports what a decoded chain head lacks: every head the sealer
// writes names its session and a seq, and its hash is one chain.Link
// computed (the sealer refuses a head record with any other).
func checkHead(h chain.Head) error {
	switch {
	case h.TenantID == "" || h.SessionID == "":
		return errors.New("no tenant_id or session_id")
	case h.Seq == 0:
		return errors.New("no seq")
	case !chain.IsHash(h.Hash):
		return fmt.Errorf("hash %.80q is not 64 lower-case hex digits", h.Hash)
	}
	return nil
}

// rebuild sets the cached snapshot of each session in keys to its state
// after its stored events with seq < before[k], as far as they follow one
// another from seq 1: a missing, invalid or inapplicable stored row, or
// one that fails verification (its hash or its link), ends the history
// there (the records after it are then rejected by build). A
// cached snapshot that is further along (events of the batch being built,
// not stored yet) is kept. For each key of stored whose value is still
// empty (a record of the batch), the hash of the stored row at that seq
// is filled in, if there is one.
func (p *Projector) rebuild(ctx context.Context, keys []SessionKey, before map[SessionKey]uint64, stored map[seqKey]string) error {
	if len(keys) == 0 {
		return nil
	}
	p.metrics.rebuilds.Add(float64(len(keys)))
	fresh := make(map[SessionKey]*session.Snapshot, len(keys))
	freshLast := make(map[SessionKey]string, len(keys))
	broken := map[SessionKey]bool{}
	// Each stored row is verified as verify --store does (its hash
	// recomputed, its link to the row before it): a snapshot folded over
	// an edited row would carry the edit into every row derived from it.
	verifier := chain.NewVerifier()
	for _, k := range keys {
		fresh[k], freshLast[k] = session.New(k.TenantID, k.SessionID), chain.Genesis
	}
	const chunk = 500
	for i := 0; i < len(keys); i += chunk {
		part := keys[i:min(i+chunk, len(keys))]
		err := p.store.Events(ctx, Filter{Sessions: part}, func(r *EventRow) error {
			k := SessionKey{r.Event.TenantID, r.Event.SessionID}
			sn := fresh[k]
			if sn == nil {
				return nil
			}
			if r.Event.Seq >= before[k] {
				// A row the batch holds a record for: remember its
				// hash (of the first copy) to tell a redelivery from
				// a conflict.
				sk := seqKey{k, r.Event.Seq}
				if h, ok := stored[sk]; ok && h == "" {
					stored[sk] = r.Event.Hash
				}
				return nil
			}
			if broken[k] || r.Event.Seq <= sn.LastSeq {
				return nil
			}
			bad := r.Invalid
			if bad == nil {
				if f := verifier.Add(r.Event); f != nil {
					bad = f
				}
			}
			if bad == nil {
				bad = sn.Apply(r.Event)
			}
			if bad == nil {
				freshLast[k] = r.Event.Hash
			}
			if bad != nil {
				// Not an error of the scan: the history ends here.
				broken[k] = true
				p.log.Error("stored event fails verification or does not apply; its session's history ends before it",
					"tenant", k.TenantID, "session", k.SessionID, "seq", r.Event.Seq, "error", bad)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, k := range keys {
		if cur := p.snaps[k]; cur == nil || cur.LastSeq < fresh[k].LastSeq {
			p.snaps[k], p.last[k] = fresh[k], freshLast[k]
		}
		p.used[k] = p.batch
	}
	return nil
}

// evict keeps the snapshot cache within CachedSessions. Once the cache is
// over the bound it drops terminated sessions first (they expect no more
// events), then the least recently used, down to nine tenths of the bound,
// so that the sort runs once per tenth of the bound's worth of new
// sessions rather than on every batch.
func (p *Projector) evict() {
	if len(p.snaps) <= p.cfg.CachedSessions {
		return
	}
	keep := p.cfg.CachedSessions - p.cfg.CachedSessions/10
	type entry struct {
		k    SessionKey
		used uint64
		done bool
	}
	es := make([]entry, 0, len(p.snaps))
	for k, sn := range p.snaps {
		es = append(es, entry{k, p.used[k], sn.Terminated})
	}
	slices.SortFunc(es, func(a, b entry) int {
		if a.done != b.done {
			if a.done {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.used, b.used)
	})
	for _, e := range es[:len(es)-keep] {
		delete(p.snaps, e.k)
		delete(p.last, e.k)
		delete(p.used, e.k)
	}
}

// seqKey names a seq of a session.
type seqKey struct {
	SessionKey
	seq uint64
}

type metrics struct {
	rows     *prometheus.CounterVec
	records  prometheus.Counter
	retries  prometheus.Counter
	rebuilds prometheus.Counter
	gaps     prometheus.Counter
	flush    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aegis_projector_rows_written_total",
			Help: "Rows written to the audit store, by table (redeliveries included)."}, []string{"table"}),
		records: prometheus.NewCounter(prometheus.CounterOpts{Name: "aegis_projector_records_total",
			Help: "Kafka records projected and committed."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "aegis_projector_write_retries_total",
			Help: "Batches whose store read or write failed and was retried."}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{Name: "aegis_projector_snapshot_rebuilds_total",
			Help: "Session snapshots rebuilt from stored events."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "aegis_projector_history_gaps_total",
			Help: "Sealed records rejected because they do not follow their session's history: neither the cache nor the store holds the events before them, another record is stored at their seq, or they do not link to the record before them."}),
		flush: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "aegis_projector_flush_seconds",
			Help: "Time to build and write one batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
	}
	if reg == nil {
		return m
	}
	for _, c := range []*prometheus.Collector{ptr[prometheus.Collector](m.rows), ptr[prometheus.Collector](m.records),
		ptr[prometheus.Collector](m.retries), ptr[prometheus.Collector](m.rebuilds),
		ptr[prometheus.Collector](m.gaps), ptr[prometheus.Collector](m.flush)} {
		if err := reg.Register(*c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				*c = are.ExistingCollector
			}
		}
	}
	return m
}

func ptr[T any](v T) *T { return &v }

func (m *metrics) observe(b *Batch, records int, d time.Duration) {
	m.rows.WithLabelValues("audit_events").Add(float64(len(b.Events)))
	m.rows.WithLabelValues("decisions").Add(float64(len(b.Decisions)))
	m.rows.WithLabelValues("session_snapshots").Add(float64(len(b.Snapshots)))
	m.rows.WithLabelValues("rejected_records").Add(float64(len(b.Rejected)))
	m.rows.WithLabelValues("chain_heads").Add(float64(len(b.Heads)))
	m.records.Add(float64(records))
	m.flush.Observe(d.Seconds())
}
