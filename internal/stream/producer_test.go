package stream

import (
	"context"
	"errors"
	"fmt"
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
		// The end is resolved once the partition is assigned: poll
		// briefly before producing.
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if recs, _ := c.Poll(pctx); len(recs) != 0 {
			t.Fatalf("FromEnd returned %d old records", len(recs))
		}
		cancel()
		produce(10, 12)
		recs := pollN(t, c, 2)
		if string(recs[0].Value) != "10" {
			t.Fatalf("first value %q, want 10", recs[0].Value)
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
