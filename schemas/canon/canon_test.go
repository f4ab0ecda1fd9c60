package canon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// vector is one entry of testdata/vectors.json.
type vector struct {
	Name   string `json:"name"`
	Input  string `json:"input"`
	Output string `json:"output"`
	SHA256 string `json:"sha256"`
}

// numberVector is one entry of testdata/rfc8785-numbers.json.
type numberVector struct {
	IEEE754 string  `json:"ieee754"`
	Output  *string `json:"output"`
	Comment string  `json:"comment"`
}

func readJSON(tb testing.TB, name string, v any) {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
}

func loadVectors(tb testing.TB) []vector {
	tb.Helper()
	var file struct{ Vectors []vector }
	readJSON(tb, "vectors.json", &file)
	if len(file.Vectors) == 0 {
		tb.Fatal("vectors.json holds no vectors")
	}
	return file.Vectors
}

func loadNumberVectors(tb testing.TB) []numberVector {
	tb.Helper()
	var file struct{ Vectors []numberVector }
	readJSON(tb, "rfc8785-numbers.json", &file)
	if len(file.Vectors) == 0 {
		tb.Fatal("rfc8785-numbers.json holds no vectors")
	}
	return file.Vectors
}

func (nv numberVector) float(tb testing.TB) float64 {
	tb.Helper()
	bits, err := strconv.ParseUint(nv.IEEE754, 16, 64)
	if err != nil {
		tb.Fatalf("ieee754 %q: %v", nv.IEEE754, err)
	}
	return math.Float64frombits(bits)
}

// mustAppend canonicalizes in and fails the test on error.
func mustAppend(tb testing.TB, in []byte) []byte {
	tb.Helper()
	out, err := Append(nil, in)
	if err != nil {
		tb.Fatalf("Append(%q): %v", in, err)
	}
	return out
}

func TestAppendVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			prefix := []byte("prefix:")
			got, err := Append(prefix, []byte(v.Input))
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("Append dropped dst prefix: %q", got)
			}
			if got := string(got[len(prefix):]); got != v.Output {
				t.Fatalf("Append:\n got %s\nwant %s", got, v.Output)
			}
			sum, err := Sum([]byte(v.Input))
			if err != nil {
				t.Fatalf("Sum: %v", err)
			}
			if got := hex.EncodeToString(sum[:]); got != v.SHA256 {
				t.Fatalf("Sum = %s, want %s", got, v.SHA256)
			}
			if again := mustAppend(t, []byte(v.Output)); string(again) != v.Output {
				t.Fatalf("canonical output is not a fixed point: %s", again)
			}
		})
	}
}

func TestAppendRFC8785Section324UTF8Bytes(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "rfc8785-3.2.4-utf8.hex"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := hex.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
	if err != nil {
		t.Fatal(err)
	}
	in := loadVectors(t)[0]
	if in.Name != "rfc8785 section 3.2.2 example" {
		t.Fatalf("first vector is %q, want the section 3.2.2 example", in.Name)
	}
	if got := mustAppend(t, []byte(in.Input)); !bytes.Equal(got, want) {
		t.Fatalf("got  % x\nwant % x", got, want)
	}
}

func TestAppendRFC8785Numbers(t *testing.T) {
	for _, nv := range loadNumberVectors(t) {
		t.Run(nv.IEEE754, func(t *testing.T) {
			f := nv.float(t)
			literal := strconv.FormatFloat(f, 'e', -1, 64)
			if nv.Output == nil {
				if !math.IsNaN(f) && !math.IsInf(f, 0) {
					t.Fatalf("%s has no output but is the finite %v", nv.IEEE754, f)
				}
				// Neither the Go spelling nor an overflowing literal may be
				// accepted.
				for _, in := range []string{literal, "1e400", "NaN", "Infinity"} {
					if _, err := Append(nil, []byte(in)); err == nil {
						t.Fatalf("Append(%q) accepted a non-finite number", in)
					}
				}
				return
			}
			if got := string(appendFloat(nil, f)); got != *nv.Output {
				t.Fatalf("appendFloat(%v) = %s, want %s", f, got, *nv.Output)
			}
			// Through the parser: the exponent form is a float literal, so it is
			// formatted, unless its canonical text would be an integer beyond
			// ±MaxSafeInteger (2^53 and 2^68 in the table), which Append rejects.
			got, err := Append(nil, []byte(literal))
			if a := math.Abs(f); a > MaxSafeInteger && a < 1e21 {
				if !errors.Is(err, ErrNumberRange) {
					t.Fatalf("Append(%s) = %s, %v; want ErrNumberRange", literal, got, err)
				}
			} else if err != nil || string(got) != *nv.Output {
				t.Fatalf("Append(%s) = %s, %v; want %s", literal, got, err, *nv.Output)
			}
			// The expected text must itself read back as the same double.
			back, err := strconv.ParseFloat(*nv.Output, 64)
			if err != nil || back != f && !(f == 0 && back == 0) {
				t.Fatalf("expected text %s reads back as %v (%v), want %v", *nv.Output, back, err, f)
			}
		})
	}
}

