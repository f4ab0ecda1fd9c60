package canon

import (
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// state is one canonicalization in progress. The parser is recursive
// descent over src; every value is written to out as soon as it is parsed.
// An object's members are written in input order, recorded as spans of out,
// and permuted in place once the closing brace is reached, unless they were
// already in canonical order.
//
// Each byte of output is therefore moved once per enclosing object whose
// members were out of order, so the work is O(n·d) for a document of n bytes
// and nesting depth d ≤ MaxDepth, with d = 1 or 2 for typical events. Memory
// is O(n).
type state struct {
	src   []byte
	pos   int
	depth int
	out   []byte

	members []member   // members of the objects currently open, innermost last
	keys    []byte     // unescaped keys that had escapes in src, innermost object last
	scratch []byte     // copy of an object's members while they are permuted
	order   []sortItem // an object's members while they are sorted
	buf     []byte     // output buffer reused by Sum
}

// member is one object member as written to out.
type member struct {
	start, end int  // the member "key":value in out
	keyOff     int  // start of the unescaped key in src or keys
	keyLen     int  // length of the unescaped key
	srcOff     int  // offset in src of the key's opening quote
	inKeys     bool // the unescaped key is in keys rather than in src
}

func (s *state) key(m *member) []byte {
	if m.inKeys {
		return s.keys[m.keyOff : m.keyOff+m.keyLen]
	}
	return s.src[m.keyOff : m.keyOff+m.keyLen]
}

func (s *state) fail(off int, err error, detail string) error {
	return &Error{Offset: off, Err: err, detail: detail}
}

// failHere reports a syntax error at the current position, naming the
// unexpected byte or the end of input.
func (s *state) failHere(expected string) error {
	if s.pos >= len(s.src) {
		return s.fail(len(s.src), ErrSyntax, "unexpected end of input, expected "+expected)
	}
	return s.fail(s.pos, ErrSyntax, fmt.Sprintf("unexpected %s, expected %s", quoteByte(s.src[s.pos]), expected))
}

func quoteByte(c byte) string {
	if c < utf8.RuneSelf {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// document parses the whole input as one JSON value surrounded by optional
// whitespace.
func (s *state) document() error {
	if err := s.value(); err != nil {
		return err
	}
	s.skipSpace()
	if s.pos < len(s.src) {
		return s.fail(s.pos, ErrTrailingData, "")
	}
	return nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

func (s *state) skipSpace() {
	for s.pos < len(s.src) && isSpace(s.src[s.pos]) {
		s.pos++
	}
}

// value parses one value, with optional leading whitespace, and writes its
// canonical form to out.
func (s *state) value() error {
	s.skipSpace()
	if s.pos >= len(s.src) {
		return s.failHere("a value")
	}
	switch c := s.src[s.pos]; {
	case c == '"':
		return s.stringValue()
	case c == '{':
		return s.object()
	case c == '[':
		return s.array()
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return s.failHere("a value")
	}
}

func (s *state) literal(lit string) error {
	start := s.pos
	end := start + len(lit)
	if end > len(s.src) || string(s.src[start:end]) != lit || end < len(s.src) && isIdent(s.src[end]) {
		return s.fail(start, ErrSyntax, "invalid literal, expected "+lit)
	}
	s.pos = end
	s.out = append(s.out, lit...)
	return nil
}

// isIdent reports bytes that may not directly follow a number or a literal
// because they would make it a different, invalid token.
func isIdent(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '+' || c == '-' || c == '_'
}

func (s *state) enter() error {
	if s.depth >= MaxDepth {
		return s.fail(s.pos, ErrTooDeep, fmt.Sprintf("more than %d nested containers", MaxDepth))
	}
	s.depth++
	return nil
}

func (s *state) array() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.pos++ // '['
	s.out = append(s.out, '[')
	s.skipSpace()
	if s.pos < len(s.src) && s.src[s.pos] == ']' {
		s.pos++
		s.out = append(s.out, ']')
		s.depth--
		return nil
	}
	for {
		if err := s.value(); err != nil {
			return err
		}
		s.skipSpace()
		if s.pos >= len(s.src) {
			return s.failHere("',' or ']'")
		}
		switch s.src[s.pos] {
		case ',':
			s.pos++
			s.out = append(s.out, ',')
		case ']':
			s.pos++
			s.out = append(s.out, ']')
			s.depth--
			return nil
		default:
			return s.failHere("',' or ']'")
		}
	}
}

func (s *state) object() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.pos++ // '{'
	s.out = append(s.out, '{')
	body := len(s.out)
	base := len(s.members)
	keysBase := len(s.keys)
	defer func() {
		s.members = s.members[:base]
		s.keys = s.keys[:keysBase]
	}()

	s.skipSpace()
	if s.pos < len(s.src) && s.src[s.pos] == '}' {
		s.pos++
		s.out = append(s.out, '}')
		s.depth--
		return nil
	}
	sorted := true
	for {
		s.skipSpace()
		if s.pos >= len(s.src) || s.src[s.pos] != '"' {
			return s.failHere("a string key")
		}
		if len(s.members) > base {
			s.out = append(s.out, ',')
		}
		m := member{start: len(s.out), srcOff: s.pos}
		if err := s.objectKey(&m); err != nil {
			return err
		}
		s.skipSpace()
		if s.pos >= len(s.src) || s.src[s.pos] != ':' {
			return s.failHere("':' after object key")
		}
		s.pos++
		s.out = append(s.out, ':')
		if err := s.value(); err != nil {
			return err
		}
		m.end = len(s.out)
		if sorted && len(s.members) > base {
			switch c := compareKeys(s.key(&s.members[len(s.members)-1]), s.key(&m)); {
			case c == 0:
				return s.duplicate(&m)
			case c > 0:
				sorted = false
			}
		}
		s.members = append(s.members, m)

		s.skipSpace()
		if s.pos >= len(s.src) {
			return s.failHere("',' or '}'")
		}
		switch s.src[s.pos] {
		case ',':
			s.pos++
			continue
		case '}':
			s.pos++
		default:
			return s.failHere("',' or '}'")
		}
		break
	}
	if !sorted {
		if err := s.sortMembers(body, s.members[base:]); err != nil {
			return err
		}
	}
	s.out = append(s.out, '}')
	s.depth--
	return nil
}

func (s *state) duplicate(m *member) error {
	k := s.key(m)
	const maxShown = 32
	if len(k) > maxShown {
		return s.fail(m.srcOff, ErrDuplicateKey, fmt.Sprintf("key %q (truncated from %d bytes)", k[:maxShown], len(k)))
	}
	return s.fail(m.srcOff, ErrDuplicateKey, fmt.Sprintf("key %q", k))
}

// sortMembers puts the members written to out[body:] into canonical order
// and rejects duplicate keys. ms are the members' spans in input order.
func (s *state) sortMembers(body int, ms []member) error {
	order := s.order[:0]
	for i := range ms {
		order = append(order, sortItem{key: s.key(&ms[i]), m: &ms[i]})
	}
	s.order = order
	if len(order) <= 12 {
		// Insertion sort: objects are small, and this avoids the generic
		// sort's indirect calls.
		for i := 1; i < len(order); i++ {
			it := order[i]
			j := i
			for ; j > 0 && compareKeys(order[j-1].key, it.key) > 0; j-- {
				order[j] = order[j-1]
			}
			order[j] = it
		}
	} else {
		slices.SortFunc(order, func(a, b sortItem) int { return compareKeys(a.key, b.key) })
	}
	for i := 1; i < len(order); i++ {
		if compareKeys(order[i-1].key, order[i].key) == 0 {
			later := order[i].m
			if order[i-1].m.srcOff > later.srcOff {
				later = order[i-1].m
			}
			clear(s.order)
			return s.duplicate(later)
		}
	}
	s.scratch = append(s.scratch[:0], s.out[body:]...)
	s.out = s.out[:body]
	for i, it := range order {
		if i > 0 {
			s.out = append(s.out, ',')
		}
		s.out = append(s.out, s.scratch[it.m.start-body:it.m.end-body]...)
	}
	clear(s.order) // drop references to src and to the members
	return nil
}

// sortItem is a member being sorted: its unescaped key and its span.
type sortItem struct {
	key []byte
	m   *member
}

// plain marks the bytes that may appear in a string literal and be copied
// to the canonical form unchanged: printable ASCII other than '"' and '\'.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString validates the string literal whose opening quote is at s.pos
// and moves s.pos past its closing quote. It returns the offsets in src of
// the contents and whether they contain escapes. Escapes are checked for
// form here; surrogate pairing is checked by unescape.
func (s *state) scanString() (start, end int, escaped bool, err error) {
	src := s.src
	i := s.pos + 1
	start = i
	for {
		for i < len(src) && plain[src[i]] {
			i++
		}
		if i >= len(src) {
			return 0, 0, false, s.fail(len(src), ErrSyntax, "unterminated string")
		}
		switch c := src[i]; {
		case c == '"':
			s.pos = i + 1
			return start, i, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(src) {
				return 0, 0, false, s.fail(len(src), ErrSyntax, "unterminated string")
			}
			switch src[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if _, ok := hex4(src, i+2); !ok {
					return 0, 0, false, s.fail(i, ErrSyntax, `invalid \u escape`)
				}
				i += 6
			default:
				return 0, 0, false, s.fail(i, ErrSyntax, "invalid escape "+quoteByte(src[i+1]))
			}
		case c < 0x20:
			return 0, 0, false, s.fail(i, ErrSyntax, "unescaped control character in string")
		default:
			r, n := utf8.DecodeRune(src[i:])
			if r == utf8.RuneError && n <= 1 {
				return 0, 0, false, s.fail(i, ErrInvalidUTF8, fmt.Sprintf("byte 0x%02x in string", c))
			}
			i += n
		}
	}
}

// hex4 decodes the four hex digits at src[i:i+4].
func hex4(src []byte, i int) (rune, bool) {
	if i+4 > len(src) {
		return 0, false
	}
	var r rune
	for _, c := range src[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unescape appends the decoded contents src[start:end] of a string literal
// already checked by scanString to s.keys.
func (s *state) unescape(start, end int) error {
	src := s.src
	i := start
	for i < end {
		j := i
		for j < end && src[j] != '\\' {
			j++
		}
		s.keys = append(s.keys, src[i:j]...)
		if j == end {
			break
		}
		i = j + 2
		switch src[j+1] {
		case 'b':
			s.keys = append(s.keys, '\b')
		case 'f':
			s.keys = append(s.keys, '\f')
		case 'n':
			s.keys = append(s.keys, '\n')
		case 'r':
			s.keys = append(s.keys, '\r')
		case 't':
			s.keys = append(s.keys, '\t')
		case 'u':
			r, _ := hex4(src, j+2)
			i = j + 6
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return s.fail(j, ErrInvalidUTF8, fmt.Sprintf(`lone low surrogate \u%04x`, r))
			case r >= 0xD800 && r <= 0xDBFF:
				lo, ok := rune(0), false
				if i+6 <= end && src[i] == '\\' && src[i+1] == 'u' {
					lo, _ = hex4(src, i+2)
					ok = lo >= 0xDC00 && lo <= 0xDFFF
				}
				if !ok {
					return s.fail(j, ErrInvalidUTF8, fmt.Sprintf(`high surrogate \u%04x not followed by a low surrogate`, r))
				}
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
				i += 6
			}
			s.keys = utf8.AppendRune(s.keys, r)
		default: // '"', '\\', '/'
			s.keys = append(s.keys, src[j+1])
		}
	}
	return nil
}

// stringValue canonicalizes a string literal that is not an object key.
func (s *state) stringValue() error {
	quote := s.pos
	start, end, escaped, err := s.scanString()
	if err != nil {
		return err
	}
	if !escaped {
		// Validated and free of control characters: the literal is canonical.
		s.out = append(s.out, s.src[quote:end+1]...)
		return nil
	}
	mark := len(s.keys)
	if err := s.unescape(start, end); err != nil {
		return err
	}
	s.out = appendQuoted(s.out, bytesToString(s.keys[mark:]))
	s.keys = s.keys[:mark]
	return nil
}

// objectKey canonicalizes a key and records where its unescaped form is.
func (s *state) objectKey(m *member) error {
	quote := s.pos
	start, end, escaped, err := s.scanString()
	if err != nil {
		return err
	}
	if !escaped {
		s.out = append(s.out, s.src[quote:end+1]...)
		m.keyOff, m.keyLen = start, end-start
		return nil
	}
	mark := len(s.keys)
	if err := s.unescape(start, end); err != nil {
		return err
	}
	s.out = appendQuoted(s.out, bytesToString(s.keys[mark:]))
	m.keyOff, m.keyLen, m.inKeys = mark, len(s.keys)-mark, true
	return nil
}

// bytesToString views b as a string for the duration of a call that does
// not retain it.
func bytesToString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

const hexDigits = "0123456789abcdef"

// appendQuoted appends the canonical string literal for the valid UTF-8
// text v: '"' and '\' escaped, the five controls with short escapes written
// that way, other controls as \u00xx with lowercase hex, everything else
// (including U+007F, U+2028, U+2029 and '/') as is.
func appendQuoted(dst []byte, v string) []byte {
	dst = append(dst, '"')
	last := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, v[last:i]...)
		last = i + 1
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
	}
	dst = append(dst, v[last:]...)
	return append(dst, '"')
}

// compareKeys orders two valid UTF-8 keys by their UTF-16 code units, as
// RFC 8785 section 3.2.3 requires. UTF-8 byte order equals code point order,
// which differs from UTF-16 order only between a code point in
// U+E000..U+FFFF and a supplementary one (encoded as surrogates
// 0xD800..0xDFFF), so only the first differing code point needs a look.
func compareKeys(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	if i == n {
		return len(a) - len(b)
	}
	if a[i] < utf8.RuneSelf && b[i] < utf8.RuneSelf {
		return int(a[i]) - int(b[i])
	}
	// a[:i] == b[:i], so the code point containing byte i starts at the
	// same offset in both.
	for i > 0 && a[i]&0xC0 == 0x80 {
		i--
	}
	ra, _ := utf8.DecodeRune(a[i:])
	rb, _ := utf8.DecodeRune(b[i:])
	if (ra >= 0x10000) == (rb >= 0x10000) {
		return int(ra) - int(rb)
	}
	if ra >= 0x10000 {
		return int(0xD800+(ra-0x10000)>>10) - int(rb)
	}
	return int(ra) - int(0xD800+(rb-0x10000)>>10)
}
