// Package conformance runs the Aegis conformance packs: YAML files of cases,
// each tied to a requirement of docs/requirements.md, that check a
// deployment over its public interfaces: the HTTP API and, for events
// published straight to Kafka, the events and rejected topics (kafka.go).
// A case is either a stateless decision request (POST /v1/policy/decide)
// with the expected outcome and reason, or a scenario: ordered steps that
// publish events (over HTTP or Kafka) and proposals, settle approvals,
// read sessions back from the audit store, verify their chains, replay
// them offline, and (when the runner owns the store) tamper with the
// stored rows and expect verification to fail. Reads of the audit store
// are decided only behind barriers, which show that the target processed
// and stored everything the case published before (barrier.go).
// docs/conformance.md is the reference of the pack format and of the
// reports.
package conformance

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"aegis.dev/aegis/internal/yamldoc"
)

// ErrPack reports a pack that cannot be loaded: bad YAML, an unknown field,
// a case without an id or requirement, a duplicate id, or conflicting
// manifests.
var ErrPack = errors.New("conformance: invalid pack")

// Pack is one YAML file of cases.
type Pack struct {
	// Name identifies the pack in reports (default: the file name).
	Name string `yaml:"name" json:"name"`
	// Description says what the pack covers.
	Description string `yaml:"description" json:"description"`
	// Definitions holds YAML anchors the cases refer to (manifests,
	// snapshots); the runner does not read it.
	Definitions any `yaml:"definitions,omitempty" json:"-"`
	// Cases run in any order and concurrently: each case uses its own
	// sessions.
	Cases []*Case `yaml:"cases" json:"cases"`
	// File is the file the pack was loaded from.
	File string `yaml:"-" json:"-"`
}

// Case is one check. Exactly one of Decide and Scenario is set.
type Case struct {
	ID          string    `yaml:"id" json:"id"`
	Requirement string    `yaml:"requirement" json:"requirement"`
	Description string    `yaml:"description" json:"description"`
	Decide      *Decide   `yaml:"decide,omitempty" json:"decide,omitempty"`
	Scenario    *Scenario `yaml:"scenario,omitempty" json:"scenario,omitempty"`
	// Requires names what the target must offer for the case to run
	// (Options.Provides, Keys, Brokers, ApprovalSecret): RequireAuth,
	// RequireShortApprovalTTL, RequireConformancePolicy, RequireKafka,
	// RequireApprovalSecret. A run without it reports the case as
	// skipped.
	Requires []string `yaml:"requires,omitempty" json:"requires,omitempty"`
}

// Decide is a stateless decision request and its expected answer.
type Decide struct {
	// Request is the body of POST /v1/policy/decide: {event, snapshot,
	// manifest}.
	Request map[string]any `yaml:"request" json:"request"`
	// Expect is checked against the response; Status defaults to 200.
	Expect Expect `yaml:"expect" json:"expect"`
}

// Scenario is an ordered list of steps against the pipeline.
type Scenario struct {
	// Manifests are the manifests the scenario runs under, by tenant and
	// file name (<tenant>/<file>.json in the registry). The embedded run
	// installs them; a live target must have them installed
	// (conformance/manifests).
	Manifests map[string]map[string]map[string]any `yaml:"manifests,omitempty" json:"manifests,omitempty"`
	Steps     []*Step                              `yaml:"steps" json:"steps"`
}

