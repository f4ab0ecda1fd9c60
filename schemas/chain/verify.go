package chain

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"

	"aegis.dev/aegis/schemas/envelope"
)

// Failure reasons reported by the Verifier. They are stable codes.
const (
	// ReasonHashMismatch: the stored hash is not the hash of the record.
	ReasonHashMismatch = "HASH_MISMATCH"
	// ReasonPrevHashMismatch: prev_hash is not the hash of the previous
	// record of the session (or Genesis for seq 1).
	ReasonPrevHashMismatch = "PREV_HASH_MISMATCH"
	// ReasonSeqGap: a seq is missing (deleted record) or the first record is
	// not seq 1.
	ReasonSeqGap = "SEQ_GAP"
	// ReasonSeqOrder: a seq repeats or goes backwards (duplicate or reorder).
	ReasonSeqOrder = "SEQ_ORDER"
	// ReasonTruncated: the session ends before its expected head.
	ReasonTruncated = "TRUNCATED"
	// ReasonHeadMismatch: the session's last record differs from its expected
	// head (a rewritten tail or a session longer than recorded).
	ReasonHeadMismatch = "HEAD_MISMATCH"
	// ReasonMissingSession: an expected head has no records at all.
	ReasonMissingSession = "MISSING_SESSION"
	// ReasonMalformed: the record cannot be canonicalized or lacks its hash.
	ReasonMalformed = "MALFORMED"
)

// Failure names the first bad record of a session and why.
type Failure struct {
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	Seq       uint64 `json:"seq"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail"`
}

func (f *Failure) Error() string {
	return fmt.Sprintf("%s/%s seq %d: %s: %s", f.TenantID, f.SessionID, f.Seq, f.Reason, f.Detail)
}

type sessionKey struct{ tenant, session string }

type sessionState struct {
	head   Head
	failed bool
}

// Verifier checks sealed events streamed in any interleaving of sessions
// (each session's events in seq order). It trusts nothing it is given: every
// hash is recomputed. A session stops being checked after its first failure.
// A Verifier is not safe for concurrent use.
type Verifier struct {
	sessions map[sessionKey]*sessionState
	failures []Failure
	events   int64
	buf      []byte
}

// NewVerifier returns an empty Verifier.
func NewVerifier() *Verifier {
	return &Verifier{sessions: make(map[sessionKey]*sessionState)}
}

// Add verifies the next event of its session. It returns the Failure if this
// event is the first bad one of its session, nil otherwise.
func (v *Verifier) Add(e *envelope.Event) *Failure {
	v.events++
	k := sessionKey{e.TenantID, e.SessionID}
	st := v.sessions[k]
	if st == nil {
		st = &sessionState{head: Head{TenantID: e.TenantID, SessionID: e.SessionID, Hash: Genesis}}
		v.sessions[k] = st
	}
	if st.failed {
		return nil
	}
	fail := func(reason, format string, args ...any) *Failure {
		st.failed = true
		f := Failure{TenantID: e.TenantID, SessionID: e.SessionID, Seq: e.Seq, Reason: reason, Detail: fmt.Sprintf(format, args...)}
		v.failures = append(v.failures, f)
		return &v.failures[len(v.failures)-1]
	}
	want := st.head.Seq + 1
	switch {
	case e.Seq > want:
		return fail(ReasonSeqGap, "expected seq %d, found %d", want, e.Seq)
	case e.Seq < want:
		return fail(ReasonSeqOrder, "seq %d after seq %d", e.Seq, st.head.Seq)
	}
	if e.Hash == "" {
		return fail(ReasonMalformed, "record has no hash")
	}
	var err error
	v.buf, err = e.AppendCanonical(v.buf[:0], false)
	if err != nil {
		return fail(ReasonMalformed, "%v", err)
	}
	sum := sha256.Sum256(v.buf)
	var hexSum [2 * sha256.Size]byte
	hex.Encode(hexSum[:], sum[:])
	if string(hexSum[:]) != e.Hash {
		return fail(ReasonHashMismatch, "stored hash %s, recomputed %s", e.Hash, hexSum[:])
	}
	if e.PrevHash != st.head.Hash {
		return fail(ReasonPrevHashMismatch, "prev_hash %s, previous record's hash %s", e.PrevHash, st.head.Hash)
	}
	st.head.Seq, st.head.Hash = e.Seq, e.Hash
	return nil
}

// CheckHeads compares every session against its expected head (for example
// the sealer's chain heads). It detects truncated and rewritten tails and
// sessions that vanished entirely. Sessions without an expected head are not
// affected.
func (v *Verifier) CheckHeads(heads []Head) []Failure {
	var out []Failure
	for _, h := range heads {
		st := v.sessions[sessionKey{h.TenantID, h.SessionID}]
		var f *Failure
		switch {
		case st == nil:
			f = CompareHead(nil, h)
		case st.failed:
			continue
		default:
			f = CompareHead(&st.head, h)
		}
		if f != nil {
			if st != nil {
				st.failed = true
			}
			out = append(out, *f)
		}
	}
	v.failures = append(v.failures, out...)
	return out
}

// CompareHead compares the last record of a session's chain (nil: the
// session has no records) with its expected head: MISSING_SESSION,
// TRUNCATED, HEAD_MISMATCH, or nil when they agree.
func CompareHead(last *Head, want Head) *Failure {
	switch {
	case last == nil:
		return &Failure{TenantID: want.TenantID, SessionID: want.SessionID, Seq: 1, Reason: ReasonMissingSession, Detail: fmt.Sprintf("expected %d records, found none", want.Seq)}
	case last.Seq < want.Seq:
		return &Failure{TenantID: want.TenantID, SessionID: want.SessionID, Seq: last.Seq + 1, Reason: ReasonTruncated, Detail: fmt.Sprintf("chain ends at seq %d, expected head seq %d", last.Seq, want.Seq)}
	case last.Seq != want.Seq || last.Hash != want.Hash:
		return &Failure{TenantID: want.TenantID, SessionID: want.SessionID, Seq: last.Seq, Reason: ReasonHeadMismatch, Detail: fmt.Sprintf("chain head is seq %d hash %s, expected seq %d hash %s", last.Seq, last.Hash, want.Seq, want.Hash)}
	}
	return nil
}

// Failures returns every failure found so far, in the order found.
func (v *Verifier) Failures() []Failure { return v.failures }

// Events returns how many events were checked.
func (v *Verifier) Events() int64 { return v.events }

// Heads returns the verified head of every session seen, sorted by tenant
// and session.
func (v *Verifier) Heads() []Head {
	out := make([]Head, 0, len(v.sessions))
	for _, st := range v.sessions {
		out = append(out, st.head)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].TenantID != out[j].TenantID {
			return out[i].TenantID < out[j].TenantID
		}
		return out[i].SessionID < out[j].SessionID
	})
	return out
}
