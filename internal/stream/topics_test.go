package stream

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestEnsureTopicsIsIdempotentAndSetsCleanupPolicy(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	specs := []TopicSpec{
		{Name: "aegis.events", Partitions: 6},
		{Name: "aegis.decider-state", Partitions: 6, Cleanup: CleanupCompact},
		{Name: "aegis.decided", Partitions: 6, Cleanup: CleanupDelete, Configs: map[string]string{"retention.ms": "3600000"}},
	}
	for i := range 2 {
		if err := EnsureTopics(ctx, e.Brokers(), specs); err != nil {
			t.Fatalf("EnsureTopics run %d: %v", i+1, err)
		}
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	details, err := adm.ListTopics(ctx, "aegis.events", "aegis.decider-state", "aegis.decided")
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := adm.DescribeTopicConfigs(ctx, "aegis.events", "aegis.decider-state", "aegis.decided")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		topic     string
		wantParts int
		wantCfg   map[string]string
	}{
		{"aegis.events", 6, map[string]string{"cleanup.policy": "delete"}},
		{"aegis.decider-state", 6, map[string]string{"cleanup.policy": "compact"}},
		{"aegis.decided", 6, map[string]string{"cleanup.policy": "delete", "retention.ms": "3600000"}},
	}
	for _, tc := range tests {
		t.Run(tc.topic, func(t *testing.T) {
			if got := len(details[tc.topic].Partitions); got != tc.wantParts {
				t.Errorf("partitions = %d, want %d", got, tc.wantParts)
			}
			rc, err := cfgs.On(tc.topic, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, c := range rc.Configs {
				if c.Value != nil {
					got[c.Key] = *c.Value
				}
			}
			for k, v := range tc.wantCfg {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestEnsureTopicsRejectsMismatchedExistingTopic(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{
		{Name: "t.parts", Partitions: 4},
		{Name: "t.policy", Partitions: 4, Cleanup: CleanupCompact},
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		spec TopicSpec
		want error
	}{
		{"partition count differs", TopicSpec{Name: "t.parts", Partitions: 8}, ErrTopicMismatch},
		{"cleanup policy differs", TopicSpec{Name: "t.policy", Partitions: 4, Cleanup: CleanupDelete}, ErrTopicMismatch},
		{"zero partitions", TopicSpec{Name: "t.zero"}, ErrConfig},
		{"unknown cleanup policy", TopicSpec{Name: "t.x", Partitions: 1, Cleanup: "compact,delete"}, ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{tc.spec}); !errors.Is(err, tc.want) {
				t.Fatalf("EnsureTopics = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDeleteTopicsWithPrefix(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	var specs []TopicSpec
	for _, name := range []string{"run-1.events", "run-1.sealed", "run-10.events", "run-2.events"} {
		specs = append(specs, TopicSpec{Name: name, Partitions: 2})
	}
	if err := EnsureTopics(ctx, e.Brokers(), specs); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"", "__", "__consumer"} {
		if _, err := DeleteTopicsWithPrefix(ctx, e.Brokers(), prefix); !errors.Is(err, ErrConfig) {
			t.Errorf("prefix %q: err = %v, want ErrConfig", prefix, err)
		}
	}
	deleted, err := DeleteTopicsWithPrefix(ctx, e.Brokers(), "run-1.")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"run-1.events", "run-1.sealed"}; !slices.Equal(deleted, want) {
		t.Errorf("deleted %v, want %v", deleted, want)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	listed, err := kadm.NewClient(cl).ListTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := listed.Names(), []string{"run-10.events", "run-2.events"}; !slices.Equal(got, want) {
		t.Errorf("topics left %v, want %v", got, want)
	}
	again, err := DeleteTopicsWithPrefix(ctx, e.Brokers(), "run-1.")
	if err != nil || len(again) != 0 {
		t.Errorf("second delete: %v, %v; want nothing deleted and no error", again, err)
	}
}

// TestEnsureTopicsRaisesMaxMessageBytes: an existing topic whose
// max.message.bytes is below its spec's (made by hand, or under a smaller
// event limit) is raised, not accepted as it is; a higher one is kept.
func TestEnsureTopicsRaisesMaxMessageBytes(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	spec := func(name, max string) TopicSpec {
		return TopicSpec{Name: name, Partitions: 1, Configs: map[string]string{"max.message.bytes": max}}
	}
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{spec("small", "4096"), spec("large", "4000000")}); err != nil {
		t.Fatal(err)
	}
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{spec("small", "1048576"), spec("large", "1048576")}); err != nil {
		t.Fatal(err)
	}
	adm, closeAdm, err := newAdmin(e.Brokers(), Security{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAdm()
	cfgs, err := adm.DescribeTopicConfigs(ctx, "small", "large")
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{"small": "1048576", "large": "4000000"} {
		rc, err := cfgs.On(topic, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, c := range rc.Configs {
			if c.Key == "max.message.bytes" && c.Value != nil {
				got = *c.Value
			}
		}
		if got != want {
			t.Errorf("%s: max.message.bytes %q, want %q", topic, got, want)
		}
	}
}
