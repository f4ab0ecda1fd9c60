package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	kafka "github.com/segmentio/kafka-go"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// Config is one load-test run. Brokers are always needed: the outcome is
// read from the sealed topic even when events go through the HTTP API.
type Config struct {
	Brokers []string
	// KafkaSecurity is how every Kafka client of the run reaches Brokers
	// (TLS, SASL; zero: plaintext).
	KafkaSecurity stream.Security
	TopicPrefix   string // default pipeline.DefaultTopicPrefix
	// HTTP, if set, publishes through POST {HTTP}/v1/events instead of
	// Kafka, HTTPBatch events per request (default 100) over
	// HTTPConcurrency connections (default 8); sessions are sharded over
	// the connections so each session's events stay in order.
	HTTP            string
	APIKey          string
	HTTPBatch       int
	HTTPConcurrency int
	// BatchTimeout is how long the Kafka publisher lets a partition's
	// partial batch wait (default 5ms).
	BatchTimeout time.Duration
	// Rate is the target events/s (open loop), reached after Ramp (linear
	// from 0) and held until Duration.
	Rate     float64
	Ramp     time.Duration
	Duration time.Duration
	// Warmup excludes events due in the run's first Warmup from the
	// latency histograms (they are still published and checked): the
	// first writes to a run's freshly created topics and the processes'
	// first requests take up to a few hundred milliseconds once.
	Warmup time.Duration
	// Sessions is how many agents run concurrently; each runs sessions
	// back to back (about 40 events each).
	Sessions int
	Mix      Mix
	// Store, if set (sqlite:PATH or clickhouse://…), is polled for the
	// highest stored seq and the distinct stored seqs of every session:
	// publish → queryable latency.
	Store string
	// StoreSample: while publishing, the store is polled for one session
	// in StoreSample (default 1: all), which is where publish → queryable
	// latency comes from; once publishing ends every session is polled
	// until it is fully stored, so the stored count stays exact. Polling
	// all of a large fleet ten times a second is load on the store that
	// the fleet itself would not cause.
	StoreSample int
	// DrainTimeout bounds the wait for the pipeline to catch up after the
	// last publish, counted from the last progress (default 30s).
	DrainTimeout time.Duration
	// RunID prefixes every session ID (default: derived from the clock),
	// so a run reads back only its own sessions.
	RunID string
	// FaultBadKey publishes the last event of the first FaultBadKey
	// sessions under a wrong key, which the pipeline rejects
	// (KEY_MISMATCH): a deliberately broken run that must report loss.
	FaultBadKey int
	// ApprovalSecret, if set, signs the APPROVAL_DECIDED events of the
	// mix (internal/grant), as the decider requires of approvals
	// published straight to Kafka; it is the aegisd's
	// --approval-secret-file. Without it those approvals are rejected
	// APPROVAL_UNAUTHENTICATED and the run fails on the calls that stay
	// unapproved.
	ApprovalSecret []byte
}

// Progress is a live snapshot for the progress line.
type Progress struct {
	Elapsed   time.Duration
	Scheduled int64
	Published int64
	Sealed    int64
	Decided   int64
	Failed    int64
}

// session is the run's record of one simulated session.
type session struct {
	id      string
	key     string
	events  []event
	sched   []int64 // scheduled send time (unix ns) by seq-1; 0 = not yet sent
	acked   []bool
	sealed  []uint8 // sealed copies by seq-1
	replied []bool  // decision reply seen, by seq-1
	stored  uint64  // seqs seen in the store: the highest, or the distinct count if lower (a gap)
	sampled bool    // polled for publish → queryable latency while publishing
	badKey  bool
}

// run is the shared state of one Run.
type run struct {
	cfg    Config
	topics pipeline.Topics
	start  time.Time

	mu         sync.Mutex
	sessions   map[string]*session // by key
	hSealed    *hdr.Histogram
	hDecision  *hdr.Histogram
	hAck       *hdr.Histogram
	hStored    *hdr.Histogram
	verifier   *chain.Verifier
	reasons    map[string]int64 // observed on sealed proposals, "outcome/REASON"
	expected   map[string]int64 // of acknowledged proposals
	rejected   map[string]int64
	mismatch   []string
	lastSeal   time.Time
	steadyN    int64 // distinct events sealed in the steady window (steadyFrom to the end of publishing)
	unexpect   int64
	badReplies int64                      // replies whose decision is not the expected one
	pubErr     error                      // the first publishing error
	storeErr   error                      // the last failed store query, if the store never answered after it
	faults     int64                      // events published under a wrong key (FaultBadKey)
	starts     map[string]map[int32]int64 // where the reader started
	ends       chan struct{}              // closed when endOffsets is set
	endOffsets map[string]map[int32]int64 // for the readers: read up to these, then return

	scheduled, published, failed, sealedN, decided atomic.Int64
	dupN, storedN                                  atomic.Int64
	publishDone                                    atomic.Bool
}

