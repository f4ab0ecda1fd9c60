package canon

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite testdata/rejections.json from the rejection table")

// rejection is one input that must not canonicalize.
type rejection struct {
	name   string
	in     string
	err    error
	offset int
}

// errorCodes names the sentinels in testdata/rejections.json.
var errorCodes = []struct {
	code string
	err  error
}{
	{"syntax", ErrSyntax},
	{"invalid_utf8", ErrInvalidUTF8},
	{"duplicate_key", ErrDuplicateKey},
	{"number_range", ErrNumberRange},
	{"trailing_data", ErrTrailingData},
	{"too_deep", ErrTooDeep},
}

func errorCode(tb testing.TB, err error) string {
	tb.Helper()
	for _, c := range errorCodes {
		if err == c.err {
			return c.code
		}
	}
	tb.Fatalf("no code for %v", err)
	return ""
}

func rejections() []rejection {
	deepArray := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	deepObject := strings.Repeat(`{"a":`, MaxDepth+1) + "1" + strings.Repeat("}", MaxDepth+1)
	return []rejection{
		// Not JSON at all.
		{"empty input", "", ErrSyntax, 0},
		{"only whitespace", " \n\t", ErrSyntax, 3},
		{"NaN token", "NaN", ErrSyntax, 0},
		{"Infinity token", "Infinity", ErrSyntax, 0},
		{"negative Infinity token", "-Infinity", ErrSyntax, 0},
		{"NaN inside array", "[1,NaN]", ErrSyntax, 3},
		{"leading plus", "+1", ErrSyntax, 0},
		{"leading dot", ".5", ErrSyntax, 0},
		{"trailing dot", "1.", ErrSyntax, 0},
		{"leading zero", "01", ErrSyntax, 0},
		{"negative leading zero", "-01", ErrSyntax, 0},
		{"lone minus", "-", ErrSyntax, 0},
		{"empty exponent", "1e", ErrSyntax, 0},
		{"signed empty exponent", "1e+", ErrSyntax, 0},
		{"hex number", "0x10", ErrSyntax, 0},
		{"number followed by letter", "[1a]", ErrSyntax, 1},
		{"truncated literal", "tru", ErrSyntax, 0},
		{"literal followed by letter", "truex", ErrSyntax, 0},
		{"capitalized literal", "True", ErrSyntax, 0},
		{"single quoted string", "'a'", ErrSyntax, 0},
		{"unquoted key", "{a:1}", ErrSyntax, 1},
		{"missing colon", `{"a" 1}`, ErrSyntax, 5},
		{"trailing comma in object", `{"a":1,}`, ErrSyntax, 7},
		{"missing comma in object", `{"a":1 "b":2}`, ErrSyntax, 7},
		{"trailing comma in array", "[1,]", ErrSyntax, 3},
		{"missing comma in array", "[1 2]", ErrSyntax, 3},
		{"unterminated array", "[1", ErrSyntax, 2},
		{"unterminated object", `{"a":1`, ErrSyntax, 6},
		{"unterminated string", `"abc`, ErrSyntax, 4},
		{"unterminated escape", `"\`, ErrSyntax, 2},
		{"raw control character in string", "\"a\x01\"", ErrSyntax, 2},
		{"raw newline in string", "\"a\nb\"", ErrSyntax, 2},
		{"unknown escape", `"\x"`, ErrSyntax, 1},
		{"short unicode escape", `"\u12"`, ErrSyntax, 1},
		{"non-hex unicode escape", `"\u12g4"`, ErrSyntax, 1},
		{"byte order mark", "\ufeff{}", ErrSyntax, 0},
		{"comment", "/* c */ 1", ErrSyntax, 0},
		{"non-ASCII outside string", "[\xc3\xa9]", ErrSyntax, 1},

		// Not UTF-8, or a surrogate escape that encodes no character.
		{"lone high surrogate escape", `"\ud800"`, ErrInvalidUTF8, 1},
		{"lone low surrogate escape", `"\udc00"`, ErrInvalidUTF8, 1},
		{"high surrogate then letter escape", `"\ud800\u0041"`, ErrInvalidUTF8, 1},
		{"two high surrogates", `"\ud83d\ud83d"`, ErrInvalidUTF8, 1},
		{"reversed surrogate pair", `"\ude00\ud83d"`, ErrInvalidUTF8, 1},
		{"high surrogate at end of string", `"ab\uD83D"`, ErrInvalidUTF8, 3},
		{"lone surrogate in key", `{"\udfff":1}`, ErrInvalidUTF8, 2},
		{"byte 0xff in string", "\"a\xff\"", ErrInvalidUTF8, 2},
		{"continuation byte in string", "\"\x80\"", ErrInvalidUTF8, 1},
		{"overlong encoding", "\"\xc0\xaf\"", ErrInvalidUTF8, 1},
		{"UTF-8 encoded surrogate", "\"\xed\xa0\x80\"", ErrInvalidUTF8, 1},
		{"truncated sequence", "\"\xe2\x82\"", ErrInvalidUTF8, 1},
		{"code point above U+10FFFF", "\"\xf4\x90\x80\x80\"", ErrInvalidUTF8, 1},
		{"invalid UTF-8 in key", "{\"\xfe\":1}", ErrInvalidUTF8, 2},

		// Duplicate keys.
		{"duplicate key", `{"a":1,"a":2}`, ErrDuplicateKey, 7},
		{"duplicate key with equal values", `{"a":1,"a":1}`, ErrDuplicateKey, 7},
		{"duplicate key out of order", `{"b":1,"a":2,"b":3}`, ErrDuplicateKey, 13},
		{"duplicate key after unescaping", `{"a":1,"\u0061":2}`, ErrDuplicateKey, 7},
		{"duplicate escaped control key", `{"\n":1,"\u000a":2}`, ErrDuplicateKey, 8},
		{"duplicate supplementary key", `{"😀":1,"\ud83d\ude00":2}`, ErrDuplicateKey, 10},
		{"duplicate empty key", `{"":1,"":2}`, ErrDuplicateKey, 6},
		{"duplicate key in nested object", `[{"x":{"k":1,"j":2,"k":3}}]`, ErrDuplicateKey, 19},

		// Numbers a double cannot hold exactly or at all.
		{"integer 2^53", "9007199254740992", ErrNumberRange, 0},
		{"integer -2^53", "-9007199254740992", ErrNumberRange, 0},
		{"integer 2^53+1", "9007199254740993", ErrNumberRange, 0},
		{"twenty digit integer", "12345678901234567890", ErrNumberRange, 0},
		{"large integer in object", `{"seq":18446744073709551615}`, ErrNumberRange, 7},
		{"float literal 2^53", "9007199254740992.0", ErrNumberRange, 0},
		{"float literal rounding to 2^53", "9007199254740993e0", ErrNumberRange, 0},
		{"float literal 1e20", "[1e20]", ErrNumberRange, 1},
		{"negative float literal just below 1e21", "-999999999999999900000.0", ErrNumberRange, 0},
		{"float overflow", "1E400", ErrNumberRange, 0},
		{"negative float overflow", "-1e400", ErrNumberRange, 0},
		{"float just above max", "1.8e308", ErrNumberRange, 0},

		// Anything after the value.
		{"second value", "1 2", ErrTrailingData, 2},
		{"text after object", "{} x", ErrTrailingData, 3},
		{"extra closing bracket", "[]]", ErrTrailingData, 2},
		{"comma after value", "null,", ErrTrailingData, 4},
		{"two strings", `"a""b"`, ErrTrailingData, 3},
		{"NUL after value", "0\x00", ErrTrailingData, 1},

		// Nesting.
		{"arrays nested beyond MaxDepth", deepArray, ErrTooDeep, MaxDepth},
		{"objects nested beyond MaxDepth", deepObject, ErrTooDeep, 5 * MaxDepth},
	}
}

func TestAppendRejects(t *testing.T) {
	for _, tt := range rejections() {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("dst")
			got, err := Append(dst, []byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("Append(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error", err)
			}
			if e.Offset != tt.offset {
				t.Fatalf("Offset = %d, want %d (%v)", e.Offset, tt.offset, err)
			}
			if string(got) != "dst" {
				t.Fatalf("dst = %q, want it unchanged", got)
			}
			for _, c := range errorCodes {
				if c.err != tt.err && errors.Is(err, c.err) {
					t.Fatalf("error %v also matches %v", err, c.err)
				}
			}
			if _, err := Sum([]byte(tt.in)); !errors.Is(err, tt.err) {
				t.Fatalf("Sum error = %v, want %v", err, tt.err)
			}
		})
	}
}

// rejectionVector is one entry of testdata/rejections.json. Inputs that are
// not valid UTF-8 are given in input_hex instead of input.
type rejectionVector struct {
	Name     string  `json:"name"`
	Input    *string `json:"input,omitempty"`
	InputHex string  `json:"input_hex,omitempty"`
	Error    string  `json:"error"`
	Offset   int     `json:"offset"`
}

// TestRejectionVectorsFile keeps testdata/rejections.json, the form of the
// rejection table that implementations in other languages read, equal to the
// table above. Run with -update after changing the table.
func TestRejectionVectorsFile(t *testing.T) {
	var file struct {
		Description string            `json:"description"`
		Codes       map[string]string `json:"codes"`
		Vectors     []rejectionVector `json:"vectors"`
	}
	file.Description = "Inputs that an Aegis RFC 8785 canonicalizer must reject, with the error code and the byte offset reported by the Go implementation. input is the JSON text as a string; input_hex gives its bytes when they are not valid UTF-8."
	file.Codes = map[string]string{}
	for _, c := range errorCodes {
		file.Codes[c.code] = c.err.Error()
	}
	for _, r := range rejections() {
		v := rejectionVector{Name: r.name, Error: errorCode(t, r.err), Offset: r.offset}
		if utf8.ValidString(r.in) {
			v.Input = &r.in
		} else {
			v.InputHex = hex.EncodeToString([]byte(r.in))
		}
		file.Vectors = append(file.Vectors, v)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	if err := enc.Encode(file); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "rejections.json")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf.Bytes()) {
		t.Fatalf("%s is out of date with the rejection table; run go test -run TestRejectionVectorsFile -update", path)
	}
}