// Step is one action of a scenario and its expectation. Exactly one action
// field is set. Strings in a step may use templates: {{sid}} (a session id
// unique to the case and the run), {{run}} (the run id) and {{NAME.PATH}}
// (a value of the JSON response of the earlier step NAME, e.g.
// {{p1.approval.token}}).
type Step struct {
	// Name names the step in reports and templates.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// Tenant is the tenant the step acts as (default "default"): its
	// credential, and ?tenant_id= on session and approval paths.
	Tenant string `yaml:"tenant,omitempty" json:"tenant,omitempty"`
	// NoAuth sends the step's request without credentials.
	NoAuth bool `yaml:"no_auth,omitempty" json:"no_auth,omitempty"`
	// Session is the session of events, propose, snapshot, sealed, verify.
	Session string `yaml:"session,omitempty" json:"session,omitempty"`

	// Events publishes envelopes: over POST /v1/events (one JSON array),
	// or, with Via "kafka", straight to the target's events topic.
	Events []*Event `yaml:"events,omitempty" json:"events,omitempty"`
	// Via is how an events step publishes: "http" (the default) or
	// "kafka": to the events topic with the project's producer, keyed
	// "<tenant>/<session>" and partitioned by murmur2 like the gateway's
	// records, each acknowledged by the brokers before the next step. A
	// case with such a step requires RequireKafka.
	Via string `yaml:"via,omitempty" json:"via,omitempty"`
	// Sign sets the grant of every APPROVAL_DECIDED of a Kafka events step
	// with the deployment's approval secret (Options.ApprovalSecret,
	// internal/grant), replacing any grant the event carries, as
	// `aegisctl publish --approval-secret-file` does. A case with such a
	// step requires RequireApprovalSecret.
	Sign bool `yaml:"sign,omitempty" json:"sign,omitempty"`
	// Key replaces the record key of a Kafka events step
	// ("<tenant>/<session>" of the step); "" is an empty key. NoKey
	// sends the records without a key (a null key). Partition pins the
	// records to a partition instead of the murmur2 partition of their
	// key. These write what a misconfigured client would, for the
	// pipeline's KEY_MISMATCH and WRONG_PARTITION.
	Key       *string    `yaml:"key,omitempty" json:"key,omitempty"`
	NoKey     bool       `yaml:"no_key,omitempty" json:"no_key,omitempty"`
	Partition *Partition `yaml:"partition,omitempty" json:"partition,omitempty"`
	// Propose publishes a proposal and waits for its decision (POST
	// /v1/sessions/{session}/proposals).
	Propose *Event `yaml:"propose,omitempty" json:"propose,omitempty"`
	// Approve settles an approval (POST /v1/approvals/{token}).
	Approve *Approve `yaml:"approve,omitempty" json:"approve,omitempty"`
	// Snapshot reads GET /v1/sessions/{session}, Sealed its events, Verify
	// its chain verification; these poll until Expect holds or the poll
	// timeout passes (the audit store is written asynchronously), then
	// pass the session's barrier and read once more: Expect must hold on
	// that read (docs/conformance.md#barriers).
	Snapshot bool `yaml:"snapshot,omitempty" json:"snapshot,omitempty"`
	Sealed   bool `yaml:"sealed,omitempty" json:"sealed,omitempty"`
	Verify   bool `yaml:"verify,omitempty" json:"verify,omitempty"`
	// HTTP is any request, for bad input and authorization checks, sent
	// once; a GET of a /v1/sessions/ path first passes the barrier of
	// every session the case wrote (docs/conformance.md#barriers).
	HTTP *HTTP `yaml:"http,omitempty" json:"http,omitempty"`
	// Tamper runs SQL statements on the audit store. Only a runner that
	// owns the store (the embedded run) can; elsewhere the case is
	// skipped.
	Tamper []string `yaml:"tamper,omitempty" json:"tamper,omitempty"`
	// Replay exports the sessions' sealed records and re-decides them
	// twice with `aegisctl decide --events`; both runs must be identical
	// and equal to the recorded decisions.
	Replay []string `yaml:"replay,omitempty" json:"replay,omitempty"`

	Expect Expect `yaml:"expect,omitempty" json:"expect,omitempty"`
}

