package statecache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
)

type state struct {
	Key   string `json:"key"`
	Count int    `json:"count"`
	Pad   string `json:"pad"`
}

var codec = Codec[state]{
	Encode: func(v *state) ([]byte, error) { return json.Marshal(v) },
	Decode: func(key string, b []byte) (*state, error) {
		var v state
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, err
		}
		if v.Key != key {
			return nil, fmt.Errorf("state of %q read for %q", v.Key, key)
		}
		return &v, nil
	},
}

// TestAgainstMap drives a Cache and a plain map with the same random
// get-modify-put traffic over many more keys than MaxHot, and checks that
// every read agrees, while the decoded set stays within MaxHot.
func TestAgainstMap(t *testing.T) {
	defer func(v int64) { minCompactBytes = v }(minCompactBytes)
	minCompactBytes = 4 << 10 // compact often
	c := New(Config{MaxHot: 8, Dir: t.TempDir(), Name: "test"}, codec)
	defer c.Close()
	want := map[string]state{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		key := fmt.Sprintf("tenant/s%d", rng.IntN(300))
		got, err := c.Get(key)
		if err != nil {
			t.Fatal(err)
		}
		w, known := want[key]
		switch {
		case got == nil && known:
			t.Fatalf("op %d: %s lost (want %+v)", i, key, w)
		case got != nil && !known:
			t.Fatalf("op %d: %s appeared from nowhere: %+v", i, key, got)
		case got != nil && *got != w:
			t.Fatalf("op %d: %s = %+v, want %+v", i, key, *got, w)
		}
		if got == nil {
			got = &state{Key: key, Pad: fmt.Sprintf("%0*d", rng.IntN(200), 0)}
		}
		got.Count++
		if rng.IntN(4) > 0 { // sometimes read only
			if err := c.Put(key, got); err != nil {
				t.Fatal(err)
			}
			want[key] = *got
		} else {
			got.Count-- // keep the unsaved change out of both
		}
		if hot, _ := c.Len(); hot > 8 {
			t.Fatalf("op %d: %d decoded states, MaxHot 8", i, hot)
		}
	}
	hot, spilled := c.Len()
	if hot+spilled != len(want) {
		t.Fatalf("cache holds %d+%d sessions, want %d", hot, spilled, len(want))
	}
	st := c.Stats()
	if st.Spilled == 0 || st.Loaded == 0 || st.Compactions == 0 {
		t.Fatalf("traffic did not exercise spill, load and compaction: %+v", st)
	}
	for key, w := range want {
		got, err := c.Get(key)
		if err != nil || got == nil || *got != w {
			t.Fatalf("final %s = %+v, %v; want %+v", key, got, err, w)
		}
	}
	if c.size > 2*c.cold.live+minCompactBytes {
		t.Fatalf("spill file %d bytes for %d live", c.size, c.cold.live)
	}
}

