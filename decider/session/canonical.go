package session

import (
	"encoding/json"
	"fmt"
	"slices"

	"aegis.dev/aegis/schemas/canon"
)

// AppendCanonical appends the snapshot's RFC 8785 canonical JSON to b. The
// bytes are exactly those of canon.Append(json.Marshal(s)) — the form the
// input digest of every recorded decision was computed over — written
// directly, without reflection or a second parse (TestAppendCanonical
// checks the identity on random snapshots). It is on the decider's hot
// path: once per decision (input digest) and once per touched session and
// transaction (state record).
func (s *Snapshot) AppendCanonical(b []byte) ([]byte, error) {
	out, err := s.appendCanonical(b)
	if err != nil {
		// A value the direct path refuses (not valid UTF-8, an integer
		// beyond 2^53) is handled exactly as before: json.Marshal
		// replaces invalid UTF-8, canon rejects what it must.
		raw, merr := json.Marshal(s)
		if merr != nil {
			return b, fmt.Errorf("session: marshal snapshot: %w", merr)
		}
		return canon.Append(b, raw)
	}
	return out, nil
}

// Member names in RFC 8785 order (all ASCII, so byte order).
func (s *Snapshot) appendCanonical(b []byte) ([]byte, error) {
	var err error
	str := func(name, v string) {
		if err == nil {
			b = append(b, name...)
			b, err = canon.AppendString(b, v)
		}
	}
	num := func(name string, v int64) {
		if err == nil {
			b = append(b, name...)
			b, err = canon.AppendInt(b, v)
		}
	}
	unum := func(name string, v uint64) {
		if err == nil {
			b = append(b, name...)
			b, err = canon.AppendUint(b, v)
		}
	}
	flag := func(name string, v bool) {
		b = append(b, name...)
		if v {
			b = append(b, "true"...)
		} else {
			b = append(b, "false"...)
		}
	}
	list := func(name string, vs []string) {
		if len(vs) == 0 || err != nil {
			return
		}
		b = append(b, name...)
		b = append(b, '[')
		for i, v := range vs {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = canon.AppendString(b, v); err != nil {
				return
			}
		}
		b = append(b, ']')
	}

	b = append(b, '{')
	sep := ""
	if len(s.Approvals) > 0 {
		b = append(b, `"approvals":{`...)
		var scratch [16]string
		for i, k := range sortedKeys(s.Approvals, scratch[:0]) {
			a := s.Approvals[k]
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = canon.AppendString(b, k); err != nil {
				return b, err
			}
			b = append(b, ':')
			str(`{"args_digest":`, a.ArgsDigest)
			unum(`,"requested_seq":`, a.RequestedSeq)
			num(`,"requested_ts_ms":`, a.RequestedTsMs)
			str(`,"state":`, a.State)
			str(`,"tool_name":`, a.ToolName)
			b = append(b, '}')
		}
		b = append(b, '}')
		sep = ","
	}
	if len(s.Calls) > 0 {
		b = append(b, sep...)
		b = append(b, `"calls":{`...)
		var scratch [16]string
		for i, k := range sortedKeys(s.Calls, scratch[:0]) {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = canon.AppendString(b, k); err != nil {
				return b, err
			}
			num(":", s.Calls[k])
		}
		b = append(b, '}')
		sep = ","
	}
	num(sep+`"consecutive_errors":`, s.ConsecutiveErrors)
	num(`,"events":`, s.Events)
	num(`,"first_ts_ms":`, s.FirstTsMs)
	b = append(b, `,"handoff":{`...)
	hsep := ""
	if s.Handoff.From != "" {
		str(`"from":`, s.Handoff.From)
		hsep = ","
	}
	if s.Handoff.State != "" {
		str(hsep+`"state":`, s.Handoff.State)
		hsep = ","
	}
	if s.Handoff.To != "" {
		str(hsep+`"to":`, s.Handoff.To)
	}
	b = append(b, '}')
	unum(`,"last_seq":`, s.LastSeq)
	num(`,"last_ts_ms":`, s.LastTsMs)
	flag(`,"loop":{"detected":`, s.Loop.Detected)
	if s.Loop.Seq != 0 {
		unum(`,"seq":`, s.Loop.Seq)
	}
	b = append(b, '}')
	if s.Manifest != "" {
		str(`,"manifest":`, s.Manifest)
	}
	num(`,"model_calls":`, s.ModelCalls)
	list(`,"recent_tools":`, s.RecentTools)
	list(`,"sanitizer_keys":`, s.SanitizerKeys)
	str(`,"session_id":`, s.SessionID)
	num(`,"steps":`, s.Steps)
	list(`,"taint_sources":`, s.TaintSources)
	flag(`,"tainted":`, s.Tainted)
	str(`,"tenant_id":`, s.TenantID)
	flag(`,"terminated":`, s.Terminated)
	num(`,"tool_calls":`, s.ToolCalls)
	b = append(b, '}')
	return b, err
}

// sortedKeys returns m's keys in RFC 8785 member order, appended to keys
// (which a caller passes with room on its stack for small maps).
func sortedKeys[V any](m map[string]V, keys []string) []string {
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, canon.CompareKeys)
	return keys
}
