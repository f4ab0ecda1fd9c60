package canon

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// checkAccepted verifies everything that must hold when Append accepted in
// and produced out: out is valid UTF-8 JSON with the same value as in, it is
// a fixed point of Append, Sum agrees with it, and gowebpki/jcs produces the
// same bytes whenever it accepts in as well.
func checkAccepted(tb testing.TB, in, out []byte) {
	tb.Helper()
	if !utf8.Valid(out) || !json.Valid(out) {
		tb.Fatalf("Append(%q) = %q, which is not valid UTF-8 JSON", in, out)
	}
	again, err := Append(nil, out)
	if err != nil {
		tb.Fatalf("Append(%q) = %q, which Append rejects: %v", in, out, err)
	}
	if !bytes.Equal(again, out) {
		tb.Fatalf("not idempotent:\n in    %q\n once  %q\n twice %q", in, out, again)
	}
	sum, err := Sum(in)
	if err != nil || sum != sha256.Sum256(out) {
		tb.Fatalf("Sum(%q) = %x, %v; want %x", in, sum, err, sha256.Sum256(out))
	}
	var vin, vout any
	if err := json.Unmarshal(in, &vin); err != nil {
		tb.Fatalf("encoding/json rejects accepted input %q: %v", in, err)
	}
	if err := json.Unmarshal(out, &vout); err != nil {
		tb.Fatalf("encoding/json rejects output %q: %v", out, err)
	}
	if !reflect.DeepEqual(vin, vout) {
		tb.Fatalf("value changed:\n in  %q\n out %q", in, out)
	}
	if want, err := jcs.Transform(in); err == nil && !bytes.Equal(out, want) {
		tb.Fatalf("differs from gowebpki/jcs:\n in   %q\n got  %q\n jcs  %q", in, out, want)
	}
}

// checkRejected verifies the shape of an error from Append and that a
// syntax error is only ever reported for text that is not JSON.
func checkRejected(tb testing.TB, in []byte, err error) {
	tb.Helper()
	var e *Error
	if !errors.As(err, &e) {
		tb.Fatalf("Append(%q) error %T %v is not *Error", in, err, err)
	}
	if e.Offset < 0 || e.Offset > len(in) {
		tb.Fatalf("Append(%q) error offset %d outside [0,%d]", in, e.Offset, len(in))
	}
	matched := 0
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			matched++
		}
	}
	if matched != 1 {
		tb.Fatalf("Append(%q) error %v matches %d sentinels, want 1", in, err, matched)
	}
	if errors.Is(err, ErrSyntax) && json.Valid(in) {
		tb.Fatalf("Append(%q) reports a syntax error, but encoding/json finds the text valid: %v", in, err)
	}
	if _, jerr := jcs.Transform(in); jerr == nil && !errors.Is(err, ErrNumberRange) && !errors.Is(err, ErrDuplicateKey) && !errors.Is(err, ErrTooDeep) && !errors.Is(err, ErrInvalidUTF8) {
		tb.Fatalf("gowebpki/jcs accepts %q, which Append rejects with %v", in, err)
	}
}

func FuzzAppend(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.Input))
	}
	for _, r := range rejections() {
		f.Add([]byte(r.in))
	}
	f.Add([]byte(benchEvent))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Append(nil, in)
		if err != nil {
			checkRejected(t, in, err)
			return
		}
		if !json.Valid(in) {
			t.Fatalf("Append accepted %q, which is not JSON", in)
		}
		checkAccepted(t, in, out)
	})
}

func TestDifferentialVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			want, err := jcs.Transform([]byte(v.Input))
			if err != nil {
				t.Fatalf("gowebpki/jcs rejects the vector: %v", err)
			}
			if string(want) != v.Output {
				t.Fatalf("gowebpki/jcs gives %s, the vector says %s", want, v.Output)
			}
			checkAccepted(t, []byte(v.Input), []byte(v.Output))
		})
	}
}

func TestDifferentialNumbers(t *testing.T) {
	for _, nv := range loadNumberVectors(t) {
		f := nv.float(t)
		got, err := jcs.NumberToJSON(f)
		if nv.Output == nil {
			if err == nil {
				t.Errorf("%s: gowebpki/jcs formats a non-finite value as %s", nv.IEEE754, got)
			}
			continue
		}
		if err != nil || got != *nv.Output {
			t.Errorf("%s: gowebpki/jcs gives %s, %v; the vector says %s", nv.IEEE754, got, err, *nv.Output)
		}
	}
	// Random finite doubles: the formatter must agree with the library on
	// every one of them.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		f := math.Float64frombits(rng.Uint64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			continue
		}
		want, err := jcs.NumberToJSON(f)
		if err != nil {
			t.Fatalf("gowebpki/jcs rejects %v: %v", f, err)
		}
		if got := string(appendFloat(nil, f)); got != want {
			t.Fatalf("appendFloat(%v) = %s, gowebpki/jcs gives %s", f, got, want)
		}
	}
}

