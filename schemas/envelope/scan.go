package envelope

import (
	"encoding/json"
	"errors"
	"strconv"
)

// The decoder reads events from their RFC 8785 canonical form, which
// schemas/canon has already validated: no whitespace, members sorted,
// strings with minimal escapes, numbers in ECMAScript form. That makes a
// tiny scanner enough, and much cheaper than encoding/json's reflection.

var errScan = errors.New("malformed canonical JSON")

// members calls fn with the raw key (without quotes) and raw value of every
// member of the canonical JSON object obj, in order.
func members(obj []byte, fn func(key, val []byte) error) error {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return errScan
	}
	i := 1
	if obj[i] == '}' {
		return nil
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return errScan
		}
		kend, err := skipString(obj, i)
		if err != nil {
			return err
		}
		key := obj[i+1 : kend-1]
		if kend >= len(obj) || obj[kend] != ':' {
			return errScan
		}
		vstart := kend + 1
		vend, err := skipValue(obj, vstart)
		if err != nil {
			return err
		}
		if err := fn(key, obj[vstart:vend]); err != nil {
			return err
		}
		if vend >= len(obj) {
			return errScan
		}
		switch obj[vend] {
		case ',':
			i = vend + 1
		case '}':
			if vend != len(obj)-1 {
				return errScan
			}
			return nil
		default:
			return errScan
		}
	}
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, errScan
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errScan
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, err := skipString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errScan
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
			j++
		}
		if j == i {
			return 0, errScan
		}
		return j, nil
	}
}

// jsonKind names the JSON type of a raw canonical value for messages.
func jsonKind(v []byte) string {
	switch v[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// str decodes a canonical JSON string value.
func str(field string, v []byte) (string, error) {
	if v[0] != '"' {
		return "", &Error{Code: CodeInvalidField, Field: field, Msg: "expected a string, got JSON " + jsonKind(v)}
	}
	raw := v[1 : len(v)-1]
	for _, c := range raw {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return "", &Error{Code: CodeInvalidField, Field: field, Msg: err.Error(), Err: err}
			}
			return s, nil
		}
	}
	return string(raw), nil
}

// integer decodes a canonical JSON number that must be an integer. Canonical
// numbers within ±(2^53−1) are written without fraction or exponent exactly
// when they are integers.
func integer(field string, v []byte) (int64, error) {
	if v[0] != '-' && (v[0] < '0' || v[0] > '9') {
		return 0, &Error{Code: CodeInvalidField, Field: field, Msg: "expected an integer, got JSON " + jsonKind(v)}
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, &Error{Code: CodeInvalidField, Field: field, Msg: "expected an integer, got " + string(v)}
	}
	return n, nil
}
