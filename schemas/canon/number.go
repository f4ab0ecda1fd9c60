package canon

import (
	"math"
	"strconv"
)

// number canonicalizes the number literal at s.pos. The grammar is RFC 8259
// section 6:
//
//	number = [ "-" ] int [ frac ] [ exp ]
//	int    = "0" / ( digit1-9 *DIGIT )
//	frac   = "." 1*DIGIT
//	exp    = ("e" / "E") [ "-" / "+" ] 1*DIGIT
//
// A literal with neither frac nor exp is an integer literal: it must lie
// within ±MaxSafeInteger and is written back as its digits ("-0" becomes
// "0"). Any other literal is read as the nearest float64 and written in
// ECMAScript form, except that a value v with MaxSafeInteger < |v| < 1e21
// is rejected too: ECMAScript writes it as a plain integer beyond
// ±MaxSafeInteger, which this package would then refuse to read back, so
// canonical output could not be canonicalized again.
func (s *state) number() error {
	src := s.src
	start := s.pos
	i := start
	if src[i] == '-' {
		i++
	}
	digits := i
	switch {
	case i < len(src) && src[i] == '0':
		i++
	case i < len(src) && src[i] >= '1' && src[i] <= '9':
		for i < len(src) && isDigit(src[i]) {
			i++
		}
	default:
		return s.fail(start, ErrSyntax, "invalid number")
	}
	intEnd := i
	fracStart, fracEnd := i, i
	isFloat := false
	if i < len(src) && src[i] == '.' {
		i++
		if i >= len(src) || !isDigit(src[i]) {
			return s.fail(start, ErrSyntax, "invalid number: no digit after '.'")
		}
		fracStart = i
		for i < len(src) && isDigit(src[i]) {
			i++
		}
		fracEnd = i
		isFloat = true
	}
	exp := 0 // the exponent's value, saturated at maxExp
	if i < len(src) && (src[i] == 'e' || src[i] == 'E') {
		i++
		negExp := false
		if i < len(src) && (src[i] == '+' || src[i] == '-') {
			negExp = src[i] == '-'
			i++
		}
		if i >= len(src) || !isDigit(src[i]) {
			return s.fail(start, ErrSyntax, "invalid number: no digit in exponent")
		}
		for i < len(src) && isDigit(src[i]) {
			if exp < maxExp {
				exp = min(exp*10+int(src[i]-'0'), maxExp)
			}
			i++
		}
		if negExp {
			exp = -exp
		}
		isFloat = true
	}
	if i < len(src) && isIdent(src[i]) {
		return s.fail(start, ErrSyntax, "invalid number")
	}
	s.pos = i

	if !isFloat {
		if !safeInteger(src[digits:intEnd]) {
			return s.fail(start, ErrNumberRange, "integer beyond ±(2^53-1)")
		}
		if intEnd-digits == 1 && src[digits] == '0' {
			s.out = append(s.out, '0') // "-0" and "0"
			return nil
		}
		s.out = append(s.out, src[start:intEnd]...)
		return nil
	}
	lit := src[start:i]
	if exp <= -10000 || exp >= 10000 {
		// strconv.ParseFloat stops reading an exponent at 10000, which is
		// wrong when the mantissa's digits make up for it.
		var ok bool
		if lit, ok = s.shortExponent(src[start] == '-', src[digits:intEnd], src[fracStart:fracEnd], exp); !ok {
			return s.fail(start, ErrNumberRange, "magnitude overflows float64")
		}
	}
	f, err := strconv.ParseFloat(bytesToString(lit), 64)
	if err != nil {
		// The grammar was checked above, so the only failure left is
		// overflow to ±Inf. Underflow rounds to zero without error, as in
		// ECMAScript.
		return s.fail(start, ErrNumberRange, "magnitude overflows float64")
	}
	if a := math.Abs(f); a > MaxSafeInteger && a < 1e21 {
		return s.fail(start, ErrNumberRange, "value would be written as an integer beyond ±(2^53-1)")
	}
	s.out = appendFloat(s.out, f)
	return nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// maxExp bounds the exponent values number keeps: beyond it every nonzero
// mantissa that fits in memory overflows or underflows.
const maxExp = 1 << 40

// shortExponent rewrites the number [-]intDigits.fracDigits × 10^exp, whose
// exponent strconv.ParseFloat would misread, as [-]0.D × 10^n with D its
// significant digits, for n small enough to be read exactly. It returns
// the literal in s.scratch, or "0" for a value below every subnormal, and
// ok false when the value overflows a float64.
func (s *state) shortExponent(neg bool, intDigits, fracDigits []byte, exp int) (lit []byte, ok bool) {
	// n is the decimal exponent of the value as 0.D × 10^n.
	n := len(intDigits) + exp
	if len(intDigits) == 1 && intDigits[0] == '0' {
		n, intDigits = exp, nil
		for len(fracDigits) > 0 && fracDigits[0] == '0' {
			fracDigits = fracDigits[1:]
			n--
		}
	}
	if len(intDigits) == 0 {
		for len(fracDigits) > 0 && fracDigits[len(fracDigits)-1] == '0' {
			fracDigits = fracDigits[:len(fracDigits)-1]
		}
		if len(fracDigits) == 0 {
			return []byte("0"), true
		}
	}
	switch {
	case n > 310: // at least 10^309
		return nil, false
	case n < -330: // below 10^-330, under half the smallest subnormal
		return []byte("0"), true
	}
	b := s.scratch[:0]
	if neg {
		b = append(b, '-')
	}
	b = append(b, '0', '.')
	b = append(b, intDigits...)
	b = append(b, fracDigits...)
	b = append(b, 'e')
	b = strconv.AppendInt(b, int64(n), 10)
	s.scratch = b
	return b, true
}

// safeInteger reports whether the decimal digits d, without leading zeros,
// denote at most MaxSafeInteger.
func safeInteger(d []byte) bool {
	const maxDigits = 16 // len("9007199254740991")
	if len(d) < maxDigits {
		return true
	}
	if len(d) > maxDigits {
		return false
	}
	var v uint64
	for _, c := range d {
		v = v*10 + uint64(c-'0')
	}
	return v <= MaxSafeInteger
}

// appendFloat appends the ECMAScript Number::toString form of the finite
// float64 f (ECMA-262 section 6.1.6.1.20), which RFC 8785 section 3.2.2.3
// adopts: the shortest digits that round-trip, laid out as an integer, a
// decimal fraction, or in exponent form depending on the decimal exponent.
// Both zeros are written "0".
func appendFloat(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0')
	}
	if f == math.Trunc(f) && math.Abs(f) <= MaxSafeInteger {
		return strconv.AppendInt(dst, int64(f), 10)
	}
	// strconv's shortest round-trip digits in scientific form:
	// [-]d[.ddd]e±xx.
	var tmp [32]byte
	b := strconv.AppendFloat(tmp[:0], f, 'e', -1, 64)
	if b[0] == '-' {
		dst = append(dst, '-')
		b = b[1:]
	}
	var digits [24]byte
	k := 0
	i := 0
	for ; b[i] != 'e'; i++ {
		if b[i] != '.' {
			digits[k] = b[i]
			k++
		}
	}
	i++ // 'e'
	negExp := b[i] == '-'
	i++ // sign
	e := 0
	for ; i < len(b); i++ {
		e = e*10 + int(b[i]-'0')
	}
	if negExp {
		e = -e
	}
	// ECMAScript's n: the value is 0.d1d2...dk × 10^n.
	n := e + 1
	d := digits[:k]
	switch {
	case k <= n && n <= 21:
		dst = append(dst, d...)
		for range n - k {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, d[:n]...)
		dst = append(dst, '.')
		dst = append(dst, d[n:]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for range -n {
			dst = append(dst, '0')
		}
		dst = append(dst, d...)
	default:
		dst = append(dst, d[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, d[1:]...)
		}
		dst = append(dst, 'e')
		if n-1 >= 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, int64(n-1), 10)
	}
	return dst
}
