package stream

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPartitionMatchesKgo checks Partition against the partition franz-go's
// key partitioner picks (the one the Java client uses) for 2,000 keys.
func TestPartitionMatchesKgo(t *testing.T) {
	for _, n := range []int32{1, 3, 8, 12, 64, 1000} {
		t.Run(fmt.Sprintf("partitions=%d", n), func(t *testing.T) {
			tp := kgo.StickyKeyPartitioner(nil).ForTopic("t")
			mismatches := 0
			for i := range 2000 {
				key := fmt.Appendf(nil, "tenant-%d/session-%d", i%17, i)
				want := int32(tp.Partition(&kgo.Record{Key: key}, int(n)))
				if got := Partition(key, n); got != want {
					mismatches++
					if mismatches < 5 {
						t.Errorf("Partition(%q, %d) = %d, kgo = %d", key, n, got, want)
					}
				}
			}
			if mismatches > 0 {
				t.Fatalf("%d of 2000 keys mismatched", mismatches)
			}
		})
	}
}

// TestMurmur2GoldenVectors checks the hash against the Java client's own
// test vectors (Utils.murmur2, signed 32-bit results).
func TestMurmur2GoldenVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/murmur2.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Key  string `json:"key"`
		Hash int32  `json:"murmur2"`
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	if len(vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vectors {
		if got := int32(murmur2([]byte(v.Key))); got != v.Hash {
			t.Errorf("murmur2(%q) = %d, want %d", v.Key, got, v.Hash)
		}
	}
}

func TestPartitionPanicsOnNoPartitions(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Partition(key, 0) did not panic")
		}
	}()
	Partition([]byte("k"), 0)
}

func BenchmarkPartition(b *testing.B) {
	key := []byte("tenant-00000001/session-0000000001")
	for b.Loop() {
		Partition(key, 48)
	}
}
