package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// publishAll writes values (already validated events) to the events topic
// and returns, per value, nil once Kafka acknowledged it (acks=all,
// idempotent producer) or the failure. Values of one session keep their
// order.
func (s *Server) publishAll(ctx context.Context, keys, values [][]byte) []error {
	errs := make([]error, len(values))
	var wg sync.WaitGroup
	wg.Add(len(values))
	for i := range values {
		s.prod.ProduceAsync(ctx, stream.Message{Topic: s.env.Topics.Events, Key: keys[i], Value: values[i]}, func(_ *stream.Record, err error) {
			errs[i] = err
			wg.Done()
		})
	}
	wg.Wait()
	return errs
}

// seqLocks serializes, per session, choosing a gateway-assigned seq and
// publishing the event at it. Its entries live while someone holds or waits
// for them, so its size follows the requests in flight.
type seqLocks struct {
	mu sync.Mutex
	m  map[string]*seqLock
}

type seqLock struct {
	held chan struct{} // buffered 1: full while held
	refs int           // holders and waiters
}

// lock takes key's lock, or returns ctx's error if ctx ends first; the
// returned function releases it.
func (l *seqLocks) lock(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*seqLock)
	}
	k := l.m[key]
	if k == nil {
		k = &seqLock{held: make(chan struct{}, 1)}
		l.m[key] = k
	}
	k.refs++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
	select {
	case k.held <- struct{}{}:
		return func() { <-k.held; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// maxAssignAttempts bounds how often a server-assigned seq is retried after
// the decider reported that another event took it.
const maxAssignAttempts = 8

// errWaitTimeout reports that the record was published (and acknowledged)
// but no verdict arrived in time.
var errWaitTimeout = errors.New("ingest: no verdict before the deadline")

// submit publishes ev and waits until the decider accepted or rejected it.
// With assign, ev.Seq is chosen by the gateway (the seq allocation rule of
// docs/api.md): the session's next seq as far as the gateway knows, and on
// a SEQ_CONFLICT, SEQ_STALE or SEQ_GAP rejection the seq the decider
// expected, up to maxAssignAttempts times. Without assign, ev is published
// as it is. The value published is ev's canonical form.
//
// The returned verdict is the decision reply (proposals), the accepted
// event (others) or the rejection. An error is errWaitTimeout (the record
// is in Kafka, its verdict will come later), a broker failure (503; also
// when the reply tail could not list its start offsets before ctx's
// deadline, and then nothing was published) or ctx's error.
func (s *Server) submit(ctx context.Context, ev *envelope.Event, assign bool, kind string) (verdict, error) {
	if err := s.awaitTail(ctx); err != nil {
		return verdict{}, err
	}
	key := string(ev.Key())
	var callID, toolName string
	if ev.Type == envelope.ToolCallProposed {
		tc, _ := ev.ToolCall()
		callID, toolName = tc.CallID, tc.ToolName
	}
	// floor is the seq the decider expects after a rejection (0 before);
	// lower says it is below the seq tried (SEQ_GAP).
	var floor uint64
	var lower bool
	for attempt := 1; ; attempt++ {
		unlock := func() {}
		if assign {
			// The seq is chosen and published under the session's lock,
			// and taken (setHint) before the next writer chooses: writers
			// of one session on this gateway never guess the same seq.
			var err error
			if unlock, err = s.seqLocks.lock(ctx, key); err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					return verdict{}, &apiError{Status: http.StatusServiceUnavailable, Code: CodeBrokerUnavailable, RetryAfter: time.Second,
						Message: "the session's earlier publishes on this gateway did not finish before the deadline; nothing was published"}
				}
				return verdict{}, err
			}
			if lower {
				s.resetHint(key, floor-1)
			}
			// A floor above the seq tried was the session's next seq when
			// the decider read the event: writers of this gateway may have
			// taken it since, and the hint knows.
			ev.Seq = max(floor, s.hint(key)+1)
		}
		value, err := ev.AppendCanonical(nil, false)
		if err != nil {
			unlock()
			return verdict{}, fmt.Errorf("ingest: encode %s/%d: %w", key, ev.Seq, err)
		}
		if len(value) > s.env.MaxEventBytes {
			unlock()
			// Events the gateway builds itself (APPROVAL_DECIDED carries the
			// approver's reason) are bounded like a client's: the decider
			// would reject it TOO_LARGE, and one over the topic's record
			// limit is refused by the producer, which is no broker failure.
			return verdict{}, errf(http.StatusRequestEntityTooLarge, envelope.CodeTooLarge,
				"the %s event would be %d bytes, limit is %d; nothing was published", ev.Type, len(value), s.env.MaxEventBytes)
		}
		w := &waiter{k: seqKey{key, ev.Seq}, published: value, canonical: value, callID: callID, toolName: toolName,
			proposal: ev.Type == envelope.ToolCallProposed, ch: make(chan verdict, 1)}
		if w.proposal {
			if w.digest, _, err = pipeline.ContentDigest(ev, nil); err != nil {
				unlock()
				return verdict{}, fmt.Errorf("ingest: digest %s/%d: %w", key, ev.Seq, err)
			}
		}
		unregister := s.replies.register(w)
		start := s.now()
		if errs := s.publishAll(ctx, [][]byte{[]byte(key)}, [][]byte{value}); errs[0] != nil {
			unlock()
			unregister()
			return verdict{}, s.brokerError(errs[0])
		}
		if assign {
			// The seq is taken as soon as Kafka holds the event, verdict
			// or not: the next writer of the session must not publish at
			// the same seq while this one waits (or after it timed out),
			// or all but one of them would be rejected SEQ_CONFLICT with
			// no one waiting for the verdict.
			s.setHint(key, ev.Seq)
		}
		unlock()
		var v verdict
		select {
		case v = <-w.ch:
			unregister()
		case <-ctx.Done():
			unregister()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				s.metrics.timeouts.Inc()
				return verdict{}, errWaitTimeout
			}
			return verdict{}, ctx.Err()
		}
		s.metrics.waits.WithLabelValues(kind).Observe(s.now().Sub(start).Seconds())
		if rj := v.Rejection; rj != nil {
			if assign && rj.Expected > 0 && attempt < maxAssignAttempts && rejectionStatus(rj.Reason) == http.StatusConflict {
				// The decider's expected seq is the authority, lower
				// (SEQ_GAP after a guess past a refused event) or higher.
				floor, lower = rj.Expected, rj.Expected < ev.Seq
				continue
			}
			return v, nil
		}
		s.setHint(key, ev.Seq)
		return v, nil
	}
}

