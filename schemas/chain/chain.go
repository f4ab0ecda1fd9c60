// Package chain links sealed events into per-session SHA-256 hash chains and
// verifies them. The format is specified byte for byte in docs/chain.md, with
// golden vectors in schemas/testdata/chain, so that an auditor can write an
// independent verifier from the document alone.
//
// hash = lowercase hex SHA-256 of the RFC 8785 canonical JSON of the sealed
// event without its "hash" member. The event includes tenant_id, session_id,
// seq, prev_hash and the decision, so editing, deleting, reordering,
// truncating or splicing records across sessions or tenants breaks the chain.
package chain

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"aegis.dev/aegis/schemas/envelope"
)

// Genesis is the prev_hash of the first event of every session: 64 zeros.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// IsHash reports whether s has the form of a hash Hash returns (and of
// any SHA-256 digest Aegis writes bare): 64 lower-case hex digits.
func IsHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Hash computes the chain hash of e (its "hash" member is ignored).
func Hash(e *envelope.Event) (string, error) {
	var sum [sha256.Size]byte
	if err := hashInto(&sum, e); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum[:]), nil
}

func hashInto(sum *[sha256.Size]byte, e *envelope.Event) error {
	bp := bufPool.Get().(*[]byte)
	b, err := e.AppendCanonical((*bp)[:0], false)
	if err == nil {
		*sum = sha256.Sum256(b)
	}
	*bp = b[:0]
	bufPool.Put(bp)
	if err != nil {
		return fmt.Errorf("chain: canonical form of %s/%s/%d: %w", e.TenantID, e.SessionID, e.Seq, err)
	}
	return nil
}

// Head is the last link of a session's chain: what the sealer persists and
// what a verifier compares against to detect truncation.
type Head struct {
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	// Seq is the seq of the last sealed event (the number of events, since
	// seqs are dense from 1).
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Link seals e as the successor of head (nil for a new session): it checks
// that e belongs to head's session with the next seq, sets e.PrevHash and
// e.Hash, and returns the new head. It does not modify e on error.
func Link(head *Head, e *envelope.Event) (Head, error) {
	prev, want := Genesis, uint64(1)
	if head != nil {
		if head.TenantID != e.TenantID || head.SessionID != e.SessionID {
			return Head{}, fmt.Errorf("chain: link %s/%s/%d onto head of %s/%s", e.TenantID, e.SessionID, e.Seq, head.TenantID, head.SessionID)
		}
		prev, want = head.Hash, head.Seq+1
	}
	if e.Seq != want {
		return Head{}, fmt.Errorf("chain: link %s/%s: seq %d, want %d", e.TenantID, e.SessionID, e.Seq, want)
	}
	saved := e.PrevHash
	e.PrevHash = prev
	h, err := Hash(e)
	if err != nil {
		e.PrevHash = saved
		return Head{}, err
	}
	e.Hash = h
	return Head{TenantID: e.TenantID, SessionID: e.SessionID, Seq: e.Seq, Hash: h}, nil
}
