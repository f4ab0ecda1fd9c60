package stream

import (
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Header is a Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Record is a record read from Kafka. Its byte slices are owned by the
// receiver: nothing in this package reads or reuses them after handing the
// Record out.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []Header
	Timestamp time.Time
}

// Output is a record a Processor emits inside a transaction.
//
// Partition is explicit: a co-partitioned output goes to the partition
// number of the input it was derived from, which is how one instance stays
// the only writer of a session. A negative Partition means "the partition
// of the batch being processed". The partition must exist in Topic, and
// Topic must be the stage's state topic or one of its output topics.
type Output struct {
	Topic     string
	Partition int32
	Key       []byte
	Value     []byte
	Headers   []Header
}

// Message is a record for a Producer. Its partition is chosen from Key by
// the murmur2 partitioner (see Partition); a nil Key spreads messages over
// partitions.
type Message struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers []Header
	// Pin, when true, writes the message to Partition instead of the
	// partition its key hashes to. It exists for tools and tests that
	// must misplace a record on purpose: the pipeline rejects records
	// that are not on their key's partition.
	Pin       bool
	Partition int32
}

func fromKgo(r *kgo.Record) *Record {
	out := &Record{
		Topic:     r.Topic,
		Partition: r.Partition,
		Offset:    r.Offset,
		Key:       r.Key,
		Value:     r.Value,
		Timestamp: r.Timestamp,
	}
	if len(r.Headers) > 0 {
		out.Headers = make([]Header, len(r.Headers))
		for i, h := range r.Headers {
			out.Headers[i] = Header{Key: h.Key, Value: h.Value}
		}
	}
	return out
}

func toKgoHeaders(hs []Header) []kgo.RecordHeader {
	if len(hs) == 0 {
		return nil
	}
	out := make([]kgo.RecordHeader, len(hs))
	for i, h := range hs {
		out[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
	}
	return out
}
