package deps
import (
 _ "github.com/twmb/franz-go/pkg/kgo"
 _ "github.com/twmb/franz-go/pkg/kfake"
 _ "github.com/twmb/franz-go/pkg/kadm"
 _ "github.com/open-policy-agent/opa/v1/rego"
 _ "github.com/open-policy-agent/opa/v1/tester"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "go.yaml.in/yaml/v3"
 _ "github.com/gowebpki/jcs"
)
import (
 _ "github.com/ClickHouse/clickhouse-go/v2"
 _ "modernc.org/sqlite"
 _ "github.com/segmentio/kafka-go"
 _ "github.com/HdrHistogram/hdrhistogram-go"
)