// Event is an envelope in short form. Session and tenant come from the
// step; TS defaults to 1767225600000 + 1000 × Seq.
//
// On a Kafka events step, Raw (templates expanded) or RawBase64 (the
// bytes as they are) is instead the exact value of the record, for input
// no envelope can express: it excludes the short-form fields. PadTo
// appends spaces (JSON whitespace) to the value, short form or raw, until
// it is that many bytes long.
type Event struct {
	Seq       uint64         `yaml:"seq,omitempty" json:"seq,omitempty"`
	TS        int64          `yaml:"ts,omitempty" json:"ts,omitempty"`
	Type      string         `yaml:"type,omitempty" json:"type,omitempty"`
	Manifest  string         `yaml:"manifest,omitempty" json:"manifest,omitempty"`
	Payload   map[string]any `yaml:"payload,omitempty" json:"payload,omitempty"`
	Raw       string         `yaml:"raw,omitempty" json:"raw,omitempty"`
	RawBase64 string         `yaml:"raw_base64,omitempty" json:"raw_base64,omitempty"`
	PadTo     int            `yaml:"pad_to,omitempty" json:"pad_to,omitempty"`
}

// raw reports whether e is a raw record (Raw or RawBase64).
func (e *Event) raw() bool { return e.Raw != "" || e.RawBase64 != "" }

// shortForm reports whether e sets any field of the short form.
func (e *Event) shortForm() bool {
	return e.Seq != 0 || e.TS != 0 || e.Type != "" || e.Manifest != "" || e.Payload != nil
}

// Partition is where a Kafka events step writes its records: partition N
// of the events topic, or, with Wrong ("partition: wrong" in a pack), the
// partition after the murmur2 partition of the record key (modulo the
// topic's partition count), which is never the key's own when the topic
// has two or more partitions. A run whose events topic has one partition
// skips the cases with a wrong-partition step.
type Partition struct {
	N     int32
	Wrong bool
}

// PartitionWrong is the pack spelling of Partition.Wrong.
const PartitionWrong = "wrong"

// UnmarshalYAML reads a partition number or "wrong".
func (p *Partition) UnmarshalYAML(n *yamldoc.Node) error {
	if n.Kind == yamldoc.ScalarNode && n.Tag == "!!str" && n.Value == PartitionWrong {
		*p = Partition{Wrong: true}
		return nil
	}
	var i int32
	if err := n.Decode(&i); err != nil || i < 0 {
		return fmt.Errorf("line %d: partition %q: a partition number (0 or more) or %q", n.Line, n.Value, PartitionWrong)
	}
	*p = Partition{N: i}
	return nil
}

// MarshalJSON writes the pack spelling.
func (p Partition) MarshalJSON() ([]byte, error) {
	if p.Wrong {
		return json.Marshal(PartitionWrong)
	}
	return json.Marshal(p.N)
}

// Approve is the body of POST /v1/approvals/{token}.
type Approve struct {
	Token    string         `yaml:"token" json:"token"`
	Decision string         `yaml:"decision" json:"decision"`
	Reason   string         `yaml:"reason,omitempty" json:"reason,omitempty"`
	ToolName string         `yaml:"tool_name,omitempty" json:"tool_name,omitempty"`
	Args     map[string]any `yaml:"args,omitempty" json:"args,omitempty"`
}

// HTTP is a raw request. Body is sent as JSON unless Raw is set.
type HTTP struct {
	Method      string `yaml:"method" json:"method"`
	Path        string `yaml:"path" json:"path"`
	Body        any    `yaml:"body,omitempty" json:"body,omitempty"`
	Raw         string `yaml:"raw,omitempty" json:"raw,omitempty"`
	ContentType string `yaml:"content_type,omitempty" json:"content_type,omitempty"`
}

// Expect is what a response must show. Zero fields are not checked.
type Expect struct {
	// Status is the HTTP status (default 200 for decide, propose,
	// snapshot, sealed, verify; 202 for events; 200 for approve).
	Status int `yaml:"status,omitempty" json:"status,omitempty"`
	// Outcome and Reason are the decision's fields.
	Outcome string `yaml:"outcome,omitempty" json:"outcome,omitempty"`
	Reason  string `yaml:"reason,omitempty" json:"reason,omitempty"`
	// Code is the error code of an error response.
	Code string `yaml:"code,omitempty" json:"code,omitempty"`
	// Fields maps dotted paths of the JSON response (object keys and list
	// indexes: "snapshot.loop.detected", "failures.0.reason") to the
	// values they must equal. On a Kafka events step with Rejected, the
	// "response" is the rejection record.
	Fields map[string]any `yaml:"fields,omitempty" json:"fields,omitempty"`
	// Rejected, on a Kafka events step of one event, is the reason the
	// pipeline must reject that record with: the runner reads the
	// rejected topic until the rejection of exactly that record (its
	// topic, partition and offset) arrives, within the poll timeout.
	// Fields are then checked against the rejection ({v, stage, reason,
	// detail, tenant_id, session_id, seq, expected_seq, topic, partition,
	// offset, key, original}).
	Rejected string `yaml:"rejected,omitempty" json:"rejected,omitempty"`
}

