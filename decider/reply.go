package decider

import (
	"strconv"
	"unicode/utf8"
)

// AppendJSON appends the reply's JSON, byte for byte what json.Marshal
// writes for it (TestReplyAppendJSONMatchesMarshal checks that on random
// replies), without reflection: one is written per decision.
func (r *Reply) AppendJSON(b []byte) []byte {
	b = append(b, `{"tenant_id":`...)
	b = appendJSONString(b, r.TenantID)
	b = append(b, `,"session_id":`...)
	b = appendJSONString(b, r.SessionID)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, `,"call_id":`...)
	b = appendJSONString(b, r.CallID)
	b = append(b, `,"tool_name":`...)
	b = appendJSONString(b, r.ToolName)
	if r.ContentDigest != "" {
		b = append(b, `,"content_digest":`...)
		b = appendJSONString(b, r.ContentDigest)
	}
	b = append(b, `,"outcome":`...)
	b = appendJSONString(b, string(r.Outcome))
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, r.Reason)
	b = append(b, `,"constraints":{`...)
	if r.Constraints.MaxOutputBytes != 0 {
		b = append(b, `"max_output_bytes":`...)
		b = strconv.AppendInt(b, r.Constraints.MaxOutputBytes, 10)
		if r.Constraints.TimeoutMs != 0 {
			b = append(b, ',')
		}
	}
	if r.Constraints.TimeoutMs != 0 {
		b = append(b, `"timeout_ms":`...)
		b = strconv.AppendInt(b, r.Constraints.TimeoutMs, 10)
	}
	b = append(b, `},"policy_revision":`...)
	b = appendJSONString(b, r.PolicyRevision)
	b = append(b, `,"manifest_digest":`...)
	b = appendJSONString(b, r.ManifestDigest)
	b = append(b, `,"input_digest":`...)
	b = appendJSONString(b, r.InputDigest)
	return append(b, '}')
}

const lowerHex = "0123456789abcdef"

// appendJSONString appends s as encoding/json writes a string by default:
// '"' and '\' escaped, \b \f \n \r \t short, other controls and the HTML
// characters < > & as \u00xx, U+2028 and U+2029 as \u202x, each byte of
// invalid UTF-8 as \ufffd, everything else as is.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', lowerHex[c>>4], lowerHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', lowerHex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
