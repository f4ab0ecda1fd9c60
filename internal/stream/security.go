package stream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// SASL mechanisms a client can authenticate with.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// SASLMechanisms lists the SASL mechanisms, for flag help and validation.
var SASLMechanisms = []string{SASLPlain, SASLScramSHA256, SASLScramSHA512}

// Security is how every client of this package reaches a secured cluster:
// TLS on the connections and SASL to authenticate them. The zero value is
// plaintext without authentication (the embedded broker, a cluster on a
// private network). Programs build it with SecurityConfig.Load and pass it
// with WithSecurity.
type Security struct {
	// TLS, when set, wraps every broker connection. An empty ServerName
	// is set per connection to the host dialed.
	TLS *tls.Config
	// SASL authenticates every connection; a zero Mechanism is none.
	SASL SASL
}

// SASL is a SASL mechanism (one of SASLMechanisms) and its credentials.
type SASL struct {
	Mechanism string
	Username  string
	Password  string
}

// String names the security without its secrets, for logs.
func (s Security) String() string {
	out := "plaintext"
	if s.TLS != nil {
		out = "tls"
	}
	if s.SASL.Mechanism != "" {
		out += " sasl " + s.SASL.Mechanism + " user " + s.SASL.Username
	}
	return out
}

// seed returns the client options that reach brokers: the seed addresses,
// TLS and SASL.
func (s Security) seed(brokers []string) []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...)}
	if s.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(s.TLS.Clone()))
	}
	if m := s.SASL.mechanism(); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts
}

func (a SASL) mechanism() sasl.Mechanism {
	switch a.Mechanism {
	case SASLPlain:
		return plain.Auth{User: a.Username, Pass: a.Password}.AsMechanism()
	case SASLScramSHA256:
		return scram.Auth{User: a.Username, Pass: a.Password}.AsSha256Mechanism()
	case SASLScramSHA512:
		return scram.Auth{User: a.Username, Pass: a.Password}.AsSha512Mechanism()
	}
	return nil
}

// SecurityConfig is what an operator sets to reach a secured cluster: the
// same flags (RegisterFlags) and YAML keys in every program. Secrets are
// read from files, never taken on the command line, so they stay out of
// process listings, shell history and logged configurations.
type SecurityConfig struct {
	// TLS turns TLS on, verifying brokers against the system's roots
	// (or TLSCAFile). Any TLS file below turns it on too.
	TLS bool `yaml:"kafka_tls"`
	// TLSCAFile holds the PEM certificates brokers are verified against.
	TLSCAFile string `yaml:"kafka_tls_ca_file"`
	// TLSCertFile and TLSKeyFile are a PEM client certificate and its key,
	// for brokers that authenticate clients by certificate (mTLS).
	TLSCertFile string `yaml:"kafka_tls_cert_file"`
	TLSKeyFile  string `yaml:"kafka_tls_key_file"`
	// TLSServerName overrides the name brokers' certificates are checked
	// for (default: the host of each broker address).
	TLSServerName string `yaml:"kafka_tls_server_name"`
	// SASLMechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty:
	// no SASL).
	SASLMechanism string `yaml:"kafka_sasl_mechanism"`
	// SASLUsername is the SASL user.
	SASLUsername string `yaml:"kafka_sasl_username"`
	// SASLPasswordFile holds the SASL password (one trailing newline is
	// ignored).
	SASLPasswordFile string `yaml:"kafka_sasl_password_file"`
}