// What a case may require of the target (Case.Requires, Options.Provides).
const (
	// RequireAuth: per-tenant API keys; tenants are not isolated under
	// aegisd --dev.
	RequireAuth = "auth"
	// RequireShortApprovalTTL: aegisd runs with --approval-ttl of at most
	// 10s, so that an approval expires while the case waits.
	RequireShortApprovalTTL = "short-approval-ttl"
	// RequireConformancePolicy: aegisd runs the conformance policy bundle
	// (WritePolicy: the default bundle plus rules that make the evaluation
	// of a few conformance.* tools fail), and replays use it too.
	RequireConformancePolicy = "conformance-policy"
	// RequireKafka: the runner can publish to the target's Kafka brokers
	// (Options.Brokers) and read its rejected topic; implied by Brokers.
	// Every case with a Kafka events step requires it.
	RequireKafka = "kafka"
	// RequireApprovalSecret: the runner holds the deployment's approval
	// secret (Options.ApprovalSecret), to sign approvals the way the
	// gateway does; implied by ApprovalSecret. Every case with a sign
	// step requires it.
	RequireApprovalSecret = "approval-secret"
)

// Via values of an events step.
const (
	ViaHTTP  = "http"
	ViaKafka = "kafka"
)

// Requires returns every value Case.Requires may hold.
func Requires() []string {
	return []string{RequireAuth, RequireShortApprovalTTL, RequireConformancePolicy, RequireKafka, RequireApprovalSecret}
}

func knownRequirements(rs []string) bool {
	for _, r := range rs {
		if !slices.Contains(Requires(), r) {
			return false
		}
	}
	return true
}

var idPattern = regexp.MustCompile(`^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$`)

// Load reads every *.yaml file of dir in name order. A dir that cannot be
// read, or that holds no pack, is an ErrPack that names it.
func Load(dir string) ([]*Pack, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPack, err)
	}
	if !slices.ContainsFunc(entries, func(e os.DirEntry) bool {
		ok, _ := path.Match("*.yaml", e.Name())
		return ok
	}) {
		return nil, fmt.Errorf("%w: no *.yaml pack in %s", ErrPack, dir)
	}
	return LoadFS(os.DirFS(dir), ".")
}

// LoadFS reads every *.yaml file of dir in fsys, in name order, and checks
// the packs together: ids unique across packs, every case well formed, and
// the manifests of all scenarios consistent (ManifestSet).
func LoadFS(fsys fs.FS, dir string) ([]*Pack, error) {
	names, err := fs.Glob(fsys, path.Join(dir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPack, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no *.yaml pack in %s", ErrPack, dir)
	}
	sort.Strings(names)
	var packs []*Pack
	seen := make(map[string]string)
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPack, err)
		}
		p, err := Parse(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		p.File = name
		if p.Name == "" {
			p.Name = strings.TrimSuffix(path.Base(name), ".yaml")
		}
		for _, c := range p.Cases {
			if prev, dup := seen[c.ID]; dup {
				return nil, fmt.Errorf("%w: %s: case %s already defined in %s", ErrPack, name, c.ID, prev)
			}
			seen[c.ID] = name
		}
		packs = append(packs, p)
	}
	if _, err := ManifestSet(packs); err != nil {
		return nil, err
	}
	return packs, nil
}

