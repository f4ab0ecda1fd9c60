// Package decider turns a session's events into decisions. The Engine is the
// deterministic core (reducer + policy) shared by the decider stage, the
// stateless decide API, aegisctl and the replayer; the stage runs it on Kafka.
package decider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// Manifests resolves a session's manifest reference for a tenant. It is
// satisfied by *manifest.Registry.
type Manifests interface {
	Resolve(tenant, ref string) (*manifest.Manifest, error)
}

// Engine decides proposals. It is safe for concurrent use by many sessions;
// each Snapshot must be used by one goroutine at a time.
type Engine struct {
	policy    *policy.Engine
	manifests Manifests
	// digests caches Manifest.Digest per manifest: manifests are immutable
	// once loaded, and hashing one costs more than the rest of a decision's
	// bookkeeping.
	digests sync.Map // *manifest.Manifest -> string
}

// NewEngine returns an Engine deciding with p and resolving manifests with m
// (nil: no manifests, so every proposal is denied MANIFEST_UNKNOWN).
func NewEngine(p *policy.Engine, m Manifests) *Engine {
	return &Engine{policy: p, manifests: m}
}

// PolicyRevision returns the revision of the engine's policy bundle.
func (e *Engine) PolicyRevision() string { return e.policy.Revision() }

// Resolve returns the manifest of the session snap belongs to, as named by
// its first event (ev when snap is empty). It returns nil when none resolves.
func (e *Engine) Resolve(snap *session.Snapshot, ev *envelope.Event) *manifest.Manifest {
	if e.manifests == nil {
		return nil
	}
	ref := snap.Manifest
	if snap.Events == 0 {
		ref = ev.Manifest
	}
	m, err := e.manifests.Resolve(snap.TenantID, ref)
	if err != nil {
		return nil
	}
	return m
}

// Decide judges the proposal ev on snap, the state of its session before
// it. Policy outcomes (including evaluation errors, which are denies with
// POLICY_ERROR) are returned as decisions; an error means the decision could
// not be made at all and must not be treated as any outcome.
func (e *Engine) Decide(ctx context.Context, snap *session.Snapshot, ev *envelope.Event) (*envelope.Decision, error) {
	d, _, _, err := e.decideResolved(ctx, snap, ev, nil)
	return d, err
}

// decideResolved is Decide; it also returns the proposal's tool call and
// call digest, and takes bare, ev's canonical form without decision and
// chain fields when the caller has it already (nil: encode it here).
func (e *Engine) decideResolved(ctx context.Context, snap *session.Snapshot, ev *envelope.Event, bare []byte) (*envelope.Decision, envelope.ToolCall, string, error) {
	m := e.Resolve(snap, ev)
	var digest string
	if m != nil {
		digest = e.manifestDigest(m)
	}
	return e.decide(ctx, snap, ev, m, digest, bare)
}

// DecideWith is Decide with an explicit manifest (nil: none), for the
// stateless decide request {event, snapshot, manifest}.
func (e *Engine) DecideWith(ctx context.Context, snap *session.Snapshot, ev *envelope.Event, m *manifest.Manifest) (*envelope.Decision, error) {
	var digest string
	if m != nil {
		digest = m.Digest()
	}
	d, _, _, err := e.decide(ctx, snap, ev, m, digest, nil)
	return d, err
}

func (e *Engine) decide(ctx context.Context, snap *session.Snapshot, ev *envelope.Event, m *manifest.Manifest, manifestDigest string, bare []byte) (*envelope.Decision, envelope.ToolCall, string, error) {
	var tc envelope.ToolCall
	if ev.Type != envelope.ToolCallProposed {
		return nil, tc, "", fmt.Errorf("decider: %s/%s/%d: only %s events are decided, got %s", ev.TenantID, ev.SessionID, ev.Seq, envelope.ToolCallProposed, ev.Type)
	}
	tc, err := ev.ToolCall()
	if err != nil {
		return nil, tc, "", err
	}
	callDigest, err := session.CallDigest(tc.ToolName, tc.Args)
	if err != nil {
		return nil, tc, "", fmt.Errorf("decider: %s/%s/%d: %w", ev.TenantID, ev.SessionID, ev.Seq, err)
	}
	d := &envelope.Decision{PolicyRevision: e.policy.Revision(), ManifestDigest: manifestDigest}
	if d.InputDigest, err = inputDigest(snap, ev, bare, d.ManifestDigest); err != nil {
		return nil, tc, "", err
	}
	res, evalErr := e.policy.Eval(ctx, policy.Input{Event: ev, Snapshot: snap, Manifest: m, CallDigest: callDigest})
	if evalErr != nil && ctx.Err() != nil {
		// A cancelled evaluation says nothing about the policy.
		return nil, tc, "", fmt.Errorf("decider: %s/%s/%d: %w", ev.TenantID, ev.SessionID, ev.Seq, errors.Join(evalErr, ctx.Err()))
	}
	d.Outcome, d.Reason, d.Constraints = res.Outcome, res.Reason, res.Constraints
	if m == nil && d.Outcome != envelope.Deny {
		d.Outcome, d.Reason, d.Constraints = envelope.Deny, envelope.ReasonManifestUnknown, envelope.Constraints{}
	}
	if d.Outcome != envelope.Allow {
		d.Constraints = envelope.Constraints{}
	}
	return d, tc, callDigest, nil
}