func newHist() *hdr.Histogram { return hdr.New(1, int64(10*time.Minute/time.Microsecond), 3) }

// record adds the latency of an event due at sched, seen at now (Unix ns),
// to h in µs. A latency beyond the histogram's range counts as its highest
// value (10 min) rather than being left out, which would drop exactly the
// slowest events from the percentiles.
func record(h *hdr.Histogram, now, sched int64) {
	_ = h.RecordValue(min(max(1, (now-sched)/1e3), h.HighestTrackableValue()))
}

func (c *Config) defaults() error {
	if c.TopicPrefix == "" {
		c.TopicPrefix = pipeline.DefaultTopicPrefix
	}
	if c.HTTPBatch <= 0 {
		c.HTTPBatch = 100
	}
	if c.HTTPConcurrency <= 0 {
		c.HTTPConcurrency = 8
	}
	if c.StoreSample <= 0 {
		c.StoreSample = 1
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.RunID == "" {
		c.RunID = fmt.Sprintf("lt%x", time.Now().UnixNano())
	}
	if c.Mix.total() == 0 {
		c.Mix = DefaultMix
	}
	switch {
	case len(c.Brokers) == 0:
		return fmt.Errorf("%w: brokers are required (the outcome is read from the sealed topic)", ErrConfig)
	case c.Rate <= 0 || math.IsInf(c.Rate, 0) || math.IsNaN(c.Rate):
		return fmt.Errorf("%w: rate must be positive", ErrConfig)
	case c.Duration <= 0 || c.Ramp < 0 || c.Ramp > c.Duration:
		return fmt.Errorf("%w: duration must be positive and ramp within it", ErrConfig)
	case c.Warmup < 0 || c.Warmup >= c.Duration:
		return fmt.Errorf("%w: warm-up must be shorter than the duration", ErrConfig)
	case c.Sessions <= 0:
		return fmt.Errorf("%w: sessions must be positive", ErrConfig)
	case c.sessionSpan() >= WallTimeBudget:
		return fmt.Errorf("%w: %d sessions at %g events/s: a session of up to %d events, one per turn of the %d agents, would span %s, past %s's wall-time budget of %s, and its last proposals would be decided BUDGET_EXCEEDED; use fewer sessions, a higher rate or a shorter duration",
			ErrConfig, c.Sessions, c.Rate, maxSessionEvents, c.Sessions, c.sessionSpan().Round(time.Second), Manifest, WallTimeBudget)
	case c.FaultBadKey > 0 && c.HTTP != "":
		return fmt.Errorf("%w: the bad-key fault needs Kafka publishing (the gateway derives keys itself)", ErrConfig)
	}
	return nil
}

// sessionSpan is the longest time from a session's first event to its
// last that the schedule can give: the agents take turns, so a session's
// events are Sessions events apart, and the turns are furthest apart at
// the start of a ramp. A session cut off by the end of the run spans at
// most the run.
func (c *Config) sessionSpan() time.Duration {
	return min(c.at(int64(maxSessionEvents-1)*int64(c.Sessions)), c.Duration)
}

// Sentinel errors of Run; the text is the stable code.
var (
	ErrConfig  = errors.New("loadtest_config")
	ErrRuntime = errors.New("loadtest_runtime")
)

// Run executes one load test and returns its report. An error means the
// run could not be carried out (configuration, broker, store); a run whose
// outcome is wrong returns a Report with OK false and a nil error. progress,
// if not nil, is called about every 500ms from one goroutine.
func Run(ctx context.Context, cfg Config, progress func(Progress)) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, topics: pipeline.NewTopics(cfg.TopicPrefix), sessions: map[string]*session{},
		hSealed: newHist(), hDecision: newHist(), hAck: newHist(), hStored: newHist(),
		ends: make(chan struct{}), verifier: chain.NewVerifier(), reasons: map[string]int64{}, expected: map[string]int64{}, rejected: map[string]int64{}}

	// Read from the current ends: only this run's records.
	starts := map[string]map[int32]int64{}
	for _, t := range []string{r.topics.Sealed, r.topics.Decisions, r.topics.Rejected} {
		ends, err := stream.EndOffsets(ctx, cfg.Brokers, t, stream.WithSecurity(cfg.KafkaSecurity))
		if err != nil {
			return nil, fmt.Errorf("%w: end offsets of %s: %w", ErrRuntime, t, err)
		}
		starts[t] = ends
	}
	r.starts = starts
	// Two readers, each with a client of its own: decisions (and
	// rejections) as an agent waiting for its verdict reads them, and the
	// sealed log, whose verification would otherwise hold up the
	// decisions fetched with it and inflate proposal → decision.
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	readErr := make(chan error, len(r.readers()))
	for _, topics := range r.readers() {
		from := map[string]map[int32]int64{}
		for _, t := range topics {
			from[t] = starts[t]
		}
		cons, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: cfg.Brokers, Start: stream.FromOffsets(from), FetchMaxWait: 50 * time.Millisecond},
			stream.WithSecurity(cfg.KafkaSecurity))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRuntime, err)
		}
		defer cons.Close()
		go func() { readErr <- r.read(readCtx, cons, topics) }()
	}

	var storeDone chan struct{}
	storeCtx, stopStore := context.WithCancel(ctx)
	defer stopStore()
	if cfg.Store != "" {
		st, err := stores.Open(ctx, cfg.Store)
		if err != nil {
			return nil, fmt.Errorf("%w: store: %w", ErrRuntime, err)
		}
		defer func() { _ = st.Close() }()
		storeDone = make(chan struct{})
		go func() { defer close(storeDone); r.pollStore(storeCtx, st) }()
	}

	progCtx, stopProg := context.WithCancel(ctx)
	progDone := make(chan struct{})
	go func() {
		defer close(progDone)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-progCtx.Done():
				return
			case <-t.C:
				if progress != nil {
					progress(r.progress())
				}
			}
		}
	}()
	defer func() { stopProg(); <-progDone }()

	r.start = time.Now()
	if err := r.publish(ctx); err != nil {
		return nil, err
	}
	r.publishDone.Store(true)
	pubEnd := time.Since(r.start)

	// Drain: wait until every acknowledged event is sealed (and stored),
	// or nothing moved for DrainTimeout.
	want := r.published.Load()
	last, lastN := time.Now(), int64(-1)
	for {
		n := r.sealedN.Load() + r.storedN.Load()
		done := r.sealedN.Load() >= want && (cfg.Store == "" || r.storedN.Load() >= want)
		if done {
			break
		}
		if n != lastN {
			last, lastN = time.Now(), n
		}
		if time.Since(last) > cfg.DrainTimeout {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrRuntime, ctx.Err())
		case err := <-readErr:
			return nil, fmt.Errorf("%w: reading results: %w", ErrRuntime, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Read everything committed so far, so late duplicates are counted too.
	if err := r.catchUp(ctx, readErr); err != nil {
		return nil, err
	}
	stopRead()
	stopStore()
	if storeDone != nil {
		<-storeDone
	}
	return r.report(pubEnd), nil
}

// readers lists the topics of each result reader.
func (r *run) readers() [][]string {
	return [][]string{{r.topics.Decisions, r.topics.Rejected}, {r.topics.Sealed}}
}

// catchUp has the readers read the result topics up to their end offsets
// as they are now, and waits for them to return.
func (r *run) catchUp(ctx context.Context, readErr chan error) error {
	ends := map[string]map[int32]int64{}
	for _, t := range []string{r.topics.Sealed, r.topics.Decisions, r.topics.Rejected} {
		e, err := stream.EndOffsets(ctx, r.cfg.Brokers, t, stream.WithSecurity(r.cfg.KafkaSecurity))
		if err != nil {
			return fmt.Errorf("%w: end offsets of %s: %w", ErrRuntime, t, err)
		}
		ends[t] = e
	}
	r.endOffsets = ends
	close(r.ends)
	deadline := time.After(r.cfg.DrainTimeout)
	for range r.readers() {
		select {
		case err := <-readErr:
			if err != nil {
				return fmt.Errorf("%w: reading results: %w", ErrRuntime, err)
			}
		case <-deadline:
			return fmt.Errorf("%w: result topics not read to their end within %v", ErrRuntime, r.cfg.DrainTimeout)
		}
	}
	return nil
}

func (r *run) progress() Progress {
	return Progress{Elapsed: time.Since(r.start), Scheduled: r.scheduled.Load(), Published: r.published.Load(),
		Sealed: r.sealedN.Load(), Decided: r.decided.Load(), Failed: r.failed.Load()}
}

// at returns the scheduled offset of event i from the start.
func (r *run) at(i int64) time.Duration { return r.cfg.at(i) }

// at is the due time of the run's event i, from its start.
func (c *Config) at(i int64) time.Duration {
	rate, ramp := c.Rate, c.Ramp.Seconds()
	rampEvents := rate * ramp / 2
	x := float64(i)
	if x < rampEvents {
		return time.Duration(math.Sqrt(2*x*ramp/rate) * float64(time.Second))
	}
	return time.Duration((ramp + (x-rampEvents)/rate) * float64(time.Second))
}

// agent is one simulated agent: it runs sessions back to back.
type agent struct {
	n, next, count int
	cur            *session
}

// publish runs the open-loop schedule: event i is due at at(i); every
// event is stamped with its due time, so a stalled publisher shows up as
// latency instead of as a lower rate.
func (r *run) publish(ctx context.Context) error {
	var sink func([]pending)
	var closeSink func() error
	if r.cfg.HTTP != "" {
		h := newHTTPSink(ctx, r)
		sink, closeSink = h.send, h.close
	} else {
		pub, err := NewPublisher(PublisherConfig{Brokers: r.cfg.Brokers, Security: r.cfg.KafkaSecurity, Topic: r.topics.Events, Async: true, Completion: r.completion, BatchTimeout: r.cfg.BatchTimeout})
		if err != nil {
			return err
		}
		sink = func(ps []pending) {
			msgs := make([]Message, len(ps))
			for i, p := range ps {
				msgs[i] = Message{Key: []byte(p.key), Value: p.value}
			}
			if err := pub.Publish(ctx, msgs...); err != nil {
				r.publishFailed(len(ps), err)
			}
		}
		closeSink = pub.Close
	}
	agents := make([]agent, r.cfg.Sessions)
	for i := range agents {
		agents[i].n = i
	}
	// Every event due before the end is sent, also when the loop wakes
	// up late or falls behind: stopping at the end instead would drop the
	// latest, slowest events, a quietly lower rate.
	var i int64
	var batch []pending
	for r.at(i) < r.cfg.Duration {
		now := time.Since(r.start)
		batch = batch[:0]
		for ; r.at(i) <= now && r.at(i) < r.cfg.Duration; i++ {
			batch = append(batch, r.nextEvent(&agents[i%int64(len(agents))], r.start.Add(r.at(i))))
		}
		if len(batch) > 0 {
			r.scheduled.Add(int64(len(batch)))
			sink(append([]pending(nil), batch...))
		}
		select {
		case <-ctx.Done():
			_ = closeSink()
			return fmt.Errorf("%w: %w", ErrRuntime, ctx.Err())
		case <-time.After(time.Until(r.start.Add(min(r.at(i), r.cfg.Duration)))):
		}
	}
	if err := closeSink(); err != nil {
		return fmt.Errorf("%w: closing the publisher: %w", ErrRuntime, err)
	}
	return nil
}

// pending is one event handed to a sink.
type pending struct {
	key   string
	value []byte
	sched time.Time
}

// nextEvent builds the agent's next event, starting a session when needed.
func (r *run) nextEvent(a *agent, sched time.Time) pending {
	if a.cur == nil || a.next == len(a.cur.events) {
		sid := fmt.Sprintf("%s-a%d-s%d", r.cfg.RunID, a.n, a.count)
		a.count++
		evs := script(r.cfg.Mix, sessionSeed(sid), sid)
		if r.cfg.ApprovalSecret != nil {
			for i := range evs {
				if evs[i].typ == envelope.ApprovalDecided {
					p, err := grant.Sign(r.cfg.ApprovalSecret, Tenant, sid, []byte(evs[i].payload))
					if err != nil {
						panic("loadtest: sign the mix's approval: " + err.Error()) // the mix's own payloads are valid JSON
					}
					evs[i].payload = string(p)
				}
			}
		}
		s := &session{id: sid, key: Tenant + "/" + sid, events: evs,
			sched: make([]int64, len(evs)), acked: make([]bool, len(evs)), sealed: make([]uint8, len(evs)), replied: make([]bool, len(evs))}
		r.mu.Lock()
		s.sampled = len(r.sessions)%r.cfg.StoreSample == 0
		s.badKey = len(r.sessions) < r.cfg.FaultBadKey
		r.sessions[s.key] = s
		r.mu.Unlock()
		a.cur, a.next = s, 0
	}
	s := a.cur
	ev := s.events[a.next]
	a.next++
	seq := a.next
	v := eventJSON(s.id, seq, sched.UnixMilli(), ev.typ, seq == 1, ev.payload)
	key := s.key
	r.mu.Lock()
	if s.badKey && seq == len(s.events) {
		key += "-bad"
		r.faults++
	}
	s.sched[seq-1] = sched.UnixNano()
	r.mu.Unlock()
	return pending{key: key, value: v, sched: sched}
}

// sessionSeed is the seed of session sid's script.
func sessionSeed(sid string) uint64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, sid)
	return h.Sum64()
}

