package stream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Cleanup is a topic's cleanup.policy.
type Cleanup string

// The cleanup policies EnsureTopics creates.
const (
	// CleanupDelete deletes old segments by retention: event and output
	// topics.
	CleanupDelete Cleanup = "delete"
	// CleanupCompact keeps the latest record per key: state topics.
	CleanupCompact Cleanup = "compact"
)

// TopicSpec describes a topic EnsureTopics creates or checks.
type TopicSpec struct {
	Name       string
	Partitions int32
	// Cleanup defaults to CleanupDelete.
	Cleanup Cleanup
	// ReplicationFactor defaults to the broker's default (-1).
	ReplicationFactor int16
	// Configs are extra topic configs applied at creation; of an
	// existing topic, only a lower max.message.bytes is raised to this.
	Configs map[string]string
}

func (s TopicSpec) cleanup() Cleanup {
	if s.Cleanup == "" {
		return CleanupDelete
	}
	return s.Cleanup
}

// EnsureTopics creates the topics in specs that do not exist and checks the
// ones that do. It is idempotent and safe to run from several processes at
// once (a concurrent creation counts as existing). An existing topic whose
// partition count or cleanup.policy differs from its spec is an error
// wrapping ErrTopicMismatch: EnsureTopics does not change either, because
// that silently breaks co-partitioning or state. The one change it makes
// to an existing topic is raising max.message.bytes to the spec's.
func EnsureTopics(ctx context.Context, brokers []string, specs []TopicSpec, opts ...Option) error {
	for _, s := range specs {
		if s.Name == "" || s.Partitions < 1 {
			return fmt.Errorf("stream: topic spec %q with %d partitions: %w", s.Name, s.Partitions, ErrConfig)
		}
		if c := s.cleanup(); c != CleanupDelete && c != CleanupCompact {
			return fmt.Errorf("stream: topic %s: cleanup policy %q: %w", s.Name, c, ErrConfig)
		}
	}
	adm, closeAdm, err := newAdmin(brokers, buildOptions("admin", opts).security)
	if err != nil {
		return err
	}
	defer closeAdm()

	for _, s := range specs {
		rf := s.ReplicationFactor
		if rf == 0 {
			rf = -1
		}
		configs := map[string]*string{}
		for k, v := range s.Configs {
			configs[k] = &v
		}
		policy := string(s.cleanup())
		configs["cleanup.policy"] = &policy
		resp, err := adm.CreateTopic(ctx, s.Partitions, rf, configs, s.Name)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("stream: create topic %s: %w: %w", s.Name, ErrBroker, err)
		}
	}
	// A broker acknowledges CreateTopics before its metadata cache (and
	// that of other brokers) shows the new topics: a KRaft broker applies
	// the controller's records asynchronously. Until they propagate the
	// check sees them missing, so it is retried for a bounded time.
	deadline := time.Now().Add(topicPropagation)
	for {
		err := checkTopics(ctx, adm, specs)
		if err == nil || !errors.Is(err, ErrTopicMissing) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// topicPropagation bounds how long EnsureTopics waits for topics it created
// to appear in metadata.
const topicPropagation = 30 * time.Second

// checkTopics verifies that every spec'd topic exists with its partition
// count and cleanup policy.
func checkTopics(ctx context.Context, adm *kadm.Client, specs []TopicSpec) error {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	counts, err := partitionCounts(ctx, adm, names)
	if err != nil {
		return err
	}
	cfgs, err := adm.DescribeTopicConfigs(ctx, names...)
	if err != nil {
		return fmt.Errorf("stream: describe topic configs: %w: %w", ErrBroker, err)
	}
	for _, s := range specs {
		if got := counts[s.Name]; got != s.Partitions {
			return fmt.Errorf("stream: topic %s has %d partitions, want %d: %w", s.Name, got, s.Partitions, ErrTopicMismatch)
		}
		rc, err := cfgs.On(s.Name, nil)
		if err != nil {
			return fmt.Errorf("stream: describe topic %s: %w: %w", s.Name, ErrBroker, err)
		}
		if rc.Err != nil {
			return fmt.Errorf("stream: describe topic %s: %w: %w", s.Name, ErrBroker, rc.Err)
		}
		got := string(CleanupDelete)
		for _, c := range rc.Configs {
			if c.Key == "cleanup.policy" && c.Value != nil {
				got = *c.Value
			}
		}
		if got != string(s.cleanup()) {
			return fmt.Errorf("stream: topic %s has cleanup.policy=%s, want %s: %w", s.Name, got, s.cleanup(), ErrTopicMismatch)
		}
		if err := raiseMaxMessageBytes(ctx, adm, s, rc.Configs); err != nil {
			return err
		}
	}
	return nil
}

// raiseMaxMessageBytes sets an existing topic's max.message.bytes to its
// spec's when it is lower (a topic made by hand, by an older version or
// under a smaller --max-event-bytes): a record over it would fail to
// produce on every retry and stop the stage. A higher limit is kept; a
// larger record limit breaks neither co-partitioning nor state.
func raiseMaxMessageBytes(ctx context.Context, adm *kadm.Client, s TopicSpec, configs []kadm.Config) error {
	want, ok := s.Configs["max.message.bytes"]
	if !ok {
		return nil
	}
	w, err := strconv.ParseInt(want, 10, 64)
	if err != nil {
		return fmt.Errorf("stream: topic %s: max.message.bytes %q: %w", s.Name, want, ErrConfig)
	}
	for _, c := range configs {
		if c.Key != "max.message.bytes" || c.Value == nil {
			continue
		}
		if got, err := strconv.ParseInt(*c.Value, 10, 64); err == nil && got >= w {
			return nil
		}
	}
	resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: &want}}, s.Name)
	if err == nil {
		_, err = resp.On(s.Name, nil)
		if err == nil {
			for _, r := range resp {
				if r.Err != nil {
					err = r.Err
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("stream: raise max.message.bytes of topic %s to %s: %w: %w", s.Name, want, ErrBroker, err)
	}
	return nil
}

// partitionCounts returns the partition count of every named topic, or an
// error wrapping ErrTopicMissing naming the topics that do not exist.
func partitionCounts(ctx context.Context, adm *kadm.Client, topics []string) (map[string]int32, error) {
	details, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("stream: list topics: %w: %w", ErrBroker, err)
	}
	counts := make(map[string]int32, len(topics))
	var missing []string
	for _, t := range topics {
		d, ok := details[t]
		if !ok || d.Err != nil || len(d.Partitions) == 0 {
			missing = append(missing, t)
			continue
		}
		counts[t] = int32(len(d.Partitions))
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("stream: topics %s: %w", strings.Join(missing, ", "), ErrTopicMissing)
	}
	return counts, nil
}

// checkCoPartitioned returns the common partition count of topics, or an
// error wrapping ErrCoPartition that names every topic with its count. If
// want > 0 the common count must also equal want.
func checkCoPartitioned(ctx context.Context, adm *kadm.Client, topics []string, want int32) (int32, error) {
	counts, err := partitionCounts(ctx, adm, topics)
	if err != nil {
		return 0, err
	}
	n := counts[topics[0]]
	same := true
	for _, t := range topics {
		if counts[t] != n {
			same = false
		}
	}
	if same && (want <= 0 || want == n) {
		return n, nil
	}
	parts := make([]string, len(topics))
	for i, t := range topics {
		parts[i] = fmt.Sprintf("%s=%d", t, counts[t])
	}
	msg := "partition counts differ"
	if same {
		msg = fmt.Sprintf("configured for %d partitions", want)
	}
	return 0, fmt.Errorf("stream: co-partition check (%s): %s: %w", strings.Join(parts, ", "), msg, ErrCoPartition)
}

// newAdmin returns an admin client on a fresh kgo client and its closer.
func newAdmin(brokers []string, sec Security, extra ...kgo.Opt) (*kadm.Client, func(), error) {
	if len(brokers) == 0 {
		return nil, nil, fmt.Errorf("stream: no brokers: %w", ErrConfig)
	}
	cl, err := kgo.NewClient(append(sec.seed(brokers), extra...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("stream: admin client: %w: %w", ErrConfig, err)
	}
	return kadm.NewClient(cl), cl.Close, nil
}

// EndOffsets returns, per partition of topic, the offset a read_committed
// reader reaches when it has read everything committed so far (the last
// stable offset). Exports use it to know when they are done.
func EndOffsets(ctx context.Context, brokers []string, topic string, opts ...Option) (map[int32]int64, error) {
	return listOffsets(ctx, brokers, topic, "end", (*kadm.Client).ListCommittedOffsets, opts)
}

// StartOffsets returns each partition's log start offset of topic: the
// first offset it still holds. Below it, retention or a records deletion
// removed everything; a partition whose start is its end offset holds no
// record at all.
func StartOffsets(ctx context.Context, brokers []string, topic string, opts ...Option) (map[int32]int64, error) {
	return listOffsets(ctx, brokers, topic, "start", (*kadm.Client).ListStartOffsets, opts)
}

// listOffsets returns the offsets list gives per partition of topic; a
// topic without partitions is missing.
func listOffsets(ctx context.Context, brokers []string, topic, which string,
	list func(*kadm.Client, context.Context, ...string) (kadm.ListedOffsets, error), opts []Option) (map[int32]int64, error) {
	adm, closeAdm, err := newAdmin(brokers, buildOptions("admin", opts).security)
	if err != nil {
		return nil, err
	}
	defer closeAdm()
	listed, err := list(adm, ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("stream: %s offsets of %s: %w: %w", which, topic, ErrBroker, err)
	}
	if err := listed.Error(); err != nil {
		return nil, fmt.Errorf("stream: %s offsets of %s: %w: %w", which, topic, ErrTopicMissing, err)
	}
	out := map[int32]int64{}
	listed.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	if len(out) == 0 {
		return nil, fmt.Errorf("stream: %s offsets of %s: no partitions: %w", which, topic, ErrTopicMissing)
	}
	return out, nil
}

// MaxMessageBytes returns the max.message.bytes of topic: the largest
// record batch the broker takes for it. A producer that gathers records
// into larger batches has them refused as a whole (MESSAGE_TOO_LARGE),
// though each record fits.
func MaxMessageBytes(ctx context.Context, brokers []string, topic string, opts ...Option) (int, error) {
	adm, closeAdm, err := newAdmin(brokers, buildOptions("admin", opts).security)
	if err != nil {
		return 0, err
	}
	defer closeAdm()
	caps, err := topicBatchBytes(ctx, adm, []string{topic}, math.MaxInt32)
	if err != nil {
		return 0, err
	}
	return int(caps[topic]), nil
}

// DeleteTopicsWithPrefix deletes every topic whose name starts with prefix
// and returns the names it deleted, sorted. It is for the throwaway topics
// of tests and load tests, which give each run a prefix of its own. An empty
// prefix, or one of Kafka's internal topics ("__"), is refused.
func DeleteTopicsWithPrefix(ctx context.Context, brokers []string, prefix string, opts ...Option) ([]string, error) {
	if prefix == "" || strings.HasPrefix(prefix, "__") {
		return nil, fmt.Errorf("stream: delete topics: prefix %q: %w", prefix, ErrConfig)
	}
	adm, closeAdm, err := newAdmin(brokers, buildOptions("admin", opts).security)
	if err != nil {
		return nil, err
	}
	defer closeAdm()
	listed, err := adm.ListTopics(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream: delete topics %s*: list: %w: %w", prefix, ErrBroker, err)
	}
	var names []string
	for _, name := range listed.Names() {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	resps, err := adm.DeleteTopics(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("stream: delete topics %s*: %w: %w", prefix, ErrBroker, err)
	}
	var errs []error
	for _, r := range resps.Sorted() {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Topic, r.Err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("stream: delete topics %s*: %w: %w", prefix, ErrBroker, errors.Join(errs...))
	}
	sort.Strings(names)
	return names, nil
}