// RegisterFlags declares the --kafka-tls* and --kafka-sasl-* flags on fs,
// with c's values as defaults.
func (c *SecurityConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.BoolVar(&c.TLS, "kafka-tls", c.TLS, "connect to the Kafka brokers over TLS (implied by the other --kafka-tls-* flags)")
	fs.StringVar(&c.TLSCAFile, "kafka-tls-ca-file", c.TLSCAFile, "PEM CA certificates to verify the brokers with (default: the system's)")
	fs.StringVar(&c.TLSCertFile, "kafka-tls-cert-file", c.TLSCertFile, "PEM client certificate for brokers that authenticate clients by certificate (with --kafka-tls-key-file)")
	fs.StringVar(&c.TLSKeyFile, "kafka-tls-key-file", c.TLSKeyFile, "PEM key of --kafka-tls-cert-file")
	fs.StringVar(&c.TLSServerName, "kafka-tls-server-name", c.TLSServerName, "name the brokers' certificates must be valid for (default: each broker's host)")
	fs.StringVar(&c.SASLMechanism, "kafka-sasl-mechanism", c.SASLMechanism, "authenticate to the brokers with SASL: "+strings.Join(SASLMechanisms, ", "))
	fs.StringVar(&c.SASLUsername, "kafka-sasl-username", c.SASLUsername, "SASL user name")
	fs.StringVar(&c.SASLPasswordFile, "kafka-sasl-password-file", c.SASLPasswordFile, "file holding the SASL password")
}

// Enabled reports whether c asks for TLS or SASL.
func (c SecurityConfig) Enabled() bool {
	return c.tls() || c.SASLMechanism != "" || c.SASLUsername != "" || c.SASLPasswordFile != ""
}

func (c SecurityConfig) tls() bool {
	return c.TLS || c.TLSCAFile != "" || c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSServerName != ""
}

// Validate checks c without reading its files.
func (c SecurityConfig) Validate() error {
	var errs []error
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("kafka-tls-cert-file and kafka-tls-key-file go together"))
	}
	switch {
	case c.SASLMechanism == "" && (c.SASLUsername != "" || c.SASLPasswordFile != ""):
		errs = append(errs, errors.New("kafka-sasl-username and kafka-sasl-password-file need kafka-sasl-mechanism"))
	case c.SASLMechanism != "" && !slices.Contains(SASLMechanisms, c.SASLMechanism):
		errs = append(errs, fmt.Errorf("kafka-sasl-mechanism %q: want one of %s", c.SASLMechanism, strings.Join(SASLMechanisms, ", ")))
	case c.SASLMechanism != "" && (c.SASLUsername == "" || c.SASLPasswordFile == ""):
		errs = append(errs, errors.New("kafka-sasl-mechanism needs kafka-sasl-username and kafka-sasl-password-file"))
	}
	return errors.Join(errs...)
}

// Load validates c and reads its files into a Security.
func (c SecurityConfig) Load() (Security, error) {
	var s Security
	if err := c.Validate(); err != nil {
		return s, fmt.Errorf("stream: %w: %w", ErrConfig, err)
	}
	if c.tls() {
		t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
		if c.TLSCAFile != "" {
			pem, err := os.ReadFile(c.TLSCAFile)
			if err != nil {
				return s, fmt.Errorf("stream: kafka-tls-ca-file: %w: %w", ErrConfig, err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return s, fmt.Errorf("stream: kafka-tls-ca-file %s: no PEM certificate in it: %w", c.TLSCAFile, ErrConfig)
			}
		}
		if c.TLSCertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
			if err != nil {
				return s, fmt.Errorf("stream: kafka-tls-cert-file: %w: %w", ErrConfig, err)
			}
			t.Certificates = []tls.Certificate{cert}
		}
		s.TLS = t
	}
	if c.SASLMechanism != "" {
		b, err := os.ReadFile(c.SASLPasswordFile)
		if err != nil {
			return s, fmt.Errorf("stream: kafka-sasl-password-file: %w: %w", ErrConfig, err)
		}
		pass := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if pass == "" {
			return s, fmt.Errorf("stream: kafka-sasl-password-file %s is empty: %w", c.SASLPasswordFile, ErrConfig)
		}
		s.SASL = SASL{Mechanism: c.SASLMechanism, Username: c.SASLUsername, Password: pass}
	}
	return s, nil
}
