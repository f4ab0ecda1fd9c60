package envelope

import (
	"encoding/json"
	"unicode/utf8"
)

// FlatMembers stores in vals[i] the raw value of the member of the JSON
// object data named names[i] (nil when there is none), so that a caller
// can read a few members without reflection. It reports false whenever
// reading them so might differ from json.Unmarshal into a struct whose
// fields are tagged with names: data is not valid JSON or not a compact
// object (a canonical payload is), a member name is escaped or not ASCII,
// a name of interest appears twice, or a member name equals one of names
// only case-insensitively (json.Unmarshal would take it). The caller then
// decodes with json.Unmarshal. names must be lowercase ASCII and vals at
// least as long.
func FlatMembers(data []byte, names []string, vals [][]byte) bool {
	clear(vals[:len(names)])
	if len(data) == 0 || data[0] != '{' || !json.Valid(data) {
		return false
	}
	err := members(data, func(key, val []byte) error {
		for _, c := range key {
			if c == '\\' || c >= utf8.RuneSelf {
				return errScan
			}
		}
		for i, name := range names {
			switch {
			case string(key) == name:
				if vals[i] != nil {
					return errScan
				}
				vals[i] = val
				return nil
			case equalFoldASCII(key, name):
				return errScan
			}
		}
		return nil
	})
	return err == nil
}

// equalFoldASCII reports whether the ASCII key equals the lowercase name
// ignoring letter case.
func equalFoldASCII(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// FlatString returns the string a raw JSON string value from FlatMembers
// decodes to, when it is written without escapes and is valid UTF-8 (so
// json.Unmarshal would give the same bytes); ok is false otherwise.
func FlatString(raw []byte) (s string, ok bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	raw = raw[1 : len(raw)-1]
	for _, c := range raw {
		if c == '\\' || c == '"' {
			return "", false
		}
	}
	if !utf8.Valid(raw) {
		return "", false
	}
	return string(raw), true
}