// Parse decodes one pack strictly (unknown fields and a second YAML
// document are errors) and checks its cases.
func Parse(b []byte) (*Pack, error) {
	var p Pack
	// A second document ("---") would otherwise be ignored, and its
	// cases would never run. Empty documents are harmless.
	if err := yamldoc.DecodeStrict(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPack, err)
	}
	if len(p.Cases) == 0 {
		return nil, fmt.Errorf("%w: no cases", ErrPack)
	}
	for i, c := range p.Cases {
		if err := c.check(); err != nil {
			return nil, fmt.Errorf("%w: cases[%d] %s: %w", ErrPack, i, c.ID, err)
		}
	}
	return &p, nil
}

func (c *Case) check() error {
	switch {
	case !idPattern.MatchString(c.ID):
		return fmt.Errorf("id %q does not match %s", c.ID, idPattern)
	case !idPattern.MatchString(c.Requirement):
		return fmt.Errorf("requirement %q does not match %s", c.Requirement, idPattern)
	case c.Description == "":
		return errors.New("no description")
	case (c.Decide == nil) == (c.Scenario == nil):
		return errors.New("exactly one of decide and scenario must be set")
	case !knownRequirements(c.Requires):
		return fmt.Errorf("requires %q: only %q are defined", c.Requires, Requires())
	case c.Decide != nil && c.Decide.Request == nil:
		return errors.New("decide without a request")
	case c.Decide != nil && c.Decide.Expect.Outcome == "" && c.Decide.Expect.Code == "":
		return errors.New("decide expects neither an outcome nor an error code")
	}
	if c.Scenario == nil {
		return nil
	}
	if len(c.Scenario.Steps) == 0 {
		return errors.New("scenario without steps")
	}
	for i, s := range c.Scenario.Steps {
		n := 0
		for _, set := range []bool{s.Events != nil, s.Propose != nil, s.Approve != nil, s.Snapshot, s.Sealed, s.Verify, s.HTTP != nil, s.Tamper != nil, s.Replay != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("steps[%d]: exactly one action (events, propose, approve, snapshot, sealed, verify, http, tamper, replay) must be set, got %d", i, n)
		}
		if (s.Events != nil || s.Propose != nil || s.Snapshot || s.Sealed || s.Verify) && s.Session == "" {
			return fmt.Errorf("steps[%d]: no session", i)
		}
		if (s.Tamper != nil && len(s.Tamper) == 0) || (s.Replay != nil && len(s.Replay) == 0) {
			return fmt.Errorf("steps[%d]: an empty tamper or replay list does nothing", i)
		}
		if (s.Tamper != nil || s.Replay != nil) && !reflect.ValueOf(s.Expect).IsZero() {
			return fmt.Errorf("steps[%d]: tamper and replay steps check nothing against expect (follow them with a verify or sealed step)", i)
		}
		if err := c.checkVia(s); err != nil {
			return fmt.Errorf("steps[%d]: %w", i, err)
		}
	}
	return nil
}

// checkVia checks the Kafka-only keys of a step: via, sign, key, no_key,
// partition, the raw records and expect.rejected.
func (c *Case) checkVia(s *Step) error {
	switch s.Via {
	case "", ViaHTTP, ViaKafka:
	default:
		return fmt.Errorf("via %q: only %q and %q are defined", s.Via, ViaHTTP, ViaKafka)
	}
	if s.Via != "" && s.Events == nil {
		return errors.New("via applies to events steps only")
	}
	if s.Via != ViaKafka {
		switch {
		case s.Key != nil || s.NoKey || s.Partition != nil:
			return errors.New("key, no_key and partition apply to Kafka events steps only (via: kafka): the gateway keys and places its records itself")
		case slices.ContainsFunc(s.Events, func(e *Event) bool { return e.raw() || e.PadTo != 0 }):
			return errors.New("raw, raw_base64 and pad_to apply to Kafka events steps only (via: kafka); send raw HTTP bodies with an http step")
		case s.Sign:
			return errors.New("sign applies to Kafka events steps only (via: kafka): the gateway signs the approvals it publishes itself")
		case s.Expect.Rejected != "":
			return errors.New("expect.rejected applies to Kafka events steps only (via: kafka): the gateway answers a rejection itself")
		}
		return nil
	}
	e := s.Expect
	switch {
	case !slices.Contains(c.Requires, RequireKafka):
		return fmt.Errorf("a Kafka events step needs the case to declare requires: [%s]", RequireKafka)
	case s.Sign && !slices.Contains(c.Requires, RequireApprovalSecret):
		return fmt.Errorf("a sign step needs the case to declare requires: [%s]", RequireApprovalSecret)
	case s.NoAuth:
		return errors.New("no_auth: a Kafka events step sends no credentials anyway")
	case e.Status != 0 || e.Outcome != "" || e.Reason != "" || e.Code != "":
		return errors.New("a Kafka events step has no HTTP response: expect only rejected (and fields of the rejection)")
	case e.Fields != nil && e.Rejected == "":
		return errors.New("expect.fields on a Kafka events step are fields of the rejection: name the reason in expect.rejected")
	case e.Rejected != "" && len(s.Events) != 1:
		return errors.New("expect.rejected needs exactly one event in the step")
	case s.Key != nil && s.NoKey:
		return errors.New("key and no_key: a record has a key or none")
	}
	for i, ev := range s.Events {
		if err := ev.checkRaw(s.Sign); err != nil {
			return fmt.Errorf("events[%d]: %w", i, err)
		}
	}
	return nil
}

