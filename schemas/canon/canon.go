// Package canon produces the RFC 8785 JSON Canonicalization Scheme (JCS)
// form of JSON text: the byte string that Aegis hashes and seals.
//
// Canonicalization parses and emits in a single pass over the input bytes:
// no intermediate tree, no maps, no encoding/json. Object members are sorted
// by the UTF-16 code units of their unescaped keys, strings are written with
// the minimal RFC 8785 escaping, and numbers are written as ECMAScript's
// Number::toString would write them.
//
// The package is stricter than RFC 8785 requires, because two different
// inputs that canonicalize to the same bytes would share a seal:
//
//   - invalid UTF-8, including lone surrogates written as \u escapes, is
//     rejected (ErrInvalidUTF8);
//   - duplicate keys, compared after unescaping, are rejected
//     (ErrDuplicateKey);
//   - integer literals (no fraction, no exponent) outside
//     ±MaxSafeInteger are rejected rather than rounded (ErrNumberRange), as
//     are numbers that overflow a float64 and numbers spelt with a
//     fraction or exponent whose canonical form would be such an integer
//     (MaxSafeInteger < |v| < 1e21, e.g. 1e20), so that canonical output is
//     always accepted again and is its own canonical form;
//   - anything but whitespace after the value is rejected (ErrTrailingData);
//   - nesting deeper than MaxDepth is rejected (ErrTooDeep).
//
// Every failure is an *Error carrying the byte offset and one of the
// sentinel errors; test for the sentinel with errors.Is. No input makes the
// package panic. All functions are safe for concurrent use. See
// docs/canonical-json.md for the full contract and the test vectors.
package canon

