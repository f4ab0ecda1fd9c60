package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxSize bounds the encoded size of one manifest in bytes.
const MaxSize = 1 << 20

// Parse decodes and validates one manifest. Decoding is strict: unknown
// fields (keys are case-sensitive), duplicate keys, null values (except for
// a list, where null means the same as an absent or empty list), values of
// the wrong JSON type, numbers that are not integers, invalid UTF-8, data
// after the top-level object and documents larger than MaxSize are
// rejected. The decoded manifest is then checked with Validate.
//
// On failure Parse returns a nil manifest and a *ValidationError that lists
// every problem found (all decoding problems, or, if decoding succeeded,
// all validation problems); a syntax error stops decoding at that point.
func Parse(data []byte) (*Manifest, error) {
	m, errs := parse(data, current)
	if len(errs) > 0 {
		return nil, &ValidationError{Errors: errs}
	}
	return m, nil
}

// ParseRecorded is Parse for a manifest that recorded decisions name (the
// replayer's archive): a manifest an earlier build accepted is accepted,
// although a limit has been tightened since (max_tool_calls up to 100000,
// a suffix pattern ending in a number), so that its decisions can still be
// replayed. Everything else is checked as Parse checks it.
func ParseRecorded(data []byte) (*Manifest, error) {
	m, errs := parse(data, recorded)
	if len(errs) > 0 {
		return nil, &ValidationError{Errors: errs}
	}
	return m, nil
}

// Load reads and parses the manifest file at path. Errors name the path and
// wrap the cause (an *fs.PathError or a *ValidationError).
func Load(path string) (*Manifest, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	m, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return m, nil
}

// readFile reads at most MaxSize+1 bytes of path, so that an oversized file
// is rejected by parse without being read whole.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("load manifest %s: %w", path, err)
	}
	return data, nil
}

// parse decodes data strictly and validates the result. If decoding fails
// the manifest is nil; otherwise it is returned even when validation
// problems are reported, so that callers can add their own checks.
func parse(data []byte, r rules) (*Manifest, []FieldError) {
	switch {
	case len(data) > MaxSize:
		return nil, []FieldError{{Code: CodeSyntax, Problem: fmt.Sprintf("manifest is larger than %d bytes", MaxSize)}}
	case !utf8.Valid(data):
		return nil, []FieldError{{Code: CodeSyntax, Problem: "manifest is not valid UTF-8"}}
	}
	var m Manifest
	d := &decoder{dec: json.NewDecoder(bytes.NewReader(data))}
	d.dec.UseNumber()
	if err := d.document(reflect.ValueOf(&m).Elem()); err != nil {
		return nil, []FieldError{{Code: CodeSyntax, Problem: syntaxProblem(err)}}
	}
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	return &m, m.validate(r)
}

// decoder walks the token stream of a manifest and fills a value of the
// manifest types through reflection, recording every structural problem.
// Field names come from the json tags of types.go, so the decoder and the
// types cannot drift apart.
type decoder struct {
	dec  *json.Decoder
	errs []FieldError
}

func (d *decoder) add(path string, code Code, format string, args ...any) {
	d.errs = append(d.errs, FieldError{Path: path, Code: code, Problem: fmt.Sprintf(format, args...)})
}

// document decodes the top-level value and checks that nothing follows it.
// A returned error is a syntax error; other problems are in d.errs.
func (d *decoder) document(v reflect.Value) error {
	if err := d.value("", v); err != nil {
		return err
	}
	switch _, err := d.dec.Token(); {
	case err == io.EOF:
		return nil
	case err != nil:
		return err
	default:
		return errTrailing
	}
}

var errTrailing = errors.New("unexpected data after the top-level object")