// SessionEvents returns the event values the load tester publishes for
// session sid under mix m, key Tenant + "/" + sid, stamped tsMs, tsMs+1, …
// Benchmarks use it to run the load test's mix without a broker.
func SessionEvents(m Mix, sid string, tsMs int64) [][]byte {
	evs := script(m, sessionSeed(sid), sid)
	out := make([][]byte, len(evs))
	for i, ev := range evs {
		out[i] = eventJSON(sid, i+1, tsMs+int64(i), ev.typ, i == 0, ev.payload)
	}
	return out
}

// eventJSON is the envelope of one scripted event of session id, written
// by hand rather than with fmt (a tenth of the load tester's CPU at high
// rates); ids and types are ASCII, so Go quoting is JSON quoting.
func eventJSON(id string, seq int, tsMs int64, typ envelope.Type, withManifest bool, payload string) []byte {
	v := make([]byte, 0, 160+len(id)+len(payload))
	v = append(v, `{"tenant_id":`...)
	v = strconv.AppendQuote(v, Tenant)
	v = append(v, `,"session_id":`...)
	v = strconv.AppendQuote(v, id)
	v = append(v, `,"seq":`...)
	v = strconv.AppendInt(v, int64(seq), 10)
	v = append(v, `,"ts_unix_ms":`...)
	v = strconv.AppendInt(v, tsMs, 10)
	v = append(v, `,"event_type":`...)
	v = strconv.AppendQuote(v, string(typ))
	if withManifest {
		v = append(v, `,"manifest":"`+Manifest+`"`...)
	}
	v = append(v, `,"payload":`...)
	v = append(v, payload...)
	return append(v, '}')
}

