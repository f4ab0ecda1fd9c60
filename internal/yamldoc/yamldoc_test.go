package yamldoc

import (
	"errors"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	type doc struct {
		A int `yaml:"a"`
	}
	for _, tc := range []struct {
		in   string
		want error // nil: decodes
		a    int
	}{
		{"a: 1\n", nil, 1},
		{"a: 1\n---\n", nil, 1},             // an empty second document
		{"# only a comment\n", ErrEmpty, 0}, // no document
		{"", ErrEmpty, 0},
		{"a: 1\n---\na: 2\n", ErrMoreDocuments, 1},
		{"a: 1\n---\nb: 2\n", ErrMoreDocuments, 1},
	} {
		var d doc
		err := DecodeStrict([]byte(tc.in), &d)
		if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) || d.A != tc.a {
			t.Errorf("%q: %v, a=%d; want %v, a=%d", tc.in, err, d.A, tc.want, tc.a)
		}
	}
	var d doc
	if err := DecodeStrict([]byte("a: 1\nb: 2\n"), &d); err == nil || errors.Is(err, ErrEmpty) || errors.Is(err, ErrMoreDocuments) {
		t.Errorf("an unknown key: %v", err)
	}
}
