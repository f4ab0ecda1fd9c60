package statecache

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"os"
)

// index maps a spilled session's key to where its state lies in the spill
// file. It is an open-addressing hash table (linear probing) kept in its own
// unlinked file, so a spilled session costs no memory at all: the page cache
// holds what is hot. Keys are identified by the first 16 bytes of their
// SHA-256 — session keys come from agents, so the identity must resist
// crafted collisions — and every loaded state is checked against its key by
// the codec anyway. The slot a key's probe starts at is a hash of that
// identity seeded at random per index (home), so agents cannot pile their
// keys up in one run of slots either: were it bits of the SHA-256, a few
// thousand tries a key would find keys that all start at one slot, and
// every lookup landing in their run would read it slot by slot.
//
// A slot is slotSize bytes: the key hash, the state's offset and length in
// the spill file, and its CRC-32C. Length 0 marks an empty slot, -1 a
// deleted one; deleted slots are reclaimed when the table is rebuilt.
type index struct {
	cfg   Config
	seed  maphash.Seed
	f     *os.File
	slots uint64 // power of two; 0 until the first insert
	used  uint64 // live entries
	dead  uint64 // deleted slots
	live  int64  // bytes of the spill file referenced
	buf   [slotSize]byte
}

const (
	slotSize     = 32
	minSlots     = 1 << 12
	deletedSlot  = -1
	maxLoadTimes = 2 // rebuild when used+dead exceeds slots/maxLoadTimes
)

type keyHash [16]byte

func hashKey(key string) keyHash {
	sum := sha256.Sum256([]byte(key))
	return keyHash(sum[:16])
}

type slot struct {
	h   keyHash
	ref ref
}

func (x *index) read(i uint64) (slot, error) {
	if _, err := x.f.ReadAt(x.buf[:], int64(i*slotSize)); err != nil {
		return slot{}, fmt.Errorf("statecache: read index slot %d: %w", i, err)
	}
	var s slot
	copy(s.h[:], x.buf[:16])
	s.ref.off = int64(binary.LittleEndian.Uint64(x.buf[16:24]))
	s.ref.n = int32(binary.LittleEndian.Uint32(x.buf[24:28]))
	s.ref.sum = binary.LittleEndian.Uint32(x.buf[28:32])
	return s, nil
}

func (x *index) write(i uint64, s slot) error {
	copy(x.buf[:16], s.h[:])
	binary.LittleEndian.PutUint64(x.buf[16:24], uint64(s.ref.off))
	binary.LittleEndian.PutUint32(x.buf[24:28], uint32(s.ref.n))
	binary.LittleEndian.PutUint32(x.buf[28:32], s.ref.sum)
	if _, err := x.f.WriteAt(x.buf[:], int64(i*slotSize)); err != nil {
		return fmt.Errorf("statecache: write index slot %d: %w", i, err)
	}
	return nil
}

// home is the first slot probed for h, before masking.
func (x *index) home(h keyHash) uint64 { return maphash.Bytes(x.seed, h[:]) }

// find returns the slot holding h, or ok false.
func (x *index) find(h keyHash) (i uint64, r ref, ok bool, err error) {
	if x.slots == 0 {
		return 0, ref{}, false, nil
	}
	mask := x.slots - 1
	for i = x.home(h) & mask; ; i = (i + 1) & mask {
		s, err := x.read(i)
		switch {
		case err != nil:
			return 0, ref{}, false, err
		case s.ref.n == 0:
			return 0, ref{}, false, nil
		case s.ref.n > 0 && s.h == h:
			return i, s.ref, true, nil
		}
	}
}

// remove deletes h if present.
func (x *index) remove(h keyHash) error {
	i, r, ok, err := x.find(h)
	if err != nil || !ok {
		return err
	}
	return x.removeAt(i, r)
}

// removeAt deletes the entry in slot i, which find returned with r.
func (x *index) removeAt(i uint64, r ref) error {
	if err := x.write(i, slot{ref: ref{n: deletedSlot}}); err != nil {
		return err
	}
	x.used--
	x.dead++
	x.live -= int64(r.n)
	return nil
}

// put records h at r; h must not be present.
func (x *index) put(h keyHash, r ref) error {
	if (x.used+x.dead+1)*maxLoadTimes > x.slots {
		if err := x.rebuild(); err != nil {
			return err
		}
	}
	if err := x.insert(h, r); err != nil {
		return err
	}
	x.used++
	x.live += int64(r.n)
	return nil
}

func (x *index) insert(h keyHash, r ref) error {
	mask := x.slots - 1
	for i := x.home(h) & mask; ; i = (i + 1) & mask {
		s, err := x.read(i)
		if err != nil {
			return err
		}
		if s.ref.n == 0 {
			return x.write(i, slot{h: h, ref: r})
		}
	}
}

// rebuild moves the live entries to a fresh table sized for twice their
// number (at least minSlots), dropping deleted slots.
func (x *index) rebuild() error {
	n := uint64(minSlots)
	for n < (x.used+1)*maxLoadTimes*2 {
		n *= 2
	}
	f, err := createUnlinked(x.cfg.Dir, x.cfg.Name+"-index")
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(n * slotSize)); err != nil {
		f.Close()
		return fmt.Errorf("statecache: size index: %w", err)
	}
	old, oldSlots := x.f, x.slots
	x.f, x.slots, x.dead = f, n, 0
	err = x.each(old, oldSlots, func(_ uint64, s slot) error { return x.insert(s.h, s.ref) })
	if old != nil {
		old.Close()
	}
	return err
}

// each calls fn for every live slot of the table in f.
func (x *index) each(f *os.File, slots uint64, fn func(i uint64, s slot) error) error {
	if f == nil {
		return nil
	}
	const chunk = 1024
	buf := make([]byte, chunk*slotSize)
	for base := uint64(0); base < slots; base += chunk {
		m := min(chunk, slots-base)
		if _, err := f.ReadAt(buf[:m*slotSize], int64(base*slotSize)); err != nil {
			return fmt.Errorf("statecache: scan index: %w", err)
		}
		for j := range m {
			b := buf[j*slotSize:]
			var s slot
			s.ref.n = int32(binary.LittleEndian.Uint32(b[24:28]))
			if s.ref.n <= 0 {
				continue
			}
			copy(s.h[:], b[:16])
			s.ref.off = int64(binary.LittleEndian.Uint64(b[16:24]))
			s.ref.sum = binary.LittleEndian.Uint32(b[28:32])
			if err := fn(base+j, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// relocate rewrites every live entry's offset through move, in place.
func (x *index) relocate(move func(s slot) (ref, error)) error {
	return x.each(x.f, x.slots, func(i uint64, s slot) error {
		r, err := move(s)
		if err != nil {
			return err
		}
		s.ref = r
		return x.write(i, s)
	})
}

func (x *index) close() error {
	if x.f == nil {
		return nil
	}
	err := x.f.Close()
	x.f = nil
	return err
}
