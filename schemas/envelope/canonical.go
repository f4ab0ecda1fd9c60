package envelope

import (
	"fmt"

	"aegis.dev/aegis/schemas/canon"
)

// AppendCanonical appends the RFC 8785 canonical JSON form of e to dst. With
// withHash false the "hash" member is left out: that is the form the chain
// hashes (docs/chain.md). Empty optional members (manifest, decision,
// prev_hash, hash) are omitted, exactly as in the JSON wire form, so
// canonicalizing the wire form with any RFC 8785 implementation gives the same
// bytes. e.Payload must be canonical already (Decode guarantees it); it is
// re-canonicalized only when it is not.
func (e *Event) AppendCanonical(dst []byte, withHash bool) ([]byte, error) {
	var err error
	// Members in RFC 8785 order (all keys are ASCII, so byte order is
	// UTF-16 order).
	dst = append(dst, '{')
	if e.Decision != nil {
		dst = append(dst, `"decision":`...)
		if dst, err = e.Decision.appendCanonical(dst); err != nil {
			return dst, err
		}
		dst = append(dst, ',')
	}
	dst = append(dst, `"event_type":`...)
	if dst, err = canon.AppendString(dst, string(e.Type)); err != nil {
		return dst, fmt.Errorf("event_type: %w", err)
	}
	if withHash && e.Hash != "" {
		dst = append(dst, `,"hash":`...)
		if dst, err = canon.AppendString(dst, e.Hash); err != nil {
			return dst, fmt.Errorf("hash: %w", err)
		}
	}
	if e.Manifest != "" {
		dst = append(dst, `,"manifest":`...)
		if dst, err = canon.AppendString(dst, e.Manifest); err != nil {
			return dst, fmt.Errorf("manifest: %w", err)
		}
	}
	dst = append(dst, `,"payload":`...)
	if len(e.Payload) == 0 {
		dst = append(dst, "{}"...)
	} else if dst, err = canon.Append(dst, e.Payload); err != nil {
		return dst, fmt.Errorf("payload: %w", err)
	}
	if e.PrevHash != "" {
		dst = append(dst, `,"prev_hash":`...)
		if dst, err = canon.AppendString(dst, e.PrevHash); err != nil {
			return dst, fmt.Errorf("prev_hash: %w", err)
		}
	}
	dst = append(dst, `,"seq":`...)
	if dst, err = canon.AppendUint(dst, e.Seq); err != nil {
		return dst, fmt.Errorf("seq: %w", err)
	}
	dst = append(dst, `,"session_id":`...)
	if dst, err = canon.AppendString(dst, e.SessionID); err != nil {
		return dst, fmt.Errorf("session_id: %w", err)
	}
	dst = append(dst, `,"tenant_id":`...)
	if dst, err = canon.AppendString(dst, e.TenantID); err != nil {
		return dst, fmt.Errorf("tenant_id: %w", err)
	}
	dst = append(dst, `,"ts_unix_ms":`...)
	if dst, err = canon.AppendInt(dst, e.TsUnixMs); err != nil {
		return dst, fmt.Errorf("ts_unix_ms: %w", err)
	}
	dst = append(dst, `,"v":`...)
	if dst, err = canon.AppendInt(dst, int64(e.V)); err != nil {
		return dst, fmt.Errorf("v: %w", err)
	}
	return append(dst, '}'), nil
}

// AppendCanonical appends the RFC 8785 canonical JSON form of d to dst: the
// "decision" member's value in the event's canonical form. An event e
// without chain fields encodes as '{"decision":', d, ',' and then the
// encoding of e without its decision from its second byte on; the decider
// writes decided events that way.
func (d *Decision) AppendCanonical(dst []byte) ([]byte, error) { return d.appendCanonical(dst) }

func (d *Decision) appendCanonical(dst []byte) ([]byte, error) {
	var err error
	dst = append(dst, `{"constraints":{`...)
	sep := false
	if d.Constraints.MaxOutputBytes != 0 {
		dst = append(dst, `"max_output_bytes":`...)
		if dst, err = canon.AppendInt(dst, d.Constraints.MaxOutputBytes); err != nil {
			return dst, fmt.Errorf("decision.constraints.max_output_bytes: %w", err)
		}
		sep = true
	}
	if d.Constraints.TimeoutMs != 0 {
		if sep {
			dst = append(dst, ',')
		}
		dst = append(dst, `"timeout_ms":`...)
		if dst, err = canon.AppendInt(dst, d.Constraints.TimeoutMs); err != nil {
			return dst, fmt.Errorf("decision.constraints.timeout_ms: %w", err)
		}
	}
	for _, f := range [...]struct{ key, val string }{
		{`},"input_digest":`, d.InputDigest},
		{`,"manifest_digest":`, d.ManifestDigest},
		{`,"outcome":`, string(d.Outcome)},
		{`,"policy_revision":`, d.PolicyRevision},
		{`,"reason":`, d.Reason},
	} {
		dst = append(dst, f.key...)
		if dst, err = canon.AppendString(dst, f.val); err != nil {
			return dst, fmt.Errorf("decision%s %w", f.key, err)
		}
	}
	return append(dst, '}'), nil
}
