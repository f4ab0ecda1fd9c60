package chstore

import (
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