// TestDifferentialGenerated canonicalizes pseudo-random documents (fixed
// seed) built to exercise key order across the UTF-16 edge cases, every
// escape form and every number layout, and compares with gowebpki/jcs.
func TestDifferentialGenerated(t *testing.T) {
	rng := rand.New(rand.NewPCG(8785, 2020))
	const docs = 3000
	compared := 0
	for range docs {
		var b strings.Builder
		genValue(rng, &b, 0)
		in := []byte(b.String())
		out, err := Append(nil, in)
		_, jerr := jcs.Transform(in)
		switch {
		case err == nil:
			if jerr != nil {
				t.Fatalf("Append accepts %q, gowebpki/jcs rejects it: %v", in, jerr)
			}
			checkAccepted(t, in, out)
			compared++
		case errors.Is(err, ErrDuplicateKey) || errors.Is(err, ErrNumberRange):
			// Generated keys collide on purpose now and then; big
			// integers are generated on purpose too.
		default:
			t.Fatalf("Append(%q): %v", in, err)
		}
	}
	if compared < docs*3/4 {
		t.Fatalf("only %d of %d generated documents were compared", compared, docs)
	}
	t.Logf("%d of %d generated documents compared", compared, docs)
}

// keyRunes are the code points keys and strings are built from: ASCII on
// both sides of the escaped characters, controls, the BMP just below and
// above the surrogate range, and supplementary code points.
var keyRunes = []rune{
	'a', 'b', 'A', 'z', '0', '1', '_', ' ', '"', '\\', '/', '\n', '\t', 0x00, 0x1f, 0x7f,
	0x80, 0xe9, 0xf6, 0x7ff, 0x800, 0x20ac, 0x2028, 0x2029, 0xd7ff, 0xe000, 0xfb33, 0xfeff, 0xffff,
	0x10000, 0x1f600, 0x10ffff,
}

func genString(rng *rand.Rand, b *strings.Builder, maxLen int) {
	b.WriteByte('"')
	for range rng.IntN(maxLen + 1) {
		r := keyRunes[rng.IntN(len(keyRunes))]
		switch {
		case rng.IntN(3) == 0 && r >= 0x10000:
			r -= 0x10000
			b.WriteString(`\u` + hex4String(0xd800+r>>10) + `\u` + hex4String(0xdc00+r&0x3ff))
		case rng.IntN(3) == 0 || r < 0x20 || r == '"' || r == '\\':
			switch {
			case r == '"' || r == '\\' || r == '/':
				if rng.IntN(2) == 0 {
					b.WriteString(`\` + string(r))
					continue
				}
			case r == '\n':
				if rng.IntN(2) == 0 {
					b.WriteString(`\n`)
					continue
				}
			}
			if r >= 0x10000 {
				b.WriteRune(r)
				continue
			}
			s := hex4String(r)
			if rng.IntN(2) == 0 {
				s = strings.ToUpper(s)
			}
			b.WriteString(`\u` + s)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

func hex4String(r rune) string {
	s := strconv.FormatInt(int64(r), 16)
	return strings.Repeat("0", 4-len(s)) + s
}

func genNumber(rng *rand.Rand, b *strings.Builder) {
	switch rng.IntN(8) {
	case 0:
		b.WriteString(strconv.FormatInt(rng.Int64N(MaxSafeInteger)-rng.Int64N(MaxSafeInteger), 10))
	case 1:
		b.WriteString(strconv.Itoa(rng.IntN(1000) - 500))
	case 2:
		if rng.IntN(5) == 0 { // rejected: beyond MaxSafeInteger
			b.WriteString(strconv.FormatUint(MaxSafeInteger+1+rng.Uint64N(1<<60), 10))
			return
		}
		b.WriteString(strconv.FormatInt(MaxSafeInteger-rng.Int64N(1000), 10))
	case 3:
		b.WriteString(strconv.FormatFloat(rng.NormFloat64()*math.Pow(10, float64(rng.IntN(60)-30)), 'g', -1, 64))
	case 4:
		b.WriteString(strconv.FormatFloat(rng.Float64()*1e6, 'f', rng.IntN(8)+1, 64))
	case 5:
		f := math.Float64frombits(rng.Uint64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			f = 1.5
		}
		b.WriteString(strconv.FormatFloat(f, 'e', -1, 64))
	case 6:
		b.WriteString(strconv.Itoa(rng.IntN(100)) + "." + strconv.Itoa(rng.IntN(100)) + "E" + strconv.Itoa(rng.IntN(60)-30))
	default:
		b.WriteString("-0")
		if rng.IntN(2) == 0 {
			b.WriteString(".0e-3")
		}
	}
}

func ws(rng *rand.Rand, b *strings.Builder) {
	if rng.IntN(4) == 0 {
		b.WriteString(" \n\t\r"[:rng.IntN(4)+1])
	}
}

func genValue(rng *rand.Rand, b *strings.Builder, depth int) {
	ws(rng, b)
	kind := rng.IntN(10)
	if depth >= 5 && kind < 4 {
		kind += 4
	}
	switch kind {
	case 0, 1:
		b.WriteByte('{')
		n := rng.IntN(8)
		if rng.IntN(10) == 0 {
			n = 13 + rng.IntN(20) // past the insertion-sort cutoff
		}
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			ws(rng, b)
			genString(rng, b, 3)
			ws(rng, b)
			b.WriteByte(':')
			genValue(rng, b, depth+1)
		}
		ws(rng, b)
		b.WriteByte('}')
	case 2, 3:
		b.WriteByte('[')
		n := rng.IntN(5)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			genValue(rng, b, depth+1)
		}
		ws(rng, b)
		b.WriteByte(']')
	case 4, 5:
		genString(rng, b, 12)
	case 6, 7, 8:
		genNumber(rng, b)
	default:
		b.WriteString([]string{"true", "false", "null"}[rng.IntN(3)])
	}
	ws(rng, b)
}
