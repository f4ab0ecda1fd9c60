package envelope

import (
	"errors"
	"fmt"

	"aegis.dev/aegis/schemas/canon"
)

// Error codes returned by Decode. They are stable: they appear on the
// rejected topic and in HTTP error bodies.
const (
	CodeInvalidJSON        = "INVALID_JSON"
	CodeInvalidUTF8        = "INVALID_UTF8"
	CodeDuplicateKey       = "DUPLICATE_KEY"
	CodeNumberOutOfRange   = "NUMBER_OUT_OF_RANGE"
	CodeUnknownField       = "UNKNOWN_FIELD"
	CodeMissingField       = "MISSING_FIELD"
	CodeInvalidField       = "INVALID_FIELD"
	CodeUnknownEventType   = "UNKNOWN_EVENT_TYPE"
	CodeUnsupportedVersion = "UNSUPPORTED_VERSION"
	CodeTooLarge           = "TOO_LARGE"
)

// DefaultMaxEventBytes bounds one encoded event unless the caller sets a
// different limit.
const DefaultMaxEventBytes = 1 << 20

// MaxIDLen bounds tenant_id and session_id.
const MaxIDLen = 128

// Error is a rejected event: a stable Code, the offending Field (a JSON path,
// empty when the whole document is at fault) and a message for people.
type Error struct {
	Code  string
	Field string
	Msg   string
	Err   error
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", e.Code, e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Code returns the stable code of err if it is (or wraps) an *Error, and
// CodeInvalidJSON otherwise.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInvalidJSON
}

// Decoder decodes and validates events. The zero value uses
// DefaultMaxEventBytes.
type Decoder struct {
	// MaxBytes bounds one encoded event; 0 means DefaultMaxEventBytes.
	MaxBytes int
	// Sealed accepts the fields added by the decider and the sealer
	// (decision, prev_hash, hash). Client-facing decoders leave it false so
	// that no client can forge a decision or a chain link.
	Sealed bool
}

// Decode parses one event from data and validates it. It never panics; every
// failure is an *Error with a stable code. The returned event's Payload is in
// RFC 8785 canonical form and V is set to Version.
func Decode(data []byte) (*Event, error) { return Decoder{}.Decode(data) }

// Decode parses one event; see the package-level Decode.
func (d Decoder) Decode(data []byte) (*Event, error) {
	max := d.MaxBytes
	if max <= 0 {
		max = DefaultMaxEventBytes
	}
	if len(data) > max {
		return nil, &Error{Code: CodeTooLarge, Msg: fmt.Sprintf("event is %d bytes, limit is %d", len(data), max)}
	}
	// The canonicalizer is the strict gate: it rejects invalid UTF-8,
	// duplicate keys, unsafe integers and trailing data anywhere in the
	// document. The fields are then read from the canonical form.
	c, err := canon.Append(make([]byte, 0, len(data)), data)
	if err != nil {
		return nil, canonError("", err)
	}
	if c[0] != '{' {
		return nil, &Error{Code: CodeInvalidJSON, Msg: "an event must be a JSON object, got JSON " + jsonKind(c)}
	}
	var w wireEvent
	if err := members(c, w.set); err != nil {
		return nil, scanError(err)
	}
	return w.event(d.Sealed)
}

// wireFields are the members an envelope may have on the wire.
var wireFields = []string{"v", "tenant_id", "session_id", "seq", "ts_unix_ms", "event_type", "manifest", "payload", "decision", "prev_hash", "hash"}

// wireEvent collects the members of an event. A scalar member is present
// when its has flag is set (absent and null are alike); Payload and Decision
// are nil when absent. Values are held inline, not behind pointers, so that
// reading an event allocates only the strings it keeps.
type wireEvent struct {
	V, Seq, TsUnixMs                 int64
	TenantID, SessionID, Manifest    string
	PrevHash, Hash                   string
	Type                             Type
	Payload, Decision                []byte
	hasV, hasSeq, hasTs, hasTenant   bool
	hasSession, hasType, hasManifest bool
	hasPrevHash, hasHash             bool
}