// acked records the acknowledgement (or failure) of one event.
func (r *run) acked(key string, value []byte, err error) {
	if err != nil {
		r.publishFailed(1, err)
		return
	}
	seq := seqOf(value)
	key = strings.TrimSuffix(key, "-bad")
	now := time.Now().UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[key]
	if s == nil || seq < 1 || int(seq) > len(s.events) || s.acked[seq-1] {
		return
	}
	s.acked[seq-1] = true
	if w := s.events[seq-1].want; w != "" {
		r.expected[w]++
	}
	if r.measured(s.sched[seq-1]) {
		record(r.hAck, now, s.sched[seq-1])
	}
	r.published.Add(1)
}

// publishFailed counts n events not acknowledged because of err, and keeps
// the first error for the report.
func (r *run) publishFailed(n int, err error) {
	r.failed.Add(int64(n))
	r.mu.Lock()
	if r.pubErr == nil {
		r.pubErr = err
	}
	r.mu.Unlock()
}

func (r *run) completion(msgs []kafka.Message, err error) {
	for _, m := range msgs {
		r.acked(string(m.Key), m.Value, err)
	}
}

// seqOf extracts "seq" from an event this package encoded.
func seqOf(v []byte) uint64 {
	const tag = `"seq":`
	i := strings.Index(string(v), tag)
	if i < 0 {
		return 0
	}
	var n uint64
	for _, c := range v[i+len(tag):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}

// decisionReply is the part of an aegis.decisions reply the run reads.
type decisionReply struct {
	SessionID string `json:"session_id"`
	TenantID  string `json:"tenant_id"`
	Seq       uint64 `json:"seq"`
	Outcome   string `json:"outcome"`
	Reason    string `json:"reason"`
}

// rejection is the part of an aegis.rejected record the run reads.
type rejection struct {
	Reason string `json:"reason"`
	Key    string `json:"key"`
}

// read consumes topics (of the sealed, decisions and rejected topics)
// from the run's start offsets until ctx ends (an error) or, once r.ends
// is closed, until it has read up to r.endOffsets (nil).
func (r *run) read(ctx context.Context, cons *stream.Consumer, topics []string) error {
	dec := envelope.Decoder{Sealed: true}
	prefix := Tenant + "/" + r.cfg.RunID + "-"
	var ends map[string]map[int32]int64
	for {
		if ends == nil {
			select {
			case <-r.ends:
				ends = map[string]map[int32]int64{}
				for _, t := range topics {
					ends[t] = r.endOffsets[t]
				}
			default:
			}
		}
		if ends != nil && caughtUp(cons, r.starts, ends) {
			return nil
		}
		pollCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		recs, err := cons.Poll(pollCtx)
		cancel()
		if err != nil && len(recs) == 0 {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return err
		}
		now := time.Now()
		r.mu.Lock()
		for _, rec := range recs {
			switch rec.Topic {
			case r.topics.Sealed:
				r.onSealed(dec, rec, now)
			case r.topics.Decisions:
				if strings.HasPrefix(string(rec.Key), prefix) {
					r.onDecision(rec, now)
				}
			case r.topics.Rejected:
				var rj rejection
				if json.Unmarshal(rec.Value, &rj) == nil && strings.HasPrefix(rj.Key, prefix) {
					r.rejected[rj.Reason]++
				}
			}
		}
		r.mu.Unlock()
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
			// A fetch error the client does not retry (records lost to
			// retention, say): what was read with it is counted, but the
			// outcome can no longer be complete.
			return err
		}
	}
}