// manifestDigest returns m's digest, cached: only manifests from the
// engine's registry come here, so the cache is bounded by the registry.
func (e *Engine) manifestDigest(m *manifest.Manifest) string {
	if d, ok := e.digests.Load(m); ok {
		return d.(string)
	}
	d := m.Digest()
	e.digests.Store(m, d)
	return d
}

// Step decides ev when it is a proposal (setting ev.Decision) and folds it
// into snap. On error neither ev nor snap is changed.
func (e *Engine) Step(ctx context.Context, snap *session.Snapshot, ev *envelope.Event) error {
	_, err := e.step(ctx, snap, ev, nil)
	return err
}

// step is Step; it also returns the tool call of a decided proposal. bare,
// when not nil, is ev's canonical form without decision and chain fields
// (what pipeline.ContentDigest encodes), so that the input digest does not
// encode the event again.
func (e *Engine) step(ctx context.Context, snap *session.Snapshot, ev *envelope.Event, bare []byte) (envelope.ToolCall, error) {
	if ev.Type == envelope.ToolCallProposed {
		d, tc, callDigest, err := e.decideResolved(ctx, snap, ev, bare)
		if err != nil {
			return tc, err
		}
		ev.Decision = d
		if err := snap.ApplyProposal(ev, tc, callDigest); err != nil {
			ev.Decision = nil
			return tc, err
		}
		return tc, nil
	}
	return envelope.ToolCall{}, snap.Apply(ev)
}

// InputDigest is the digest recorded in a decision: "sha256:<hex>" of the
// canonical JSON {"event":E,"manifest_digest":M,"snapshot":S}, where E is the
// event without decision and chain fields, M the manifest digest ("" when
// none) and S the snapshot before the event. Two decisions with the same
// input digest and policy revision must be identical.
func InputDigest(snap *session.Snapshot, ev *envelope.Event, manifestDigest string) (string, error) {
	return inputDigest(snap, ev, nil, manifestDigest)
}

// digestBufs recycles the buffers input digests are computed over.
var digestBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// inputDigest is InputDigest; bare, when not nil, is E already encoded.
func inputDigest(snap *session.Snapshot, ev *envelope.Event, bare []byte, manifestDigest string) (string, error) {
	bp := digestBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 {
			digestBufs.Put(bp)
		}
	}()
	b := append((*bp)[:0], `{"event":`...)
	var err error
	if bare != nil {
		b = append(b, bare...)
	} else {
		e := *ev
		e.Decision, e.PrevHash, e.Hash = nil, "", ""
		if b, err = e.AppendCanonical(b, false); err != nil {
			return "", fmt.Errorf("decider: input digest: %w", err)
		}
	}
	b = append(b, `,"manifest_digest":`...)
	if b, err = canon.AppendString(b, manifestDigest); err != nil {
		return "", fmt.Errorf("decider: input digest: %w", err)
	}
	b = append(b, `,"snapshot":`...)
	if b, err = snap.AppendCanonical(b); err != nil {
		return "", fmt.Errorf("decider: input digest: %w", err)
	}
	b = append(b, '}')
	*bp = b
	sum := sha256.Sum256(b)
	const prefix = "sha256:"
	var out [len(prefix) + 2*sha256.Size]byte
	copy(out[:], prefix)
	hex.Encode(out[len(prefix):], sum[:])
	return string(out[:]), nil
}