func (d *decoder) value(path string, v reflect.Value) error {
	tok, err := d.dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		// null is a list's only alternative spelling: it is what
		// encoding/json writes for a nil slice, and means the same as an
		// absent or empty list.
		if v.Kind() != reflect.Slice {
			d.add(path, CodeWrongType, "must be %s, not null", describe(v.Type()))
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Struct:
		if tok != json.Delim('{') {
			d.wrongType(path, v.Type(), tok)
			return d.skip(tok)
		}
		return d.object(path, v)
	case reflect.Slice:
		if tok != json.Delim('[') {
			d.wrongType(path, v.Type(), tok)
			return d.skip(tok)
		}
		return d.array(path, v)
	case reflect.String:
		s, ok := tok.(string)
		if !ok {
			d.wrongType(path, v.Type(), tok)
			return d.skip(tok)
		}
		v.SetString(s)
	case reflect.Bool:
		b, ok := tok.(bool)
		if !ok {
			d.wrongType(path, v.Type(), tok)
			return d.skip(tok)
		}
		v.SetBool(b)
	case reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			d.wrongType(path, v.Type(), tok)
			return d.skip(tok)
		}
		if strings.ContainsAny(string(n), ".eE") {
			d.add(path, CodeWrongType, "must be an integer written without fraction or exponent, got %s", n)
			return nil
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			d.add(path, CodeOutOfRange, "%s is out of the 64-bit integer range", n)
			return nil //nolint:nilerr // recorded as a field error by d.add
		}
		v.SetInt(i)
	default:
		// Unreachable for the manifest types; reported rather than ignored
		// should a field of a new kind be added to types.go.
		return fmt.Errorf("field %s has unsupported Go kind %s", path, v.Kind())
	}
	return nil
}

// object decodes the members of an object whose '{' was consumed into the
// struct v.
func (d *decoder) object(path string, v reflect.Value) error {
	fields := jsonFields(v.Type())
	seen := make(map[string]bool, len(fields))
	for d.dec.More() {
		tok, err := d.dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string) // the decoder only yields string keys
		p := joinPath(path, key)
		idx, known := fields[key]
		switch {
		case seen[key]:
			d.add(p, CodeDuplicateKey, "duplicate key %q", key)
		case !known:
			d.unknown(p, key, fields)
		}
		if seen[key] || !known {
			if err := d.skipValue(); err != nil {
				return err
			}
			continue
		}
		seen[key] = true
		if err := d.value(p, v.Field(idx)); err != nil {
			return err
		}
	}
	_, err := d.dec.Token() // '}'
	return err
}

func (d *decoder) unknown(path, key string, fields map[string]int) {
	for name := range fields {
		if strings.EqualFold(name, key) {
			d.add(path, CodeUnknownField, "unknown field %q (keys are case-sensitive: did you mean %q?)", key, name)
			return
		}
	}
	d.add(path, CodeUnknownField, "unknown field %q", key)
}

// array decodes the elements of an array whose '[' was consumed into the
// slice v. The result is non-nil even when the array is empty.
func (d *decoder) array(path string, v reflect.Value) error {
	s := reflect.MakeSlice(v.Type(), 0, 0)
	for i := 0; d.dec.More(); i++ {
		s = reflect.Append(s, reflect.Zero(v.Type().Elem()))
		if err := d.value(fmt.Sprintf("%s[%d]", path, i), s.Index(i)); err != nil {
			return err
		}
	}
	v.Set(s)
	_, err := d.dec.Token() // ']'
	return err
}

// skipValue consumes one whole value.
func (d *decoder) skipValue() error {
	tok, err := d.dec.Token()
	if err != nil {
		return err
	}
	return d.skip(tok)
}

// skip consumes the rest of the value that starts with tok.
func (d *decoder) skip(tok json.Token) error {
	depth := 0
	for {
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
		var err error
		if tok, err = d.dec.Token(); err != nil {
			return err
		}
	}
}

func (d *decoder) wrongType(path string, t reflect.Type, tok json.Token) {
	d.add(path, CodeWrongType, "must be %s, got %s", describe(t), tokenKind(tok))
}

func describe(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Struct:
		return "an object"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(describe(t.Elem()), "a "), "an ") + "s"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int64:
		return "an integer"
	}
	return t.String()
}

func tokenKind(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		if tok == json.Delim('{') {
			return "an object"
		}
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}

// jsonFields maps the JSON names of t's fields to their indexes.
func jsonFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		fields[name] = i
	}
	return fields
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func syntaxProblem(err error) string {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "invalid JSON: unexpected end of input"
	}
	return "invalid JSON: " + err.Error()
}
