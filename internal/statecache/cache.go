// Package statecache holds the per-session state of one partition of a
// transactional stage (the decider's snapshots, the sealer's chain heads)
// within a memory bound.
//
// The authority for that state is the stage's compacted state topic; a
// Cache is only a processor's working copy of it. The most recently used
// sessions are kept decoded in memory (at most MaxHot of them); the others
// are kept encoded in a spill file on local disk and decoded again when
// their session comes back. Where each spilled state lies is kept in an
// on-disk hash table (index.go), not in memory. Memory is therefore
// O(MaxHot × state size), whatever the number of sessions: a stage's memory
// stays flat while a fleet keeps opening new sessions. MaxHotBytes bounds
// the hot states' encoded size too, so that sessions whose states an agent
// inflated to the reducer's limits cannot multiply that by MaxHot.
//
// The spill and index files are created in Dir and unlinked at once, so
// they never outlive the process (their blocks are freed when the Cache is
// closed or the process exits, crash included) and no two caches share
// one. The index keeps a CRC-32C of each spilled state, so a state damaged
// on disk, or a record that is not the one spilled last for its key, fails
// Get with ErrCorrupt instead of being decoded. The spill file is
// rewritten without its dead records when they make up more than half of
// it. A Cache is rebuilt from the state topic after every abort like any
// other processor state, so it needs no durability of its own; an error of
// any method leaves it unusable, and its processor is rebuilt the same way.
//
// A Cache is not safe for concurrent use; a processor is used by one
// goroutine at a time.
package statecache

import (
	"errors"
	"fmt"
	"hash/crc32"
	"hash/maphash"
	"os"
)

// Codec turns a state value into bytes and back.
type Codec[T any] struct {
	Encode func(v *T) ([]byte, error)
	Decode func(key string, b []byte) (*T, error)
}

// Config configures a Cache.
type Config struct {
	// MaxHot bounds the decoded sessions kept in memory (minimum 1).
	MaxHot int
	// MaxHotBytes, if positive, also bounds the encoded size of the
	// states kept in memory, as last told by SetSize or read from the
	// spill file; the most recently used state is kept whatever its size.
	MaxHotBytes int64
	// Dir is where the spill file is created (default os.TempDir()).
	Dir string
	// Name prefixes the spill file's name, for operators looking at open
	// files (e.g. "decider-p3").
	Name string
}

// minCompactBytes is the spill file size below which it is never
// rewritten (a variable for tests).
var minCompactBytes int64 = 64 << 20

// Cache is a bounded LRU of decoded session states over a spill file.
type Cache[T any] struct {
	cfg   Config
	codec Codec[T]

	hot      map[string]*node[T]
	hotBytes int64   // sum of the hot nodes' sizes
	head     node[T] // sentinel: head.next is the most recently used
	cold     index

	file *os.File
	size int64 // bytes written to file

	stats Stats
}

type node[T any] struct {
	key        string
	v          *T
	size       int64 // encoded bytes, as last known
	prev, next *node[T]
}

type ref struct {
	off int64
	n   int32
	sum uint32 // CRC-32C (Castagnoli) of the n bytes at off
}

// Stats counts a Cache's traffic.
type Stats struct {
	Spilled     int64 // states written to the spill file
	Loaded      int64 // states read back from it
	Compactions int64 // rewrites of the spill file
}

// New returns an empty Cache. The spill file is created at the first
// eviction.
func New[T any](cfg Config, codec Codec[T]) *Cache[T] {
	if cfg.MaxHot < 1 {
		cfg.MaxHot = 1
	}
	c := &Cache[T]{cfg: cfg, codec: codec, hot: make(map[string]*node[T]), cold: index{cfg: cfg, seed: maphash.MakeSeed()}}
	c.head.prev, c.head.next = &c.head, &c.head
	return c
}

// Len returns how many sessions are held decoded and spilled.
func (c *Cache[T]) Len() (hot, spilled int) { return len(c.hot), int(c.cold.used) }

