package chstore

import (
	"fmt"
	"testing"
	"time"
)

// TestBlocksBoundPartitions: rows spanning more months than one insert
// block may touch are split into blocks of at most 100 months, every row in
// exactly one block; rows within a few months stay one block in order.
func TestBlocksBoundPartitions(t *testing.T) {
	monthly := func(n int) func(i int) int64 {
		return func(i int) int64 {
			return time.Date(2000+(i%n)/12, time.Month(1+(i%n)%12), 1, 0, 0, 0, 0, time.UTC).UnixMilli()
		}
	}
	if got := blocks(0, monthly(1)); got != nil {
		t.Fatalf("blocks(0) = %v", got)
	}
	if got := blocks(3, nil); fmt.Sprint(got) != "[[0 1 2]]" {
		t.Fatalf("unpartitioned: %v", got)
	}
	if got := blocks(500, monthly(100)); len(got) != 1 || len(got[0]) != 500 || got[0][499] != 499 {
		t.Fatalf("100 months: %d blocks", len(got))
	}
	date := monthly(250)
	got := blocks(1000, date)
	if len(got) != 3 {
		t.Fatalf("250 months: %d blocks, want 3", len(got))
	}
	seen := make(map[int]bool)
	for _, rows := range got {
		months := make(map[int64]bool)
		for j, i := range rows {
			if seen[i] || (j > 0 && rows[j-1] >= i) {
				t.Fatalf("row %d twice or out of order", i)
			}
			seen[i] = true
			months[date(i)] = true
		}
		if len(months) > maxPartitionsPerBlock {
			t.Fatalf("a block touches %d months", len(months))
		}
	}
	if len(seen) != 1000 {
		t.Fatalf("%d rows in blocks, want 1000", len(seen))
	}
}