// checkRaw checks the raw-record keys of an event of a Kafka step.
func (e *Event) checkRaw(sign bool) error {
	switch {
	case e.Raw != "" && e.RawBase64 != "":
		return errors.New("raw and raw_base64: one value per record")
	case e.raw() && e.shortForm():
		return errors.New("raw or raw_base64 is the whole record: no seq, ts, type, manifest or payload beside it")
	case e.raw() && sign:
		return errors.New("sign rewrites envelopes; a raw record is sent as it is")
	case e.PadTo < 0:
		return fmt.Errorf("pad_to %d: a length in bytes", e.PadTo)
	}
	if e.RawBase64 != "" {
		if _, err := base64.StdEncoding.DecodeString(e.RawBase64); err != nil {
			return fmt.Errorf("raw_base64: %w", err)
		}
	}
	return nil
}

// ManifestSet returns the manifests of every scenario of packs as
// tenant/file.json → canonical-indented JSON, the registry a target needs.
// Two scenarios that name the same file with different contents are an
// error.
func ManifestSet(packs []*Pack) (map[string][]byte, error) {
	out := make(map[string][]byte)
	for _, p := range packs {
		for _, c := range p.Cases {
			if c.Scenario == nil {
				continue
			}
			for tenant, files := range c.Scenario.Manifests {
				for file, m := range files {
					b, err := json.MarshalIndent(m, "", "  ")
					if err != nil {
						return nil, fmt.Errorf("%w: %s: manifest %s/%s: %w", ErrPack, c.ID, tenant, file, err)
					}
					b = append(b, '\n')
					key := tenant + "/" + file + ".json"
					if prev, ok := out[key]; ok && !bytes.Equal(prev, b) {
						return nil, fmt.Errorf("%w: %s: manifest %s differs from another scenario's", ErrPack, c.ID, key)
					}
					out[key] = b
				}
			}
		}
	}
	return out, nil
}

// WriteManifests writes the manifests of packs as a registry under dir
// (<dir>/<tenant>/<file>.json), as `aegisd --manifests dir` reads it.
func WriteManifests(dir string, packs []*Pack) error {
	set, err := ManifestSet(packs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("conformance: manifests: %w", err)
	}
	for key, b := range set {
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("conformance: manifests: %w", err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("conformance: manifests: %w", err)
		}
	}
	return nil
}

// Tenants returns every tenant the packs' scenario steps act as, plus
// "default" (stateless decisions), sorted.
func Tenants(packs []*Pack) []string {
	set := map[string]bool{"default": true}
	for _, p := range packs {
		for _, c := range p.Cases {
			if c.Scenario == nil {
				continue
			}
			for _, s := range c.Scenario.Steps {
				if s.Tenant != "" {
					set[s.Tenant] = true
				}
			}
		}
	}
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}