// HotBytes returns the encoded size of the states held in memory, as far
// as SetSize and the spill file told it.
func (c *Cache[T]) HotBytes() int64 { return c.hotBytes }

// Stats returns the Cache's counters.
func (c *Cache[T]) Stats() Stats { return c.stats }

// Get returns the state of key, loading it from the spill file if it was
// evicted; nil if the key is unknown. The returned value stays valid and may
// be modified in place until the next Put or Get of another key; call Put
// to keep it.
func (c *Cache[T]) Get(key string) (*T, error) {
	if n, ok := c.hot[key]; ok {
		c.touch(n)
		return n.v, nil
	}
	i, r, ok, err := c.cold.find(hashKey(key))
	if err != nil || !ok {
		return nil, err
	}
	if r.off < 0 || r.off > c.size-int64(r.n) {
		return nil, fmt.Errorf("statecache: spilled %q: %d bytes at offset %d, past the spill file's %d: %w", key, r.n, r.off, c.size, ErrCorrupt)
	}
	b := make([]byte, r.n)
	if _, err := c.file.ReadAt(b, r.off); err != nil {
		return nil, fmt.Errorf("statecache: read %q from spill file: %w", key, err)
	}
	if crc32.Checksum(b, castagnoli) != r.sum {
		return nil, fmt.Errorf("statecache: spilled %q at offset %d: checksum mismatch: %w", key, r.off, ErrCorrupt)
	}
	v, err := c.codec.Decode(key, b)
	if err != nil {
		return nil, fmt.Errorf("statecache: decode spilled %q: %w", key, err)
	}
	if err := c.cold.removeAt(i, r); err != nil {
		return nil, err
	}
	c.stats.Loaded++
	if err := c.insert(key, v, int64(len(b))); err != nil {
		return nil, err
	}
	return v, nil
}

// GetBytes is Get with the key as bytes: a state held in memory is found
// without converting the key to a string.
func (c *Cache[T]) GetBytes(key []byte) (*T, error) {
	if n, ok := c.hot[string(key)]; ok {
		c.touch(n)
		return n.v, nil
	}
	return c.Get(string(key))
}

// PutBytes is Put with the key as bytes: the key is converted to a string
// only when the state is not held in memory yet.
func (c *Cache[T]) PutBytes(key []byte, v *T) error {
	if n, ok := c.hot[string(key)]; ok {
		n.v = v
		c.touch(n)
		return nil
	}
	return c.Put(string(key), v)
}

// Put stores v as the state of key and makes it the most recently used,
// evicting the least recently used states beyond MaxHot to the spill file.
func (c *Cache[T]) Put(key string, v *T) error {
	if n, ok := c.hot[key]; ok {
		n.v = v
		c.touch(n)
		return nil
	}
	if err := c.cold.remove(hashKey(key)); err != nil {
		return err
	}
	return c.insert(key, v, 0)
}

// SetSize records n as the encoded size of key's state, held in memory
// (a stage knows it when it writes the state record), and evicts the least
// recently used other states while the hot ones exceed MaxHotBytes. A key
// not held in memory is ignored.
func (c *Cache[T]) SetSize(key []byte, n int) error {
	nd, ok := c.hot[string(key)]
	if !ok {
		return nil
	}
	c.hotBytes += int64(n) - nd.size
	nd.size = int64(n)
	return c.evictOver()
}

// Close releases the spill file; the Cache must not be used afterwards.
func (c *Cache[T]) Close() error {
	c.hot = nil
	err := c.cold.close()
	if c.file != nil {
		if cerr := c.file.Close(); err == nil {
			err = cerr
		}
		c.file = nil
	}
	return err
}

func (c *Cache[T]) insert(key string, v *T, size int64) error {
	n := &node[T]{key: key, v: v, size: size}
	c.hot[key] = n
	c.hotBytes += size
	c.link(n)
	return c.evictOver()
}

