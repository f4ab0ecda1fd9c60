package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestProducerPartitionsByKeyAndConsumerReadsBack(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	const parts = 6
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: "pc", Partitions: parts}}); err != nil {
		t.Fatal(err)
	}
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers(), Linger: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// Half synchronously, half asynchronously with linger.
	var msgs []Message
	for i := range 100 {
		msgs = append(msgs, Message{Topic: "pc", Key: fmt.Appendf(nil, "k%d", i%13), Value: fmt.Appendf(nil, "v%d", i),
			Headers: []Header{{Key: "h", Value: []byte("x")}}})
	}
	if err := p.Produce(ctx, msgs[:50]...); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var asyncErrs []error
	for _, m := range msgs[50:] {
		wg.Add(1)
		p.ProduceAsync(ctx, m, func(r *Record, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				asyncErrs = append(asyncErrs, err)
			} else if want := Partition(r.Key, parts); r.Partition != want {
				asyncErrs = append(asyncErrs, fmt.Errorf("key %s acknowledged on partition %d, want %d", r.Key, r.Partition, want))
			}
		})
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(asyncErrs) > 0 {
		t.Fatal(errors.Join(asyncErrs...))
	}

	got := readAtLeast(t, e, "pc", 100, 10*time.Second, 100*time.Millisecond)
	if len(got) != 100 {
		t.Fatalf("read %d records, want 100", len(got))
	}
	for _, r := range got {
		if want := Partition(r.Key, parts); r.Partition != want {
			t.Errorf("key %s on partition %d, want %d", r.Key, r.Partition, want)
		}
		if len(r.Headers) != 1 || r.Headers[0].Key != "h" || string(r.Headers[0].Value) != "x" {
			t.Errorf("headers = %+v", r.Headers)
		}
	}
}

func TestConsumerStartPositions(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: "sp", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	produce := func(from, to int) {
		for i := from; i < to; i++ {
			if err := p.Produce(ctx, Message{Topic: "sp", Key: []byte("k"), Value: fmt.Appendf(nil, "%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	produce(0, 10)

	tests := []struct {
		name      string
		start     Start
		group     string
		wantFirst string
		wantN     int
	}{
		{name: "beginning", start: FromBeginning(), wantFirst: "0", wantN: 10},
		{name: "offsets", start: FromOffsets(map[string]map[int32]int64{"sp": {0: 7}}), wantFirst: "7", wantN: 3},
		{name: "time", start: FromTime(time.Now().Add(-time.Hour)), wantFirst: "0", wantN: 10},
		{name: "group", start: FromBeginning(), group: "sp-g", wantFirst: "0", wantN: 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{"sp"}, Start: tc.start, Group: tc.group})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			recs := pollN(t, c, tc.wantN)
			if string(recs[0].Value) != tc.wantFirst {
				t.Fatalf("first value %q, want %q", recs[0].Value, tc.wantFirst)
			}
		})
	}

	t.Run("end", func(t *testing.T) {
		c, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{"sp"}, Start: FromEnd()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The end is resolved once the partition is assigned, at a
		// moment the test cannot observe: it produces one record at a
		// time until the consumer delivers one. Every record produced
		// after the consumer started may show up, depending on when the
		// end was resolved; none of the ten produced before it may.
		next := 10
		deadline := time.Now().Add(10 * time.Second)
		var recs []*Record
		for len(recs) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("FromEnd delivered nothing of records 10..%d", next-1)
			}
			produce(next, next+1)
			next++
			pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			recs, _ = c.Poll(pctx)
			cancel()
		}
		first, err := strconv.Atoi(string(recs[0].Value))
		if err != nil || first < 10 {
			t.Fatalf("FromEnd delivered %q, produced before the consumer started", recs[0].Value)
		}
		// The records produced from then on follow without a gap.
		produce(next, next+2)
		next += 2
		recs = append(recs, pollN(t, c, next-first-len(recs))...)
		if len(recs) != next-first {
			t.Fatalf("read %d records from %d, want %d", len(recs), first, next-first)
		}
		for i, r := range recs {
			if want := strconv.Itoa(first + i); string(r.Value) != want {
				t.Fatalf("record #%d = %q, want %q", i, r.Value, want)
			}
		}
	})

	t.Run("group resumes after commit", func(t *testing.T) {
		c, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{"sp"}, Group: "sp-resume"})
		if err != nil {
			t.Fatal(err)
		}
		recs := pollN(t, c, 12)
		if err := c.Commit(ctx, recs[:5]...); err != nil {
			t.Fatal(err)
		}
		c.Close()
		c2, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{"sp"}, Group: "sp-resume"})
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		recs = pollN(t, c2, 7)
		if string(recs[0].Value) != "5" {
			t.Fatalf("resumed at %q, want 5", recs[0].Value)
		}
	})
}

func pollN(tb testing.TB, c *Consumer, n int) []*Record {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*Record
	for len(out) < n {
		recs, err := c.Poll(ctx)
		if err != nil {
			tb.Fatalf("poll after %d of %d: %v", len(out), n, err)
		}
		out = append(out, recs...)
	}
	return out
}

func TestProducerAndConsumerAfterClose(t *testing.T) {
	e := startBroker(t)
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if err := p.Produce(context.Background(), Message{Topic: "x", Value: []byte("v")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Produce after Close = %v, want ErrClosed", err)
	}
	c, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := c.Poll(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Poll after Close = %v, want ErrClosed", err)
	}
}