// onDecision accounts one reply on the decisions topic; r.mu is held.
func (r *run) onDecision(rec *stream.Record, now time.Time) {
	var d decisionReply
	if json.Unmarshal(rec.Value, &d) != nil {
		return
	}
	if s := r.sessions[string(rec.Key)]; s != nil && d.Seq >= 1 && int(d.Seq) <= len(s.sched) && s.sched[d.Seq-1] != 0 && !s.replied[d.Seq-1] {
		s.replied[d.Seq-1] = true
		if r.measured(s.sched[d.Seq-1]) {
			record(r.hDecision, now.UnixNano(), s.sched[d.Seq-1])
		}
		r.decided.Add(1)
		// The reply is what the agent acts on: it must carry the expected
		// decision, as the sealed proposal must.
		if want, got := s.events[d.Seq-1].want, d.Outcome+"/"+d.Reason; want != "" && got != want {
			r.badReplies++
			if len(r.mismatch) < 20 {
				r.mismatch = append(r.mismatch, fmt.Sprintf("reply %s seq %d: got %s, want %s", s.id, d.Seq, got, want))
			}
		}
	}
}

// caughtUp reports whether cons has read every partition from starts up
// to ends.
func caughtUp(cons *stream.Consumer, starts, ends map[string]map[int32]int64) bool {
	for t, e := range ends {
		for p, off := range e {
			if off > starts[t][p] && cons.Position(t, p) < off {
				return false
			}
		}
	}
	return true
}