// evictOver spills the least recently used states while more than MaxHot
// are held, or more than MaxHotBytes, keeping the most recently used one.
func (c *Cache[T]) evictOver() error {
	for len(c.hot) > c.cfg.MaxHot || (c.cfg.MaxHotBytes > 0 && c.hotBytes > c.cfg.MaxHotBytes && len(c.hot) > 1) {
		if err := c.evict(c.head.prev); err != nil {
			return err
		}
	}
	return c.maybeCompact()
}

func (c *Cache[T]) evict(n *node[T]) error {
	b, err := c.codec.Encode(n.v)
	if err != nil {
		return fmt.Errorf("statecache: encode %q: %w", n.key, err)
	}
	if err := c.append(n.key, b); err != nil {
		return err
	}
	c.unlink(n)
	delete(c.hot, n.key)
	c.hotBytes -= n.size
	c.stats.Spilled++
	return nil
}

func (c *Cache[T]) append(key string, b []byte) error {
	if c.file == nil {
		f, err := createUnlinked(c.cfg.Dir, c.cfg.Name)
		if err != nil {
			return err
		}
		c.file = f
	}
	if len(b) > 1<<31-1 {
		return fmt.Errorf("statecache: state of %q is %d bytes: %w", key, len(b), errTooLarge)
	}
	if _, err := c.file.WriteAt(b, c.size); err != nil {
		return fmt.Errorf("statecache: spill %q: %w", key, err)
	}
	if err := c.cold.put(hashKey(key), ref{off: c.size, n: int32(len(b)), sum: crc32.Checksum(b, castagnoli)}); err != nil {
		return err
	}
	c.size += int64(len(b))
	return nil
}

var errTooLarge = errors.New("too large to spill")

// ErrCorrupt reports a spilled state that is not what was spilled: damaged
// on disk, or not the record the index says it is.
var ErrCorrupt = errors.New("statecache: corrupt spill record")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maybeCompact rewrites the spill file with only its live records once
// dead ones (states loaded back or replaced) are the majority.
func (c *Cache[T]) maybeCompact() error {
	if c.size < minCompactBytes || c.cold.live*2 > c.size {
		return nil
	}
	f, err := createUnlinked(c.cfg.Dir, c.cfg.Name)
	if err != nil {
		return err
	}
	var off int64
	var buf []byte
	err = c.cold.relocate(func(s slot) (ref, error) {
		if cap(buf) < int(s.ref.n) {
			buf = make([]byte, s.ref.n)
		}
		buf = buf[:s.ref.n]
		if _, err := c.file.ReadAt(buf, s.ref.off); err != nil {
			return ref{}, fmt.Errorf("statecache: compact: read: %w", err)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return ref{}, fmt.Errorf("statecache: compact: write: %w", err)
		}
		r := ref{off: off, n: s.ref.n, sum: s.ref.sum}
		off += int64(s.ref.n)
		return r, nil
	})
	if err != nil {
		// The index may point into either file now: this cache is
		// unusable, and its processor is rebuilt from the state topic.
		f.Close()
		return err
	}
	old := c.file
	c.file, c.size = f, off
	c.cold.live = off
	c.stats.Compactions++
	return old.Close()
}

// CheckDir reports an error if spill files cannot be created in dir (not
// writable, a read-only file system): a stage checks it at start rather
// than fail at its first eviction, which may come hours later.
func CheckDir(dir string) error {
	f, err := createUnlinked(dir, "check")
	if err != nil {
		return err
	}
	return f.Close()
}

func createUnlinked(dir, name string) (*os.File, error) {
	if name == "" {
		name = "state"
	}
	f, err := os.CreateTemp(dir, "aegis-"+name+"-*.spill")
	if err != nil {
		return nil, fmt.Errorf("statecache: create spill file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("statecache: unlink spill file: %w", err)
	}
	return f, nil
}

func (c *Cache[T]) link(n *node[T]) {
	n.prev, n.next = &c.head, c.head.next
	c.head.next.prev = n
	c.head.next = n
}

func (c *Cache[T]) unlink(n *node[T]) {
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
}

func (c *Cache[T]) touch(n *node[T]) {
	if c.head.next == n {
		return
	}
	c.unlink(n)
	c.link(n)
}
