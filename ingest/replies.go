package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// verdict is what the pipeline said about a record the gateway published:
// exactly one of Reply (a proposal's decision), Decided (the accepted event,
// canonical) and Rejection is set.
type verdict struct {
	Reply     *decider.Reply
	Decided   []byte
	Rejection *pipeline.Rejection
}

type seqKey struct {
	key string // "<tenant>/<session>"
	seq uint64
}

// waiter waits for the verdict on one published record.
type waiter struct {
	k         seqKey
	published []byte // the exact bytes published: a rejection carries them back
	canonical []byte // the canonical event: what the decider writes to decided for non-proposals
	callID    string // for proposals: the reply must be for this call
	toolName  string
	digest    string // for proposals: pipeline.ContentDigest of what was published
	proposal  bool
	ch        chan verdict // buffered 1
}

// replies is the one shared tail of the decisions, decided and rejected
// topics. Handlers register a waiter before publishing; the tail dispatches
// each record to the waiters of its (tenant, session, seq), and remembers
// the most recent decisions so that a waiter registered after its reply
// arrived (or a retried proposal whose duplicate the decider dropped)
// still gets it. No request ever creates a consumer.
type replies struct {
	topics pipeline.Topics

	mu      sync.Mutex
	waiters map[seqKey][]*waiter
	keys    map[string]int // waiters per session key: the cheap filter
	recent  map[seqKey]*decider.Reply
	ring    []seqKey
	next    int

	ready atomic.Bool
}

// recentReplies bounds the remembered decisions.
const recentReplies = 1 << 16

func newReplies(t pipeline.Topics) *replies {
	return &replies{topics: t, waiters: make(map[seqKey][]*waiter), keys: make(map[string]int),
		recent: make(map[seqKey]*decider.Reply), ring: make([]seqKey, recentReplies)}
}

// register adds w; the returned function removes it (idempotent). If a
// matching decision is already remembered, it is delivered at once.
func (r *replies) register(w *waiter) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiters[w.k] = append(r.waiters[w.k], w)
	r.keys[w.k.key]++
	if rep := r.recent[w.k]; rep != nil && w.answeredBy(rep) {
		w.ch <- verdict{Reply: rep}
	}
	return func() { r.unregister(w) }
}

// answeredBy reports whether rep decides the proposal w published. The
// (session, seq) and call_id are not enough: another proposal can reuse both
// (a client that sets seq and call_id itself, or an MCP call naming the
// call_id of an earlier proposal), and must not be handed the decision of
// content the policy saw instead of its own. The reply's content digest
// settles it; a reply without one comes from a decider older than the
// digest and is matched on call_id and tool name, as those deciders were.
func (w *waiter) answeredBy(rep *decider.Reply) bool {
	if !w.proposal || rep.CallID != w.callID {
		return false
	}
	if rep.ContentDigest == "" {
		return rep.ToolName == w.toolName
	}
	return rep.ContentDigest == w.digest
}

func (r *replies) unregister(w *waiter) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ws := r.waiters[w.k]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			r.keys[w.k.key]--
			if r.keys[w.k.key] == 0 {
				delete(r.keys, w.k.key)
			}
			break
		}
	}
	if len(ws) == 0 {
		delete(r.waiters, w.k)
	} else {
		r.waiters[w.k] = ws
	}
}

// run tails the topics of c until ctx is done, and then returns ctx's
// error; it returns earlier only on an error the client does not retry.
func (r *replies) run(ctx context.Context, c *stream.Consumer) error {
	for {
		// A bounded poll: an idle tail still reports itself healthy.
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		recs, err := c.Poll(pctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err == nil || errors.Is(err, context.DeadlineExceeded):
			r.ready.Store(true)
		case errors.Is(err, stream.ErrBroker):
			r.ready.Store(false)
		default:
			return err
		}
		for _, rec := range recs {
			r.dispatch(rec)
		}
	}
}

type sessionFields struct {
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	Seq       uint64 `json:"seq"`
}

func (r *replies) dispatch(rec *stream.Record) {
	switch rec.Topic {
	case r.topics.Decisions:
		var rep decider.Reply
		if json.Unmarshal(rec.Value, &rep) != nil {
			return
		}
		k := seqKey{rep.TenantID + "/" + rep.SessionID, rep.Seq}
		r.mu.Lock()
		defer r.mu.Unlock()
		if old := r.ring[r.next]; old.key != "" {
			delete(r.recent, old)
		}
		r.ring[r.next], r.next = k, (r.next+1)%len(r.ring)
		r.recent[k] = &rep
		for _, w := range r.waiters[k] {
			if w.answeredBy(&rep) {
				r.deliver(w, verdict{Reply: &rep})
			}
		}
	case r.topics.Decided:
		if !r.watched(rec.Key) {
			return
		}
		var f sessionFields
		if json.Unmarshal(rec.Value, &f) != nil {
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, w := range r.waiters[seqKey{f.TenantID + "/" + f.SessionID, f.Seq}] {
			if !w.proposal && bytes.Equal(w.canonical, rec.Value) {
				r.deliver(w, verdict{Decided: rec.Value})
			}
		}
	case r.topics.Rejected:
		if !r.watched(rec.Key) {
			return
		}
		var rj pipeline.Rejection
		if json.Unmarshal(rec.Value, &rj) != nil || rj.Stage != decider.StageName {
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, w := range r.waiters[seqKey{rj.TenantID + "/" + rj.SessionID, rj.Seq}] {
			if rj.Original == string(w.published) {
				r.deliver(w, verdict{Rejection: &rj})
			}
		}
	}
}

func (r *replies) watched(key []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[string(key)] > 0
}

// deliver hands v to w unless w already has a verdict. r.mu is held.
func (r *replies) deliver(w *waiter, v verdict) {
	select {
	case w.ch <- v:
	default:
	}
}