func TestAppendFloatLayout(t *testing.T) {
	tests := []struct {
		name string
		in   float64
		want string
	}{
		{"one", 1, "1"},
		{"integer below 2^53 fast path", 123456789, "123456789"},
		{"largest plain integer", 1e20, "100000000000000000000"},
		{"first exponent form", 1e21, "1e+21"},
		{"first plain fraction", 1e-6, "0.000001"},
		{"last exponent form", 1e-7, "1e-7"},
		{"fraction with integer part", 12.5, "12.5"},
		{"negative small", -1.5e-9, "-1.5e-9"},
		{"negative plain fraction", -0.25, "-0.25"},
		{"negative zero", math.Copysign(0, -1), "0"},
		{"max float", math.MaxFloat64, "1.7976931348623157e+308"},
		{"smallest subnormal", math.SmallestNonzeroFloat64, "5e-324"},
		{"many digits above 2^53", 1.2345678901234567e19, "12345678901234567000"},
		{"exponent form with digits", 1.2345e25, "1.2345e+25"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(appendFloat(nil, tt.in)); got != tt.want {
				t.Fatalf("appendFloat(%v) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

// TestAppendNumberExponentBeyond10000 guards against strconv.ParseFloat,
// which stops reading an exponent's digits once its value reaches 10000:
// a literal whose long mantissa makes up for a larger exponent must still
// read as its nearest double.
func TestAppendNumberExponentBeyond10000(t *testing.T) {
	zeros := strings.Repeat("0", 100000)
	tests := []struct {
		name, in, want string
	}{
		{"leading zeros make up for the exponent", "0." + zeros + "1e100001", "1"},
		{"negative", "-0." + zeros + "15e100001", "-1.5"},
		{"integer digits make up for the exponent", "1" + zeros + "e-100000", "1"},
		{"both parts", "12" + zeros + ".5e-100001", "1.2"},
		{"fraction result", "0." + zeros + "1e99999", "0.01"},
		{"exponent with leading zeros", "0." + zeros + "1e000100001", "1"},
		{"upper case E and plus sign", "0." + zeros + "25E+100001", "2.5"},
		{"still underflows", "1e-100000", "0"},
		{"zero mantissa", "0.000e100000", "0"},
		{"huge exponent underflows", "1e-99999999999999999999999", "0"},
		{"below half the smallest subnormal", "0." + zeros + "2e99677", "0"},
		{"smallest subnormal", "0." + zeros + "5e99677", "5e-324"},
		{"max float", "0." + zeros + "17976931348623157e100309", "1.7976931348623157e+308"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Append(nil, []byte(tt.in))
			if err != nil || string(got) != tt.want {
				t.Fatalf("Append(%.40q...) = %s, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
	for _, in := range []string{"1e100000", "0." + zeros + "1e100310", "1" + zeros + "e-99000", "-0." + zeros + "2e100310"} {
		if _, err := Append(nil, []byte(in)); !errors.Is(err, ErrNumberRange) {
			t.Fatalf("Append(%.40q...): %v, want ErrNumberRange", in, err)
		}
	}
}

func TestAppendString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", `""`},
		{"plain", "web_fetch", `"web_fetch"`},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
		{"short escapes", "\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"other controls lowercase hex", "\x00\x0b\x1f", `"\u0000\u000b\u001f"`},
		{"delete literal", "\x7f", "\"\x7f\""},
		{"separators literal", "\u2028\u2029", "\"\u2028\u2029\""},
		{"solidus literal", "a/b", `"a/b"`},
		{"non-ASCII literal", "é€😀", `"é€😀"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendString([]byte("x"), tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "x"+tt.want {
				t.Fatalf("AppendString(%q) = %s, want x%s", tt.in, got, tt.want)
			}
			// The literal must canonicalize to itself.
			if again := mustAppend(t, got[1:]); string(again) != tt.want {
				t.Fatalf("Append(%s) = %s", tt.want, again)
			}
		})
	}
}

func TestAppendStringRejectsInvalidUTF8(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		offset int
	}{
		{"lone continuation byte", "ab\x80", 2},
		{"truncated sequence", "\xe2\x82", 0},
		{"encoded surrogate", "x\xed\xa0\x80", 1},
		{"overlong slash", "\xc0\xaf", 0},
		{"byte 0xff", "\xff", 0},
		{"after valid multi-byte characters", "é€\xff", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("keep")
			got, err := AppendString(dst, tt.in)
			if !errors.Is(err, ErrInvalidUTF8) {
				t.Fatalf("err = %v, want ErrInvalidUTF8", err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Offset != tt.offset {
				t.Fatalf("err = %#v, want *Error at offset %d", err, tt.offset)
			}
			if string(got) != "keep" {
				t.Fatalf("dst changed to %q", got)
			}
		})
	}
}

func TestAppendIntegers(t *testing.T) {
	tests := []struct {
		name    string
		signed  bool
		i       int64
		u       uint64
		want    string
		wantErr error
	}{
		{name: "zero", signed: true, i: 0, want: "0"},
		{name: "max safe", signed: true, i: MaxSafeInteger, want: "9007199254740991"},
		{name: "min safe", signed: true, i: -MaxSafeInteger, want: "-9007199254740991"},
		{name: "above max safe", signed: true, i: MaxSafeInteger + 1, wantErr: ErrNumberRange},
		{name: "below min safe", signed: true, i: -MaxSafeInteger - 1, wantErr: ErrNumberRange},
		{name: "min int64", signed: true, i: math.MinInt64, wantErr: ErrNumberRange},
		{name: "unsigned max safe", u: MaxSafeInteger, want: "9007199254740991"},
		{name: "unsigned above max safe", u: MaxSafeInteger + 1, wantErr: ErrNumberRange},
		{name: "max uint64", u: math.MaxUint64, wantErr: ErrNumberRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []byte
			var err error
			if tt.signed {
				got, err = AppendInt([]byte("["), tt.i)
			} else {
				got, err = AppendUint([]byte("["), tt.u)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || string(got) != "[" {
					t.Fatalf("got %q, %v; want [ and %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != "["+tt.want {
				t.Fatalf("got %q, %v; want [%s", got, err, tt.want)
			}
		})
	}
}

func TestCompareKeysIsUTF16Order(t *testing.T) {
	keys := []string{
		"", "\x00", "\r", "1", "A", "a", "ab", "\u007f", "\u0080", "ö", "\u07ff", "\u0800",
		"€", "\ud7ff", "\ue000", "דּ", "\uffff", "\U00010000", "😀", "\U0010ffff", "a\U00010000", "a\uffff",
	}
	utf16Less := func(a, b string) int {
		ua, ub := utf16Units(a), utf16Units(b)
		for i := 0; i < len(ua) && i < len(ub); i++ {
			if ua[i] != ub[i] {
				return int(ua[i]) - int(ub[i])
			}
		}
		return len(ua) - len(ub)
	}
	sign := func(x int) int {
		switch {
		case x < 0:
			return -1
		case x > 0:
			return 1
		}
		return 0
	}
	for _, a := range keys {
		for _, b := range keys {
			if got, want := sign(compareKeys([]byte(a), []byte(b))), sign(utf16Less(a, b)); got != want {
				t.Errorf("compareKeys(%+q, %+q) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func utf16Units(s string) []uint16 {
	var u []uint16
	for _, r := range s {
		if r >= 0x10000 {
			r -= 0x10000
			u = append(u, uint16(0xD800+r>>10), uint16(0xDC00+r&0x3FF))
			continue
		}
		u = append(u, uint16(r))
	}
	return u
}

func TestSumMatchesSHA256OfAppend(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			sum, err := Sum([]byte(v.Input))
			if err != nil {
				t.Fatal(err)
			}
			if want := sha256.Sum256(mustAppend(t, []byte(v.Input))); sum != want {
				t.Fatalf("Sum = %x, want %x", sum, want)
			}
		})
	}
}

func TestSumRejectsLikeAppend(t *testing.T) {
	sum, err := Sum([]byte(`{"a":1,"a":1}`))
	if !errors.Is(err, ErrDuplicateKey) {
		t.Fatalf("err = %v, want ErrDuplicateKey", err)
	}
	if sum != [32]byte{} {
		t.Fatalf("Sum returned a digest %x with an error", sum)
	}
}

func TestAppendKeepsDstOnError(t *testing.T) {
	dst := make([]byte, 3, 64)
	copy(dst, "abc")
	got, err := Append(dst, []byte(`{"b":[1,2,3],"a":{"x":1,"x":2}}`))
	if !errors.Is(err, ErrDuplicateKey) {
		t.Fatalf("err = %v, want ErrDuplicateKey", err)
	}
	if string(got) != "abc" {
		t.Fatalf("dst = %q, want abc", got)
	}
}

// A regression guard for the pooled state: a failed call must not leave
// members or keys behind that a later call would sort or compare against.
func TestAppendAfterFailureIsClean(t *testing.T) {
	bad := []string{
		`{"b":{"\u0061":1,"c":{"z":1,"y":2,`,
		`{"\n":1,"\u000a":2}`,
		`[` + strings.Repeat(`{"k":`, MaxDepth),
	}
	for _, b := range bad {
		if _, err := Append(nil, []byte(b)); err == nil {
			t.Fatalf("Append(%q) accepted", b)
		}
		if got := string(mustAppend(t, []byte(`{"b":1,"a":{"d":2,"c":3}}`))); got != `{"a":{"c":3,"d":2},"b":1}` {
			t.Fatalf("after %q: got %s", b, got)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"syntax says what was expected", `{"a" 1}`, `canon: invalid JSON syntax at offset 5: unexpected '1', expected ':' after object key`},
		{"end of input", `[1,`, `canon: invalid JSON syntax at offset 3: unexpected end of input, expected a value`},
		{"duplicate names the key", `{"k":1,"k":2}`, `canon: duplicate object key at offset 7: key "k"`},
		{"long duplicate key is truncated", `{"` + strings.Repeat("x", 40) + `":1,"` + strings.Repeat("x", 40) + `":2}`, `canon: duplicate object key at offset 46: key "` + strings.Repeat("x", 32) + `" (truncated from 40 bytes)`},
		{"trailing data", `1 2`, `canon: trailing data after JSON value at offset 2`},
		{"non-ASCII byte is shown as hex", "\xff", `canon: invalid JSON syntax at offset 0: unexpected byte 0xff, expected a value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Append(nil, []byte(tt.in))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error = %v\n want %s", err, tt.want)
			}
		})
	}
}

func TestAppendAllocations(t *testing.T) {
	// With the race detector sync.Pool drops items at random, so a call
	// may have to build its scratch space afresh.
	limit := 0.0
	if raceEnabled {
		limit = 8
	}
	src := []byte(benchEvent)
	dst := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Append(dst[:0], src); err != nil {
			t.Fatal(err)
		}
	}); n > limit {
		t.Fatalf("Append allocates %v times per call, want at most %v", n, limit)
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Sum(src); err != nil {
			t.Fatal(err)
		}
	}); n > limit {
		t.Fatalf("Sum allocates %v times per call, want at most %v", n, limit)
	}
}

func TestBenchEventSize(t *testing.T) {
	if n := len(benchEvent); n < 280 || n > 320 {
		t.Fatalf("benchEvent is %d bytes; the benchmarks are named for about 300", n)
	}
}

func TestAppendLargeObject(t *testing.T) {
	// More members than the insertion-sort cutoff, in reverse order, with
	// keys on both sides of the UTF-16/code point order difference: for the
	// same prefix, "…😀" (D83D DE00) sorts before "…\ufff0".
	const n = 200
	escaped := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf(`"k%03d\ufff0"`, i/2)
		}
		return fmt.Sprintf(`"k%03d\ud83d\ude00"`, i/2)
	}
	literal := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("\"k%03d\ufff0\"", i/2)
		}
		return fmt.Sprintf("\"k%03d😀\"", i/2)
	}
	// Canonical order: for each number, the emoji key, then the U+FFF0 key.
	var canonical []int
	for k := range n / 2 {
		canonical = append(canonical, 2*k+1, 2*k)
	}
	var in, want strings.Builder
	in.WriteByte('{')
	for j := len(canonical) - 1; j >= 0; j-- {
		fmt.Fprintf(&in, "%s:%d", escaped(canonical[j]), canonical[j])
		if j > 0 {
			in.WriteByte(',')
		}
	}
	in.WriteByte('}')
	want.WriteByte('{')
	for j, i := range canonical {
		if j > 0 {
			want.WriteByte(',')
		}
		fmt.Fprintf(&want, "%s:%d", literal(i), i)
	}
	want.WriteByte('}')
	if got := string(mustAppend(t, []byte(in.String()))); got != want.String() {
		t.Fatalf("got  %.300s...\nwant %.300s...", got, want.String())
	}

	// Rename the key of member 14 to the key of member 10, which comes
	// later in the (reversed) input.
	dup := strings.Replace(in.String(), escaped(14)+":", escaped(10)+":", 1)
	_, err := Append(nil, []byte(dup))
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrDuplicateKey) {
		t.Fatalf("duplicate in a large object: err = %v, want ErrDuplicateKey", err)
	}
	if want := strings.LastIndex(dup, escaped(10)+":"); e.Offset != want {
		t.Fatalf("duplicate reported at offset %d, want %d (the later of the two)", e.Offset, want)
	}
}
