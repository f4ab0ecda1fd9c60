package stream

// Partition returns the partition that Kafka's default partitioner assigns
// to key among n partitions: murmur2(key) with the sign bit cleared, modulo
// n. It is the partitioner of the Java client, of franz-go's
// kgo.StickyKeyPartitioner and of kafka-go's Murmur2Balancer, so any
// producer that uses one of them puts a key on the same partition; other
// packages use Partition to check a record sits where its key says without
// importing a Kafka client.
//
// Clients spread records with a nil key over partitions instead of hashing
// them; Partition hashes a nil key like an empty one, so callers that route
// by key must not rely on it for keyless records. Partition panics if n < 1.
func Partition(key []byte, n int32) int32 {
	if n < 1 {
		panic("stream: Partition with n < 1")
	}
	return int32((murmur2(key) & 0x7fffffff) % uint32(n))
}

// murmur2 is the 32-bit MurmurHash2 variant Kafka uses (seed 0x9747b28c),
// reading four little-endian bytes at a time like the Java client.
func murmur2(b []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for len(b) >= 4 {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		b = b[4:]
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