func (w *wireEvent) set(key, val []byte) error {
	if string(val) == "null" {
		switch string(key) {
		case "v", "tenant_id", "session_id", "seq", "ts_unix_ms", "event_type", "manifest", "payload", "decision", "prev_hash", "hash":
			return nil
		}
	}
	var err error
	setStr := func(dst *string, has *bool, field string) {
		if *dst, err = str(field, val); err == nil {
			*has = true
		}
	}
	setInt := func(dst *int64, has *bool, field string) {
		if *dst, err = integer(field, val); err == nil {
			*has = true
		}
	}
	switch string(key) {
	case "v":
		setInt(&w.V, &w.hasV, "v")
	case "tenant_id":
		setStr(&w.TenantID, &w.hasTenant, "tenant_id")
	case "session_id":
		setStr(&w.SessionID, &w.hasSession, "session_id")
	case "seq":
		setInt(&w.Seq, &w.hasSeq, "seq")
	case "ts_unix_ms":
		setInt(&w.TsUnixMs, &w.hasTs, "ts_unix_ms")
	case "event_type":
		w.Type, err = eventType(val)
		w.hasType = err == nil
	case "manifest":
		setStr(&w.Manifest, &w.hasManifest, "manifest")
	case "payload":
		w.Payload = val
	case "decision":
		w.Decision = val
	case "prev_hash":
		setStr(&w.PrevHash, &w.hasPrevHash, "prev_hash")
	case "hash":
		setStr(&w.Hash, &w.hasHash, "hash")
	default:
		name, _ := str("", append(append([]byte{'"'}, key...), '"'))
		return &Error{Code: CodeUnknownField, Field: name, Msg: "not part of the envelope"}
	}
	return err
}

// eventType reads the event_type member. A known type is returned as its
// constant, without allocating; anything else is returned as read, for
// the caller to reject.
func eventType(val []byte) (Type, error) {
	if len(val) > 2 && val[0] == '"' {
		raw := val[1 : len(val)-1]
		for _, t := range Types {
			if string(t) == string(raw) {
				return t, nil
			}
		}
	}
	s, err := str("event_type", val)
	return Type(s), err
}

func (w *wireEvent) event(sealed bool) (*Event, error) {
	e := &Event{V: Version}
	if w.hasV && w.V != Version {
		return nil, &Error{Code: CodeUnsupportedVersion, Field: "v", Msg: fmt.Sprintf("schema version %d is not supported (want %d)", w.V, Version)}
	}
	var err error
	if e.TenantID, err = id("tenant_id", w.TenantID, w.hasTenant); err != nil {
		return nil, err
	}
	if e.SessionID, err = id("session_id", w.SessionID, w.hasSession); err != nil {
		return nil, err
	}
	if !w.hasSeq {
		return nil, missing("seq")
	}
	if w.Seq < 1 {
		return nil, &Error{Code: CodeInvalidField, Field: "seq", Msg: "must be >= 1"}
	}
	e.Seq = uint64(w.Seq)
	if !w.hasTs {
		return nil, missing("ts_unix_ms")
	}
	if w.TsUnixMs <= 0 {
		return nil, &Error{Code: CodeInvalidField, Field: "ts_unix_ms", Msg: "must be > 0 (milliseconds since the Unix epoch)"}
	}
	e.TsUnixMs = w.TsUnixMs
	if !w.hasType {
		return nil, missing("event_type")
	}
	if !w.Type.Known() {
		return nil, &Error{Code: CodeUnknownEventType, Field: "event_type", Msg: fmt.Sprintf("unknown event type %q", string(w.Type))}
	}
	e.Type = w.Type
	if w.hasManifest {
		if err := manifestRef(w.Manifest); err != nil {
			return nil, err
		}
		e.Manifest = w.Manifest
	}
	// The payload is a member of the canonical document, canonical
	// already; it keeps sharing that document's memory, which the caller
	// never sees, with its capacity capped so that appending copies.
	if len(w.Payload) == 0 {
		e.Payload = []byte("{}")
	} else {
		e.Payload = w.Payload[:len(w.Payload):len(w.Payload)]
	}
	if err := checkPayload(e.Type, e.Payload, !sealed); err != nil {
		return nil, err
	}
	if !sealed {
		switch {
		case w.Decision != nil:
			return nil, &Error{Code: CodeUnknownField, Field: "decision", Msg: "set by the decider; clients may not send it"}
		case w.hasPrevHash:
			return nil, &Error{Code: CodeUnknownField, Field: "prev_hash", Msg: "set by the sealer; clients may not send it"}
		case w.hasHash:
			return nil, &Error{Code: CodeUnknownField, Field: "hash", Msg: "set by the sealer; clients may not send it"}
		}
		return e, nil
	}
	if w.Decision != nil {
		if e.Decision, err = decodeDecision(w.Decision); err != nil {
			return nil, err
		}
	}
	e.PrevHash, e.Hash = w.PrevHash, w.Hash
	return e, nil
}

