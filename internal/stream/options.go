package stream

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Option sets a program-level dependency (logger, metrics registerer, stage
// label, the cluster's security) on a Transactor, Producer, Consumer or
// Embedded broker, or on an admin call. Options are for what programs
// inject; what operators set lives in the Config structs (the security's
// in SecurityConfig, which programs load and inject).
type Option func(*options)

type options struct {
	logger     *slog.Logger
	registerer prometheus.Registerer
	stage      string
	security   Security
}

func buildOptions(defaultStage string, opts []Option) options {
	o := options{stage: defaultStage}
	for _, fn := range opts {
		fn(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// WithLogger sets the logger, overriding the default that discards
// everything. Client library messages are logged under the "kafka" group,
// its routine info messages at debug level; this package's own messages
// carry a "stage" attribute.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithRegisterer registers the component's metrics on reg, overriding the
// default of not registering them anywhere. This package never touches the
// global Prometheus registry. Collectors already registered on reg by an
// earlier component with the same stage label are reused, so a stage can be
// restarted in one process.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) { o.registerer = reg }
}

// WithSecurity sets how the component's clients reach a secured cluster
// (TLS, SASL), overriding the default of plaintext without authentication.
// Operators configure it with SecurityConfig; programs load that and pass
// the result here, to every component and admin call of the cluster.
func WithSecurity(s Security) Option {
	return func(o *options) { o.security = s }
}

// WithStage sets the value of the "stage" label on metrics and logs,
// overriding the default (the consumer group for a Transactor, "producer",
// "consumer" or "embedded" otherwise).
func WithStage(name string) Option {
	return func(o *options) { o.stage = name }
}

// kgoLogger adapts *slog.Logger to kgo.Logger.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel {
	ctx := context.Background()
	switch {
	case k.l.Enabled(ctx, slog.LevelDebug):
		return kgo.LogLevelDebug
	case k.l.Enabled(ctx, slog.LevelWarn):
		return kgo.LogLevelWarn
	case k.l.Enabled(ctx, slog.LevelError):
		return kgo.LogLevelError
	}
	return kgo.LogLevelNone
}

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	var lvl slog.Level
	switch level {
	case kgo.LogLevelError:
		lvl = slog.LevelError
	case kgo.LogLevelWarn:
		lvl = slog.LevelWarn
	default:
		// The client's info messages (joins, assignments, metadata
		// refreshes) are routine: they are debug output for operators.
		lvl = slog.LevelDebug
	}
	k.l.Log(context.Background(), lvl, msg, keyvals...)
}

// kfakeLogger adapts *slog.Logger to kfake.Logger.
type kfakeLogger struct{ l *slog.Logger }

func (k kfakeLogger) Logf(level kfake.LogLevel, msg string, args ...any) {
	var lvl slog.Level
	switch level {
	case kfake.LogLevelError:
		lvl = slog.LevelError
	case kfake.LogLevelWarn:
		lvl = slog.LevelWarn
	case kfake.LogLevelInfo:
		lvl = slog.LevelInfo
	default:
		lvl = slog.LevelDebug
	}
	ctx := context.Background()
	if k.l.Enabled(ctx, lvl) {
		k.l.Log(ctx, lvl, fmt.Sprintf(msg, args...))
	}
}

// Compressions are the accepted values of a Compression setting.
var Compressions = []string{"none", "snappy", "lz4", "zstd", "gzip"}

// compression returns the producer option for name; "" keeps franz-go's
// default (snappy).
func compression(name string) (kgo.Opt, error) {
	var c kgo.CompressionCodec
	switch name {
	case "":
		return nil, nil
	case "none":
		c = kgo.NoCompression()
	case "snappy":
		c = kgo.SnappyCompression()
	case "lz4":
		c = kgo.Lz4Compression()
	case "zstd":
		c = kgo.ZstdCompression()
	case "gzip":
		c = kgo.GzipCompression()
	default:
		return nil, fmt.Errorf("stream: compression %q: want one of %v: %w", name, Compressions, ErrConfig)
	}
	return kgo.ProducerBatchCompression(c), nil
}
