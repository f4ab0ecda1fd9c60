package statecache

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
)

// TestCraftedKeysDoNotCluster: session keys come from agents, who can try
// keys until many of them hash to the same index slot (4,096 tries a key
// for a table of 4,096 slots). Those keys must still be spread over the
// table: lined up in one run of slots, every lookup in that part of the
// table would read the whole run from the file, one pread a slot.
func TestCraftedKeysDoNotCluster(t *testing.T) {
	c := New(Config{MaxHot: 1, Dir: t.TempDir()}, codec)
	defer c.Close()
	const keys = 500
	for i, n := 0, 0; n < keys; i++ {
		key := fmt.Sprintf("evil/s%d", i)
		sum := sha256.Sum256([]byte(key))
		if binary.LittleEndian.Uint64(sum[:8])&(minSlots-1) != 0 {
			continue
		}
		n++
		if err := c.Put(key, &state{Key: key}); err != nil {
			t.Fatal(err)
		}
	}
	if c.cold.slots != minSlots {
		t.Fatalf("index has %d slots, the keys were crafted for %d", c.cold.slots, minSlots)
	}
	var used []uint64
	if err := c.cold.each(c.cold.f, c.cold.slots, func(i uint64, _ slot) error {
		used = append(used, i)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(used)
	longest, run := 0, 0
	for j, i := range used {
		if j > 0 && i == used[j-1]+1 {
			run++
		} else {
			run = 1
		}
		longest = max(longest, run)
	}
	if longest > 32 {
		t.Fatalf("%d crafted keys fill a run of %d consecutive index slots", keys, longest)
	}
}