// brokerError is the answer to a publish Kafka did not acknowledge. The
// cause (broker addresses, client internals) goes to the gateway's log,
// not to the client.
func (s *Server) brokerError(err error) error {
	s.log.Warn("kafka did not acknowledge a publish", "err", err)
	return &apiError{Status: http.StatusServiceUnavailable, Code: CodeBrokerUnavailable,
		Message: "the Kafka brokers did not acknowledge; the gateway's log has the cause", RetryAfter: time.Second}
}

// decodeClient decodes one event a client sent. A seq of 0 or an absent
// (or null) seq asks the gateway to assign it (assign is then true and
// ev.Seq is a placeholder).
func (s *Server) decodeClient(raw []byte) (ev *envelope.Event, assign bool, err error) {
	ev, err = s.dec.Decode(raw)
	if err == nil {
		return ev, false, nil
	}
	var e *envelope.Error
	if !errors.As(err, &e) || e.Field != "seq" {
		return nil, false, err
	}
	fixed, ferr := s.normalize(raw, func(m map[string]json.RawMessage) error {
		if v, ok := given(m, "seq"); ok && string(v) != "0" {
			return err
		}
		m["seq"] = json.RawMessage("1")
		return nil
	})
	if ferr != nil {
		return nil, false, ferr
	}
	if ev, err = s.dec.Decode(fixed); err != nil {
		return nil, false, err
	}
	return ev, true, nil
}

// checkClock refuses an event stamped further than --max-clock-skew from
// the gateway's clock (docs/api.md, Clock skew).
func (s *Server) checkClock(ev *envelope.Event) error {
	if s.cfg.MaxClockSkew <= 0 {
		return nil
	}
	// ts_unix_ms > 0 (the decoder) and now > 0: the difference cannot overflow.
	now := s.now().UnixMilli()
	d := ev.TsUnixMs - now
	if d > s.cfg.MaxClockSkew.Milliseconds() || -d > s.cfg.MaxClockSkew.Milliseconds() {
		return errf(http.StatusBadRequest, CodeClockSkew, "ts_unix_ms %d is %+d ms from the gateway's clock (%d); at most %s either way is accepted (--max-clock-skew)",
			ev.TsUnixMs, d, now, s.cfg.MaxClockSkew)
	}
	return nil
}

// normalize rewrites the top-level members of a JSON object with fix.
// The document first passes the strict canonical gate (duplicate keys,
// invalid UTF-8, unsafe numbers, trailing data are errors with the
// decoder's codes), so the map cannot hide anything.
func (s *Server) normalize(raw []byte, fix func(map[string]json.RawMessage) error) ([]byte, error) {
	if len(raw) > s.env.MaxEventBytes {
		return nil, &envelope.Error{Code: envelope.CodeTooLarge, Msg: fmt.Sprintf("event is %d bytes, limit is %d", len(raw), s.env.MaxEventBytes)}
	}
	if _, err := canon.Append(nil, raw); err != nil {
		_, derr := s.dec.Decode(raw)
		if derr == nil {
			derr = err
		}
		return nil, derr
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, &envelope.Error{Code: envelope.CodeInvalidJSON, Msg: "an event must be a JSON object"}
	}
	if err := fix(m); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	// json.Marshal writes "<", ">", "&", U+2028 and U+2029 as six-byte
	// escapes: the result is held to the size limit in canonical form,
	// as the decider holds the event.
	return canon.Append(nil, b)
}

// given returns the canonical form of the member k of m (as normalize
// passes it to fix) and whether it is there: a null member counts as
// absent, as it does for the decoder (docs/envelope.md), and a value is
// compared as the decoder reads it, so "seq": -0 and 0.0 are 0.
func given(m map[string]json.RawMessage, k string) (json.RawMessage, bool) {
	v, ok := m[k]
	if !ok || string(v) == "null" {
		return nil, false
	}
	if c, err := canon.Append(nil, v); err == nil {
		v = c
	}
	return v, true
}

// rejected builds the error response of a pipeline rejection.
func rejected(rj *pipeline.Rejection) (int, *ErrorBody) {
	return rejectionStatus(rj.Reason), rejectionError(rj)
}