// measured reports whether an event due at sched (Unix ns) counts in the
// latency histograms: it is due after the warm-up.
func (r *run) measured(sched int64) bool {
	return r.cfg.Warmup == 0 || sched >= r.start.Add(r.cfg.Warmup).UnixNano()
}

// steadyFrom is the start of the steady window: the second half of the
// publishing phase, after any ramp.
func (r *run) steadyFrom() time.Duration { return max(r.cfg.Ramp, r.cfg.Duration/2) }

// onSealed accounts one sealed record; r.mu is held.
func (r *run) onSealed(dec envelope.Decoder, rec *stream.Record, now time.Time) {
	s := r.sessions[string(rec.Key)]
	if s == nil {
		if strings.HasPrefix(string(rec.Key), Tenant+"/"+r.cfg.RunID+"-") {
			r.unexpect++
		}
		return
	}
	// The record counts as the event sent at its key and seq only if it is
	// that event: its session's, at a seq that was sent, of that type.
	// Otherwise a record sealed under another session's key would stand
	// for an event of this one that was never sealed.
	ev, err := dec.Decode(rec.Value)
	if err != nil || ev.Seq < 1 || int(ev.Seq) > len(s.events) || ev.TenantID != Tenant || ev.SessionID != s.id ||
		s.sched[ev.Seq-1] == 0 || ev.Type != s.events[ev.Seq-1].typ {
		r.unexpect++
		return
	}
	i := ev.Seq - 1
	if s.sealed[i] < math.MaxUint8 { // saturates: a 256th copy must not read as none
		s.sealed[i]++
	}
	if s.sealed[i] > 1 {
		r.dupN.Add(1)
	} else {
		r.sealedN.Add(1)
		r.lastSeal = now
		if at := now.Sub(r.start); at >= r.steadyFrom() && at < r.cfg.Duration {
			r.steadyN++
		}
		if r.measured(s.sched[i]) {
			record(r.hSealed, now.UnixNano(), s.sched[i])
		}
	}
	if f := r.verifier.Add(ev); f != nil && len(r.mismatch) < 20 {
		r.mismatch = append(r.mismatch, fmt.Sprintf("chain %s seq %d: %s", s.id, f.Seq, f.Reason))
	}
	if want := s.events[i].want; want != "" && s.sealed[i] == 1 {
		got := "none"
		if ev.Decision != nil {
			got = string(ev.Decision.Outcome) + "/" + ev.Decision.Reason
		}
		r.reasons[got]++
		if got != want && len(r.mismatch) < 20 {
			r.mismatch = append(r.mismatch, fmt.Sprintf("decision %s seq %d: got %s, want %s", s.id, ev.Seq, got, want))
		}
	}
}

