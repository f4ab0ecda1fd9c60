package chstore

import (
	"fmt"
	"testing"
	"time"
)

// TestPlainDateIsTheServersDay: the driver returns a Date as midnight of
// the day in the server's time zone; on a server east of UTC that instant
// is the previous day in UTC, and the day must not move.
func TestPlainDateIsTheServersDay(t *testing.T) {
	for _, loc := range []*time.Location{time.UTC, time.FixedZone("JST", 9*3600), time.FixedZone("EST", -5*3600)} {
		d := time.Date(2026, time.January, 1, 0, 0, 0, 0, loc)
		if got := plain("Date", d); got != "2026-01-01" {
			t.Errorf("%s: Date %v read as %v, want 2026-01-01", loc, d, got)
		}
	}
}

// TestPlainArrays: an array's elements are plain values too. An
// Array(UInt8) (groupArray of a 0/1 column) came back as a []uint8, which
// `aegisctl sql --format json` printed as a base64 string, and an
// Array(Date) as instants rather than days.
func TestPlainArrays(t *testing.T) {
	jst := time.FixedZone("JST", 9*3600)
	cases := []struct {
		dbType string
		v      any
		want   string
	}{
		{"Array(UInt8)", []uint8{1, 0}, "[]interface {}{1, 0}"},
		{"Array(Date)", []time.Time{time.Date(2026, time.January, 1, 0, 0, 0, 0, jst)}, `[]interface {}{"2026-01-01"}`},
		{"Array(Nullable(UInt32))", []*uint32{nil, new(uint32)}, "[]interface {}{interface {}(nil), 0}"},
		{"Array(Array(UInt16))", [][]uint16{{7}}, "[]interface {}{[]interface {}{7}}"},
		{"Array(String)", []string{"a"}, `[]interface {}{"a"}`},
	}
	for _, c := range cases {
		if got := fmt.Sprintf("%#v", plain(c.dbType, c.v)); got != c.want {
			t.Errorf("%s: %s, want %s", c.dbType, got, c.want)
		}
	}
}
