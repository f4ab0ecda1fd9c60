package projector

import (
	"fmt"
	"slices"
	"testing"

	"aegis.dev/aegis/decider/session"
)

// TestEvictDropsTerminatedThenLeastRecentlyUsed: over the bound the cache
// drops terminated sessions first, then the least recently used, down to
// nine tenths of the bound; at or under the bound it drops nothing.
func TestEvictDropsTerminatedThenLeastRecentlyUsed(t *testing.T) {
	p := &Projector{cfg: Config{CachedSessions: 10}, snaps: map[SessionKey]*session.Snapshot{}, used: map[SessionKey]uint64{}}
	key := func(i int) SessionKey { return SessionKey{"acme", fmt.Sprintf("s%02d", i)} }
	add := func(i int, used uint64, terminated bool) {
		sn := session.New("acme", key(i).SessionID)
		sn.Terminated = terminated
		p.snaps[key(i)] = sn
		p.used[key(i)] = used
	}
	for i := range 10 {
		add(i, uint64(100+i), i == 7)
	}
	p.evict()
	if len(p.snaps) != 10 {
		t.Fatalf("at the bound: %d cached, want all 10", len(p.snaps))
	}
	// Five more, used later than the first ten except s03, used last.
	for i := 10; i < 15; i++ {
		add(i, uint64(200+i), false)
	}
	p.used[key(3)] = 300
	p.evict()
	var kept []string
	for k := range p.snaps {
		kept = append(kept, k.SessionID)
	}
	slices.Sort(kept)
	// Keep 9 of 15: drop the terminated s07, then the five least recently
	// used (s00, s01, s02, s04, s05).
	want := []string{"s03", "s06", "s08", "s09", "s10", "s11", "s12", "s13", "s14"}
	if !slices.Equal(kept, want) {
		t.Errorf("kept %v, want %v", kept, want)
	}
	if len(p.used) != len(p.snaps) {
		t.Errorf("%d use marks for %d snapshots", len(p.used), len(p.snaps))
	}
}