// pollStore reads, every 100ms, the highest stored seq and the number of
// distinct stored seqs of the run's sessions that are not fully stored yet
// — while publishing only the sampled ones (Config.StoreSample), afterwards
// all — and records publish → queryable latency for every newly stored
// seq of a sampled session (resolution: the poll interval). Asking only
// for unfinished sessions keeps the probe's cost flat over a long run
// instead of rescanning everything the run stored.
func (r *run) pollStore(ctx context.Context, st stores.Store) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	const chunk = 500
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var pending []string
		all := r.publishDone.Load()
		r.mu.Lock()
		for _, s := range r.sessions {
			if (all || s.sampled) && s.stored < uint64(len(s.sched)) && len(s.sched) > 0 && s.sched[s.stored] != 0 {
				pending = append(pending, "'"+s.id+"'")
			}
		}
		r.mu.Unlock()
		for i := 0; i < len(pending); i += chunk {
			q := fmt.Sprintf("SELECT session_id, max(seq), count(DISTINCT seq) FROM audit_events WHERE tenant_id = '%s' AND session_id IN (%s) GROUP BY session_id",
				Tenant, strings.Join(pending[i:min(i+chunk, len(pending))], ","))
			_, rows, err := st.Query(ctx, q)
			r.mu.Lock()
			r.storeErr = err
			r.mu.Unlock()
			if err != nil {
				continue // the store may be busy; the drain timeout bounds the wait
			}
			r.recordStored(rows)
		}
	}
}

// recordStored accounts rows of (session_id, max(seq), count(DISTINCT seq)).
// A session counts as stored up to the smaller of the two: the store writes
// a session in seq order, so they are equal unless an event is missing, and
// a missing event in the middle must not count as stored because the
// session's last one is.
func (r *run) recordStored(rows [][]any) {
	now := time.Now().UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, row := range rows {
		sid, _ := row[0].(string)
		top := min(toUint(row[1]), toUint(row[2]))
		s := r.sessions[Tenant+"/"+sid]
		if s == nil {
			continue
		}
		for ; s.stored < top && int(s.stored) < len(s.sched); s.stored++ {
			if at := s.sched[s.stored]; at != 0 && s.sampled && r.measured(at) {
				record(r.hStored, now, at)
			}
			r.storedN.Add(1)
		}
	}
}

func toUint(v any) uint64 {
	switch x := v.(type) {
	case int64:
		return uint64(max(x, 0))
	case uint64:
		return x
	case int:
		return uint64(max(x, 0))
	case uint32:
		return uint64(x)
	case float64:
		return uint64(max(x, 0))
	case string:
		var n uint64
		_, _ = fmt.Sscan(x, &n)
		return n
	}
	return 0
}