func TestSpillFileIsUnlinked(t *testing.T) {
	dir := t.TempDir()
	c := New(Config{MaxHot: 1, Dir: dir}, codec)
	for i := range 3 {
		k := fmt.Sprint(i)
		if err := c.Put(k, &state{Key: k}); err != nil {
			t.Fatal(err)
		}
	}
	if _, spilled := c.Len(); spilled != 2 {
		t.Fatalf("spilled %d, want 2", spilled)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("spill dir holds %v (%v); the file must be unlinked", entries, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeErrorIsReported(t *testing.T) {
	c := New(Config{MaxHot: 1, Dir: t.TempDir()}, Codec[state]{
		Encode: codec.Encode,
		Decode: func(string, []byte) (*state, error) { return nil, fmt.Errorf("corrupt") },
	})
	defer c.Close()
	for _, k := range []string{"a", "b"} {
		if err := c.Put(k, &state{Key: k}); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := c.Get("a"); err == nil || v != nil {
		t.Fatalf("Get of an undecodable spilled state = %v, %v; want an error", v, err)
	}
}

// BenchmarkMiss is the cost of bringing an evicted session back: read from
// the spill file (page cache), decode, and evict another one.
func BenchmarkMiss(b *testing.B) {
	c := New(Config{MaxHot: 100, Dir: b.TempDir()}, codec)
	defer c.Close()
	pad := fmt.Sprintf("%01000d", 0)
	const keys = 10000
	for i := range keys {
		k := fmt.Sprint(i)
		if err := c.Put(k, &state{Key: k, Pad: pad}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := fmt.Sprint(i % keys)
		i += 101
		v, err := c.Get(k)
		if err != nil || v == nil {
			b.Fatal(k, err)
		}
	}
}

// TestSpilledSessionsCostNoMemory spills 100,000 sessions through a cache
// that keeps 16 decoded: the Go heap must not grow with them (their
// locations live in the on-disk index), and every one must come back.
func TestSpilledSessionsCostNoMemory(t *testing.T) {
	c := New(Config{MaxHot: 16, Dir: t.TempDir()}, codec)
	defer c.Close()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	const n = 100000
	put := func(from, to int) {
		for i := from; i < to; i++ {
			k := fmt.Sprintf("tenant/session-%d", i)
			if err := c.Put(k, &state{Key: k, Count: i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(0, 1000)
	before := heap()
	put(1000, n)
	after := heap()
	if _, spilled := c.Len(); spilled != n-16 {
		t.Fatalf("%d spilled, want %d", spilled, n-16)
	}
	if grew := int64(after) - int64(before); grew > 1<<20 {
		t.Fatalf("heap grew %d bytes for %d spilled sessions; the index must not live in memory", grew, n-1000)
	}
	for i := 0; i < n; i += 997 {
		k := fmt.Sprintf("tenant/session-%d", i)
		v, err := c.Get(k)
		if err != nil || v == nil || v.Count != i {
			t.Fatalf("%s = %+v, %v", k, v, err)
		}
	}
	if v, err := c.Get("tenant/never-seen"); v != nil || err != nil {
		t.Fatalf("unknown key = %+v, %v", v, err)
	}
}

// TestBytesKeys checks that GetBytes and PutBytes see the same states as
// Get and Put, hot or spilled, and that a key buffer reused by the caller
// after PutBytes does not change what is stored.
func TestBytesKeys(t *testing.T) {
	c := New(Config{MaxHot: 2, Dir: t.TempDir()}, codec)
	defer c.Close()
	buf := make([]byte, 0, 8)
	for i := range 6 {
		buf = fmt.Appendf(buf[:0], "k%d", i)
		if err := c.PutBytes(buf, &state{Key: string(buf), Count: i}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		buf = fmt.Appendf(buf[:0], "k%d", i)
		v, err := c.GetBytes(buf)
		if err != nil || v == nil || v.Count != i {
			t.Fatalf("GetBytes(k%d) = %+v, %v", i, v, err)
		}
		v.Count += 10
		if err := c.PutBytes(buf, v); err != nil {
			t.Fatal(err)
		}
		if w, err := c.Get(fmt.Sprintf("k%d", i)); err != nil || w.Count != i+10 {
			t.Fatalf("Get(k%d) = %+v, %v", i, w, err)
		}
	}
	if v, err := c.GetBytes([]byte("absent")); v != nil || err != nil {
		t.Fatalf("GetBytes(absent) = %+v, %v", v, err)
	}
	if c.Stats().Loaded == 0 {
		t.Fatal("nothing was read back from the spill file")
	}
}

// TestCorruptSpillIsDetected: a spilled state damaged on disk, or one the
// index locates at the wrong record (here an older one of the same
// session), must fail Get, so that the stage aborts and rebuilds from its
// state topic, instead of being decoded into a state the log does not back.
func TestCorruptSpillIsDetected(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(t *testing.T, c *Cache[state])
		corrupt bool // the error is ErrCorrupt, not the read's own
	}{
		{"a digit of the state changed", func(t *testing.T, c *Cache[state]) {
			b := make([]byte, c.size)
			if _, err := c.file.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			i := bytes.LastIndex(b, []byte(`"count":1234`))
			if i < 0 {
				t.Fatalf("state not found in the spill file: %q", b)
			}
			if _, err := c.file.WriteAt([]byte("9"), int64(i+len(`"count":`))); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"the index points at an older record of the session", func(t *testing.T, c *Cache[state]) {
			i, r, ok, err := c.cold.find(hashKey("a"))
			if err != nil || !ok || r.off == 0 {
				t.Fatalf("find a = %d, %+v, %v, %v; want a record past the first", i, r, ok, err)
			}
			if err := c.cold.write(i, slot{h: hashKey("a"), ref: ref{off: 0, n: r.n, sum: r.sum}}); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"the spill file truncated", func(t *testing.T, c *Cache[state]) {
			if err := c.file.Truncate(c.size / 2); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(Config{MaxHot: 1, Dir: t.TempDir()}, codec)
			defer c.Close()
			put := func(key string, count int) {
				t.Helper()
				if err := c.Put(key, &state{Key: key, Count: count}); err != nil {
					t.Fatal(err)
				}
			}
			// a is spilled at offset 0 with count 1000, read back, and
			// spilled again with count 1234: the same length.
			put("a", 1000)
			put("b", 1)
			if v, err := c.Get("a"); err != nil || v == nil || v.Count != 1000 {
				t.Fatalf("Get a = %+v, %v", v, err)
			}
			put("a", 1234)
			put("b", 2)
			tc.damage(t, c)
			v, err := c.Get("a")
			if err == nil || tc.corrupt && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Get of a damaged spilled state = %+v, %v; want an error", v, err)
			}
		})
	}
}

// TestMaxHotBytes: with MaxHotBytes, states whose sizes SetSize (or the
// spill file) reports are evicted, least recently used first, once the
// hot ones add up to more than the bound, whatever MaxHot allows; the most
// recently used state stays even when it alone is larger; evicted states
// read back intact, with the size they were spilled at.
func TestMaxHotBytes(t *testing.T) {
	c := New(Config{MaxHot: 100, MaxHotBytes: 1000, Dir: t.TempDir(), Name: "test"}, codec)
	defer c.Close()
	put := func(key string, pad int) {
		t.Helper()
		v := &state{Key: key, Pad: strings.Repeat("x", pad)}
		if err := c.Put(key, v); err != nil {
			t.Fatal(err)
		}
		b, _ := codec.Encode(v)
		if err := c.SetSize([]byte(key), len(b)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		put(fmt.Sprintf("s%d", i), 200) // ~230 bytes each: four fit
	}
	if hot, spilled := c.Len(); hot != 4 || spilled != 6 || c.HotBytes() > 1000 {
		t.Fatalf("hot %d, spilled %d, hot bytes %d; want 4 hot within 1000 bytes", hot, spilled, c.HotBytes())
	}
	put("big", 5000)
	if hot, _ := c.Len(); hot != 1 || c.HotBytes() < 5000 {
		t.Fatalf("after a 5000-byte state: hot %d, hot bytes %d; want it alone", hot, c.HotBytes())
	}
	v, err := c.Get("s0") // read back from the spill file, with its size
	if err != nil || v == nil || v.Key != "s0" || len(v.Pad) != 200 {
		t.Fatalf("s0 read back: %+v, %v", v, err)
	}
	if hot, _ := c.Len(); hot != 1 || c.HotBytes() > 1000 {
		t.Fatalf("after reading s0 back: hot %d, hot bytes %d; want the big state spilled", hot, c.HotBytes())
	}
	if err := c.SetSize([]byte("nope"), 1<<20); err != nil || c.HotBytes() > 1000 {
		t.Fatalf("SetSize of a key not held: %v, hot bytes %d", err, c.HotBytes())
	}
}