import (
	"crypto/sha256"
	"fmt"
	"strconv"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// MaxSafeInteger is the largest integer n such that n and n+1 are both
// exactly representable as IEEE-754 doubles (2^53-1). Integer literals
// beyond ±MaxSafeInteger are rejected: a double cannot tell
// 9007199254740992 from 9007199254740993, so two different events would
// canonicalize to the same bytes.
const MaxSafeInteger = 1<<53 - 1

// MaxDepth is the deepest nesting of arrays and objects that Append
// accepts: a document may have MaxDepth containers open at once. The
// document [[1]] has depth 2; a scalar has depth 0.
const MaxDepth = 128

// Sentinel errors. Each *Error returned by this package wraps exactly one of
// them; their texts are stable.
var (
	// ErrSyntax reports input that is not JSON text (RFC 8259), including
	// NaN and Infinity tokens, leading zeros and unescaped control
	// characters in strings.
	ErrSyntax = sentinel("invalid JSON syntax")
	// ErrInvalidUTF8 reports bytes that are not UTF-8, or a \u escape that
	// encodes a lone or mispaired UTF-16 surrogate.
	ErrInvalidUTF8 = sentinel("invalid UTF-8")
	// ErrDuplicateKey reports an object with two members whose keys are
	// equal after unescaping.
	ErrDuplicateKey = sentinel("duplicate object key")
	// ErrNumberRange reports an integer literal beyond ±MaxSafeInteger, or
	// a number whose magnitude overflows a float64.
	ErrNumberRange = sentinel("number out of range")
	// ErrTrailingData reports anything but whitespace after the value.
	ErrTrailingData = sentinel("trailing data after JSON value")
	// ErrTooDeep reports nesting beyond MaxDepth.
	ErrTooDeep = sentinel("nesting exceeds maximum depth")
)

// sentinel is the type of the package's sentinel errors. It is a distinct
// type so that the sentinels compare by identity and print with the package
// prefix.
type sentinel string

func (s sentinel) Error() string { return "canon: " + string(s) }

// Error is the error returned for input that cannot be canonicalized.
type Error struct {
	// Offset is the byte offset in the input where the problem was found:
	// the offending byte, the start of the offending token, the opening
	// quote of the second of two duplicate keys, or the input length when
	// the input ended early.
	Offset int
	// Err is one of the package's sentinel errors.
	Err error

	detail string // what exactly was wrong; never contains more than a short quoted fragment of the input
}

// Error describes the failure and where it happened, for example
// "canon: invalid JSON syntax at offset 7: expected ':' after object key".
func (e *Error) Error() string {
	what := "canon: error"
	if e.Err != nil {
		what = e.Err.Error()
	}
	if e.detail == "" {
		return fmt.Sprintf("%s at offset %d", what, e.Offset)
	}
	return fmt.Sprintf("%s at offset %d: %s", what, e.Offset, e.detail)
}

// Unwrap returns the sentinel error.
func (e *Error) Unwrap() error { return e.Err }

// Append appends the RFC 8785 canonical form of the JSON text src to dst and
// returns the extended slice. Leading and trailing whitespace is allowed. On
// error it returns dst unchanged (its bytes past len(dst) may have been
// overwritten) and an *Error. dst and src must not overlap.
func Append(dst, src []byte) ([]byte, error) {
	s := getState(src)
	s.out = dst
	err := s.document()
	out := s.out
	putState(s)
	if err != nil {
		return dst, err
	}
	return out, nil
}

// Sum returns the SHA-256 digest of the canonical form of src. It fails
// exactly when Append fails.
func Sum(src []byte) ([32]byte, error) {
	s := getState(src)
	s.out = s.buf[:0]
	err := s.document()
	var sum [32]byte
	if err == nil {
		sum = sha256.Sum256(s.out)
	}
	s.buf = s.out
	putState(s)
	return sum, err
}

// AppendString appends s as a canonical JSON string literal, quotes
// included. It returns dst unchanged and an *Error wrapping ErrInvalidUTF8,
// with Offset the index in s of the first invalid byte, when s is not valid
// UTF-8.
func AppendString(dst []byte, s string) ([]byte, error) {
	if i := invalidUTF8(s); i >= 0 {
		return dst, &Error{Offset: i, Err: ErrInvalidUTF8}
	}
	return appendQuoted(dst, s), nil
}

// CompareKeys orders two object member names as RFC 8785 sorts them: by
// their UTF-16 code units. Both must be valid UTF-8.
func CompareKeys(a, b string) int {
	return compareKeys(unsafe.Slice(unsafe.StringData(a), len(a)), unsafe.Slice(unsafe.StringData(b), len(b)))
}

// AppendInt appends v as a canonical JSON number. It returns dst unchanged
// and an error wrapping ErrNumberRange when |v| > MaxSafeInteger.
func AppendInt(dst []byte, v int64) ([]byte, error) {
	if v > MaxSafeInteger || v < -MaxSafeInteger {
		return dst, fmt.Errorf("canon: integer %d: %w", v, ErrNumberRange)
	}
	return strconv.AppendInt(dst, v, 10), nil
}

// AppendUint appends v as a canonical JSON number. It returns dst unchanged
// and an error wrapping ErrNumberRange when v > MaxSafeInteger.
func AppendUint(dst []byte, v uint64) ([]byte, error) {
	if v > MaxSafeInteger {
		return dst, fmt.Errorf("canon: integer %d: %w", v, ErrNumberRange)
	}
	return strconv.AppendUint(dst, v, 10), nil
}

// invalidUTF8 returns the index of the first byte of s that does not start a
// valid UTF-8 sequence, or -1 when s is valid UTF-8.
func invalidUTF8(s string) int {
	if utf8.ValidString(s) {
		return -1
	}
	for i := 0; i < len(s); {
		if s[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return -1
}

// statePool recycles parser scratch space between calls so that
// canonicalizing a typical event allocates nothing. Pooled states hold no
// data from previous calls that is ever read again.
var statePool = sync.Pool{New: func() any { return new(state) }}

// maxPooledScratch bounds the capacity of the buffers a pooled state keeps,
// so that one huge document does not pin its scratch memory forever.
const maxPooledScratch = 64 << 10

func getState(src []byte) *state {
	s := statePool.Get().(*state)
	s.src = src
	s.pos = 0
	s.depth = 0
	return s
}

func putState(s *state) {
	s.src = nil
	s.out = nil
	if cap(s.buf) > maxPooledScratch {
		s.buf = nil
	}
	if cap(s.scratch) > maxPooledScratch {
		s.scratch = nil
	}
	if cap(s.keys) > maxPooledScratch {
		s.keys = nil
	}
	if cap(s.members) > maxPooledScratch/64 {
		s.members = nil
	}
	if cap(s.order) > maxPooledScratch/32 {
		s.order = nil
	}
	s.members = s.members[:0]
	s.keys = s.keys[:0]
	statePool.Put(s)
}