// decodeDecision reads a canonical decision object.
func decodeDecision(v []byte) (*Decision, error) {
	if v[0] != '{' {
		return nil, &Error{Code: CodeInvalidField, Field: "decision", Msg: "expected an object, got JSON " + jsonKind(v)}
	}
	d := &Decision{}
	err := members(v, func(key, val []byte) error {
		var err error
		switch string(key) {
		case "outcome":
			var s string
			if s, err = str("decision.outcome", val); err == nil {
				switch o := Outcome(s); o {
				case Allow, Deny, RequireApproval:
					d.Outcome = o
				default:
					err = &Error{Code: CodeInvalidField, Field: "decision.outcome", Msg: fmt.Sprintf("unknown outcome %q", s)}
				}
			}
		case "reason":
			d.Reason, err = str("decision.reason", val)
		case "policy_revision":
			d.PolicyRevision, err = str("decision.policy_revision", val)
		case "manifest_digest":
			d.ManifestDigest, err = str("decision.manifest_digest", val)
		case "input_digest":
			d.InputDigest, err = str("decision.input_digest", val)
		case "constraints":
			if val[0] != '{' {
				return &Error{Code: CodeInvalidField, Field: "decision.constraints", Msg: "expected an object, got JSON " + jsonKind(val)}
			}
			err = members(val, func(k, cv []byte) error {
				var err error
				switch string(k) {
				case "max_output_bytes":
					d.Constraints.MaxOutputBytes, err = integer("decision.constraints.max_output_bytes", cv)
				case "timeout_ms":
					d.Constraints.TimeoutMs, err = integer("decision.constraints.timeout_ms", cv)
				default:
					err = &Error{Code: CodeUnknownField, Field: "decision.constraints." + string(k), Msg: "not part of the decision"}
				}
				return err
			})
		default:
			err = &Error{Code: CodeUnknownField, Field: "decision." + string(key), Msg: "not part of the decision"}
		}
		return err
	})
	if err != nil {
		return nil, scanError(err)
	}
	return d, nil
}

// scanError passes *Error through and reports anything else (which the
// canonicalizer should have made impossible) as invalid JSON.
func scanError(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeInvalidJSON, Msg: err.Error(), Err: err}
}

func missing(field string) error {
	return &Error{Code: CodeMissingField, Field: field, Msg: "required"}
}

// id validates tenant_id and session_id: 1..MaxIDLen characters of
// [A-Za-z0-9._:@-]. The slash is excluded because "<tenant>/<session>" is the
// Kafka record key.
func id(field string, s string, present bool) (string, error) {
	if !present {
		return "", missing(field)
	}
	if s == "" || len(s) > MaxIDLen {
		return "", &Error{Code: CodeInvalidField, Field: field, Msg: fmt.Sprintf("must be 1..%d characters", MaxIDLen)}
	}
	for i := 0; i < len(s); i++ {
		if !idChar(s[i]) {
			return "", &Error{Code: CodeInvalidField, Field: field, Msg: fmt.Sprintf("character %q at %d is not allowed (allowed: A-Z a-z 0-9 . _ : @ -)", s[i], i)}
		}
	}
	return s, nil
}

func idChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c == '.' || c == '_' || c == ':' || c == '@' || c == '-'
}

func manifestRef(s string) error {
	if s == "" || len(s) > 2*MaxIDLen {
		return &Error{Code: CodeInvalidField, Field: "manifest", Msg: `must be "name" or "name@version"`}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !idChar(c) && c != '+' {
			return &Error{Code: CodeInvalidField, Field: "manifest", Msg: fmt.Sprintf("character %q at %d is not allowed", c, i)}
		}
	}
	return nil
}

// Key returns the Kafka record key of the event's session: "<tenant>/<session>".
func (e *Event) Key() []byte {
	k := make([]byte, 0, len(e.TenantID)+1+len(e.SessionID))
	k = append(k, e.TenantID...)
	k = append(k, '/')
	return append(k, e.SessionID...)
}

func canonError(field string, err error) error {
	code := CodeInvalidJSON
	switch {
	case errors.Is(err, canon.ErrInvalidUTF8):
		code = CodeInvalidUTF8
	case errors.Is(err, canon.ErrDuplicateKey):
		code = CodeDuplicateKey
	case errors.Is(err, canon.ErrNumberRange):
		code = CodeNumberOutOfRange
	}
	return &Error{Code: code, Field: field, Msg: err.Error(), Err: err}
}
