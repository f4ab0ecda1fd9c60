package conformance

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/sqlstore" // also registers the "sqlite" database/sql driver for tamper steps
)

// Case statuses in reports.
const (
	StatusPass = "pass"
	StatusFail = "fail"
	StatusSkip = "skip"
)

// DecideLogFunc re-decides an NDJSON event log with the registry in
// manifestsDir and returns the decision lines, as `aegisctl decide --events
// FILE --manifests DIR` prints them.
type DecideLogFunc func(ctx context.Context, eventsFile, manifestsDir string) ([]byte, error)

// Options configure a run.
type Options struct {
	// Target is the base URL of aegisd's HTTP API.
	Target string
	// Keys are API keys by tenant; the key of tenant "" is used for every
	// tenant without its own. Empty: no Authorization header (aegisd --dev).
	Keys map[string]string
	// StorePath is the SQLite audit store the runner owns (embedded run).
	// Empty: cases with tamper steps are skipped.
	StorePath string
	// DecideLog replays exported sessions (replay steps). Nil: cases with
	// replay steps are skipped.
	DecideLog DecideLogFunc
	// Provides lists what the target offers beyond the basics
	// (RequireShortApprovalTTL, RequireConformancePolicy, RequireAuth);
	// RequireAuth is implied by Keys. Cases requiring anything else are
	// skipped. With RequireConformancePolicy, DecideLog must decide with
	// the conformance policy bundle (WritePolicy) too.
	Provides []string
	// RunID makes the run's session ids unique (default: the start time).
	RunID string
	// Concurrency bounds the cases in flight (default 8).
	Concurrency int
	// PollTimeout bounds how long audit-store reads wait for the expected
	// state, and each wait of a barrier (default 30s).
	PollTimeout time.Duration
	// Client is the HTTP client (default: a client with a 70s timeout).
	Client *http.Client
	// Brokers are the target's Kafka seed brokers, for Kafka events steps
	// (RequireKafka). Empty: cases that require kafka are skipped.
	Brokers []string
	// KafkaSecurity is how the runner's Kafka clients reach Brokers (TLS,
	// SASL; zero: plaintext).
	KafkaSecurity stream.Security
	// TopicPrefix is the prefix of the target's topic names (aegisd
	// --topic-prefix; default "aegis.").
	TopicPrefix string
	// ApprovalSecret is the deployment's approval secret (the contents of
	// aegisd's --approval-secret-file), for sign steps
	// (RequireApprovalSecret). Empty: cases that require approval-secret
	// are skipped.
	ApprovalSecret []byte
}

// Run runs every case of packs and returns the report. It fails only on
// setup errors (the manifests cannot be written); failing cases are in the
// report.
func Run(ctx context.Context, packs []*Pack, opts Options) (*Report, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.PollTimeout <= 0 {
		opts.PollTimeout = 30 * time.Second
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 70 * time.Second}
	}
	start := time.Now()
	if opts.RunID == "" {
		opts.RunID = strconv.FormatInt(start.UnixMilli(), 36)
	}
	opts.Target = strings.TrimSuffix(opts.Target, "/")
	mdir, err := os.MkdirTemp("", "aegis-conformance-manifests-")
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	defer func() { _ = os.RemoveAll(mdir) }()
	if err := WriteManifests(mdir, packs); err != nil {
		return nil, err
	}
	r := &runner{opts: opts, manifests: mdir}
	if len(opts.Brokers) > 0 {
		if r.kafka, err = newKafkaClient(opts.Brokers, opts.KafkaSecurity, opts.TopicPrefix); err != nil {
			return nil, err
		}
		defer r.kafka.close()
	}
	type job struct {
		pack *Pack
		c    *Case
		i    int
	}
	var jobs []job
	for _, p := range packs {
		for _, c := range p.Cases {
			jobs = append(jobs, job{p, c, len(jobs)})
		}
	}
	results := make([]CaseResult, len(jobs))
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[j.i] = r.runCase(ctx, j.pack, j.c)
		}()
	}
	wg.Wait()
	return newReport(opts.Target, opts.RunID, start, time.Since(start), results), nil
}

type runner struct {
	opts      Options
	manifests string
	kafka     *kafkaClient // nil without Options.Brokers
}

// caseRun is the state of one case: its session id and step responses.
type caseRun struct {
	r      *runner
	c      *Case
	sid    string
	vars   map[string]any
	ev     []Evidence
	where  string
	noAuth bool
	// gen counts the case's steps that may have written; marks holds
	// what the last barrier of each session saw (marked: those sessions
	// in order), written the sessions that events and propose steps wrote.
	// wroteAt is the gen of each session's last events or propose step,
	// anyAt that of the last step that may have written any session
	// (approve, http other than GET).
	gen      int
	marks    map[sessionKey]barrierMark
	marked   []sessionKey
	written  []sessionKey
	wroteAt  map[sessionKey]int
	anyAt    int
	barriers int
}

func (r *runner) runCase(ctx context.Context, p *Pack, c *Case) CaseResult {
	start := time.Now()
	res := CaseResult{Pack: p.Name, ID: c.ID, Requirement: c.Requirement, Description: c.Description}
	cr := &caseRun{r: r, c: c, sid: strings.ToLower(c.ID) + "-" + r.opts.RunID, vars: make(map[string]any), marks: make(map[sessionKey]barrierMark), wroteAt: make(map[sessionKey]int)}
	var err error
	if skip := r.skipReason(ctx, c); skip != "" {
		res.Status, res.Message = StatusSkip, skip
	} else {
		if c.Decide != nil {
			err = cr.decide(ctx)
		} else {
			err = cr.scenario(ctx)
		}
		res.Status = StatusPass
		if err != nil {
			res.Status, res.Message = StatusFail, err.Error()
		}
	}
	res.Evidence = cr.ev
	res.DurationMs = time.Since(start).Milliseconds()
	return res
}

// tenantWithoutKey returns the first tenant that a step of c acts as with
// credentials and that has no key of its own in keys, or "".
func tenantWithoutKey(c *Case, keys map[string]string) string {
	if c.Scenario == nil {
		if keys["default"] == "" {
			return "default"
		}
		return ""
	}
	for _, s := range c.Scenario.Steps {
		t := s.Tenant
		if t == "" {
			t = "default"
		}
		if !s.NoAuth && keys[t] == "" {
			return t
		}
	}
	return ""
}

func (r *runner) skipReason(ctx context.Context, c *Case) string {
	for _, req := range c.Requires {
		switch {
		case req == RequireAuth && len(r.opts.Keys) == 0:
			return "needs per-tenant API keys (--api-key TENANT=KEY); tenants are not isolated under aegisd --dev"
		case req == RequireAuth:
			// An isolation check sent with a key every tenant shares
			// (an operator's) would fail against a correct target.
			if t := tenantWithoutKey(c, r.opts.Keys); t != "" {
				return "needs an API key of tenant " + t + "'s own (--api-key " + t + "=KEY); a key shared by every tenant cannot show isolation"
			}
		case req == RequireKafka && r.kafka == nil:
			return "needs the target's Kafka brokers (--brokers HOST:PORT and, if not aegis., --topic-prefix) to publish to its events topic and read its rejected topic"
		case req == RequireKafka:
		case req == RequireApprovalSecret && len(r.opts.ApprovalSecret) == 0:
			return "needs the deployment's approval secret (--approval-secret-file: aegisd's) to sign approvals as the gateway does"
		case req == RequireApprovalSecret:
		case req == RequireConformancePolicy && !slices.Contains(r.opts.Provides, req):
			return "needs a target that runs the conformance policy bundle (aegisctl conformance policy --out DIR, aegisd --policy DIR) and --provides " + req
		case req != RequireAuth && !slices.Contains(r.opts.Provides, req):
			return "needs a target that provides " + req + " (--provides " + req + ")"
		}
	}
	if c.Scenario == nil {
		return ""
	}
	for _, s := range c.Scenario.Steps {
		if s.Tamper != nil && r.opts.StorePath == "" {
			return "tamper steps need the runner to own the audit store (embedded run)"
		}
		if s.Replay != nil && r.opts.DecideLog == nil {
			return "replay steps need a log decider"
		}
		if s.Partition != nil && s.Partition.Wrong && r.kafka != nil {
			// An error listing them fails the step instead.
			if n, err := r.kafka.partitions(ctx); err == nil && n < 2 {
				return fmt.Sprintf("partition: %s needs an events topic of two partitions or more; %s has %d, so every partition is every key's", PartitionWrong, r.kafka.topics.Events, n)
			}
		}
	}
	return ""
}

func (cr *caseRun) decide(ctx context.Context) error {
	cr.where = "decide"
	body, err := json.Marshal(cr.expand(cr.c.Decide.Request))
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	resp, err := cr.do(ctx, http.MethodPost, "/v1/policy/decide", "default", "application/json", body)
	if err != nil {
		return err
	}
	return check(cr.c.Decide.Expect, 200, resp)
}

func (cr *caseRun) scenario(ctx context.Context) error {
	for i, s := range cr.c.Scenario.Steps {
		cr.where = s.Name
		if cr.where == "" {
			cr.where = "step " + strconv.Itoa(i+1)
		}
		if err := cr.templates(s); err != nil {
			return fmt.Errorf("%s: %w", cr.where, err)
		}
		resp, err := cr.step(ctx, s)
		if err != nil {
			return fmt.Errorf("%s: %w", cr.where, err)
		}
		if s.Name != "" && resp != nil {
			cr.vars[s.Name] = resp.json
		}
	}
	if err := cr.endBarrier(ctx); err != nil {
		return fmt.Errorf("end: %w", err)
	}
	return nil
}

// response is one HTTP exchange.
type response struct {
	status int
	body   []byte
	json   any
}

func (cr *caseRun) step(ctx context.Context, s *Step) (*response, error) {
	tenant := s.Tenant
	if tenant == "" {
		tenant = "default"
	}
	cr.noAuth = s.NoAuth
	want := s.Expect
	if want.Fields != nil {
		want.Fields, _ = cr.expand(want.Fields).(map[string]any)
	}
	session := cr.str(s.Session)
	switch {
	case s.Events != nil && s.Via == ViaKafka:
		return cr.kafkaEvents(ctx, s, tenant, session, want)
	case s.Events != nil:
		evs := make([]map[string]any, len(s.Events))
		for i, e := range s.Events {
			evs[i] = cr.envelope(tenant, session, e, true)
		}
		body, err := json.Marshal(evs)
		if err != nil {
			return nil, err
		}
		cr.wrote(tenant, session)
		resp, err := cr.do(ctx, http.MethodPost, "/v1/events", tenant, "application/json", body)
		if err != nil {
			return nil, err
		}
		return resp, check(want, 202, resp)
	case s.Propose != nil:
		body, err := json.Marshal(cr.envelope(tenant, session, s.Propose, false))
		if err != nil {
			return nil, err
		}
		cr.wrote(tenant, session)
		resp, err := cr.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(session)+"/proposals?tenant_id="+url.QueryEscape(tenant), tenant, "application/json", body)
		if err != nil {
			return nil, err
		}
		return resp, check(want, 200, resp)
	case s.Approve != nil:
		a := map[string]any{"decision": s.Approve.Decision}
		if s.Approve.Reason != "" {
			a["reason"] = cr.str(s.Approve.Reason)
		}
		if s.Approve.ToolName != "" {
			a["tool_name"] = cr.str(s.Approve.ToolName)
		}
		if s.Approve.Args != nil {
			a["args"] = cr.expand(s.Approve.Args)
		}
		body, err := json.Marshal(a)
		if err != nil {
			return nil, err
		}
		cr.wroteAny() // the gateway publishes the settlement (and a re-proposal) to the approval's session
		resp, err := cr.do(ctx, http.MethodPost, "/v1/approvals/"+url.PathEscape(cr.str(s.Approve.Token))+"?tenant_id="+url.QueryEscape(tenant), tenant, "application/json", body)
		if err != nil {
			return nil, err
		}
		return resp, check(want, 200, resp)
	case s.Snapshot, s.Sealed, s.Verify:
		p := "/v1/sessions/" + url.PathEscape(session)
		switch {
		case s.Sealed:
			p += "/events"
		case s.Verify:
			p += "/verify"
		}
		p += "?tenant_id=" + url.QueryEscape(tenant)
		if s.Sealed {
			p += "&limit=1000"
		}
		return cr.read(ctx, p, tenant, session, want)
	case s.HTTP != nil:
		h := s.HTTP
		var body []byte
		if h.Raw != "" {
			body = []byte(cr.str(h.Raw))
		} else if h.Body != nil {
			b, err := json.Marshal(cr.expand(h.Body))
			if err != nil {
				return nil, err
			}
			body = b
		}
		ct := h.ContentType
		if ct == "" {
			ct = "application/json"
		}
		path := cr.str(h.Path)
		if h.Method != http.MethodGet && h.Method != http.MethodHead {
			cr.wroteAny() // any other request may write, to sessions the runner cannot tell
			for _, k := range httpWrites(path, tenant, body) {
				cr.wrote(k.tenant, k.session)
			}
		} else if strings.HasPrefix(path, "/v1/sessions/") {
			// A read of the audit store, sent once: it is decided only
			// after everything the case published is stored, as the
			// read steps' checks are.
			if err := cr.settleWritten(ctx); err != nil {
				return nil, err
			}
		}
		resp, err := cr.do(ctx, h.Method, path, tenant, ct, body)
		if err != nil {
			return nil, err
		}
		return resp, check(want, 200, resp)
	case s.Tamper != nil:
		if err := cr.settleWritten(ctx); err != nil {
			return nil, err
		}
		return nil, cr.tamper(ctx, s.Tamper)
	case s.Replay != nil:
		for _, sess := range s.Replay {
			if err := cr.settle(ctx, tenant, cr.str(sess)); err != nil {
				return nil, err
			}
		}
		return nil, cr.replay(ctx, tenant, s.Replay)
	}
	return nil, errors.New("step has no action")
}

// envelope builds the full envelope of a short-form event.
func (cr *caseRun) envelope(tenant, session string, e *Event, full bool) map[string]any {
	env := map[string]any{"tenant_id": tenant, "session_id": session}
	typ := e.Type
	if typ == "" && !full {
		typ = "TOOL_CALL_PROPOSED"
	}
	if typ != "" {
		env["event_type"] = typ
	}
	if e.Seq > 0 || full {
		env["seq"] = e.Seq
	}
	switch {
	case e.TS != 0:
		env["ts_unix_ms"] = e.TS
	case e.Seq > 0:
		env["ts_unix_ms"] = int64(1767225600000) + 1000*int64(e.Seq)
	case full:
		env["ts_unix_ms"] = int64(1767225600000)
	}
	if e.Manifest != "" {
		env["manifest"] = e.Manifest
	}
	if e.Payload != nil {
		env["payload"] = cr.expand(e.Payload)
	}
	return env
}

// read is a snapshot, sealed or verify step: it polls p until want holds,
// passes the session's barrier (unless passed since the case's last write)
// and then reads p once more, which must still satisfy want. The first
// match alone could be a state on its way to another: an exact count or an
// absence holds only once everything published before is stored.
func (cr *caseRun) read(ctx context.Context, p, tenant, session string, want Expect) (*response, error) {
	resp, err := cr.poll(ctx, http.MethodGet, p, tenant, want)
	if err != nil {
		return resp, err
	}
	if cr.settled(tenant, session) {
		return resp, nil
	}
	if err := cr.settle(ctx, tenant, session); err != nil {
		return resp, err
	}
	final, err := cr.do(ctx, http.MethodGet, p, tenant, "", nil)
	if err != nil {
		return nil, err
	}
	if err := check(want, 200, final); err != nil {
		return final, fmt.Errorf("after the barrier: %w", err)
	}
	return final, nil
}

func (cr *caseRun) poll(ctx context.Context, method, p, tenant string, want Expect) (*response, error) {
	deadline := time.Now().Add(cr.r.opts.PollTimeout)
	for {
		resp, err := cr.exchange(ctx, method, p, tenant, "", nil)
		if err == nil {
			err = check(want, 200, resp)
			if err == nil || time.Now().After(deadline) {
				cr.record(method, p, nil, resp)
				return resp, err
			}
		} else if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(150 * time.Millisecond):
		}
	}
}

func (cr *caseRun) do(ctx context.Context, method, p, tenant, ct string, body []byte) (*response, error) {
	resp, err := cr.exchange(ctx, method, p, tenant, ct, body)
	if err != nil {
		cr.ev = append(cr.ev, Evidence{Step: cr.where, Method: method, Path: p, Request: string(body), Error: err.Error()})
		return nil, err
	}
	cr.record(method, p, body, resp)
	return resp, nil
}

func (cr *caseRun) record(method, p string, body []byte, resp *response) {
	cr.ev = append(cr.ev, Evidence{Step: cr.where, Method: method, Path: p, Request: string(body), Status: resp.status, Response: string(resp.body)})
}

func (cr *caseRun) exchange(ctx context.Context, method, p, tenant, ct string, body []byte) (*response, error) {
	req, err := http.NewRequestWithContext(ctx, method, cr.r.opts.Target+p, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	key, ok := cr.r.opts.Keys[tenant]
	if !ok {
		key = cr.r.opts.Keys[""]
	}
	if key != "" && !cr.noAuth {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	hr, err := cr.r.opts.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, p, err)
	}
	defer hr.Body.Close()
	b, err := io.ReadAll(io.LimitReader(hr.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read body: %w", method, p, err)
	}
	resp := &response{status: hr.StatusCode, body: b}
	if len(bytes.TrimSpace(b)) > 0 {
		_ = json.Unmarshal(b, &resp.json) // a non-JSON body fails the checks that read it
	}
	return resp, nil
}

// check compares resp with want; defStatus applies when want names none.
func check(want Expect, defStatus int, resp *response) error {
	status := want.Status
	if status == 0 {
		status = defStatus
	}
	if resp.status != status {
		return fmt.Errorf("status %d, want %d: %s", resp.status, status, abbreviate(resp.body))
	}
	fields := make(map[string]any, len(want.Fields)+3)
	for k, v := range want.Fields {
		fields[k] = v
	}
	if want.Outcome != "" {
		fields["outcome"] = want.Outcome
	}
	if want.Reason != "" {
		fields["reason"] = want.Reason
	}
	if want.Code != "" {
		fields["error.code"] = want.Code
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		got, ok := lookup(resp.json, k)
		if !ok {
			return fmt.Errorf("%s: absent, want %v: %s", k, fields[k], abbreviate(resp.body))
		}
		if !jsonEqual(got, fields[k]) {
			return fmt.Errorf("%s = %s, want %s: %s", k, mustJSON(got), mustJSON(fields[k]), abbreviate(resp.body))
		}
	}
	return nil
}

// lookup resolves a dotted path of object keys and list indexes.
func lookup(v any, p string) (any, bool) {
	for _, part := range strings.Split(p, ".") {
		switch x := v.(type) {
		case map[string]any:
			n, ok := x[part]
			if !ok {
				return nil, false
			}
			v = n
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

func jsonEqual(a, b any) bool {
	var x, y any
	if json.Unmarshal([]byte(mustJSON(a)), &x) != nil || json.Unmarshal([]byte(mustJSON(b)), &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}

func abbreviate(b []byte) string {
	const limit = 600
	if len(b) > limit {
		return string(b[:limit]) + "…"
	}
	return string(b)
}

var templ = regexp.MustCompile(`\{\{([A-Za-z0-9_.\-]+)\}\}`)

// str expands the templates of s.
func (cr *caseRun) str(s string) string {
	return templ.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-2]
		switch name {
		case "sid":
			return cr.sid
		case "run":
			return cr.r.opts.RunID
		}
		v, ok := cr.value(name)
		if !ok {
			return m
		}
		if s, isStr := v.(string); isStr {
			return s
		}
		return mustJSON(v)
	})
}

// templates checks that every {{NAME.PATH}} template of s names a value of
// an earlier step's response. One that does not would be sent, or
// expected, as its literal text: a request with a made-up token or grant
// that the target refuses for that reason alone.
func (cr *caseRun) templates(s *Step) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	for _, m := range templ.FindAllSubmatch(b, -1) {
		name := string(m[1])
		if name == "sid" || name == "run" {
			continue
		}
		if _, ok := cr.value(name); !ok {
			return fmt.Errorf("template {{%s}}: no earlier named step's response has that value", name)
		}
	}
	return nil
}

// value resolves the template NAME.PATH to a value of an earlier step's
// response.
func (cr *caseRun) value(name string) (any, bool) {
	head, rest, _ := strings.Cut(name, ".")
	v, ok := cr.vars[head]
	if ok && rest != "" {
		v, ok = lookup(v, rest)
	}
	return v, ok
}

// expand expands the templates in every string of v. A string that is
// one {{NAME.PATH}} template of a value that is not a string (a number,
// an object) becomes that value, so that a number read from an earlier
// response is sent as a number.
func (cr *caseRun) expand(v any) any {
	switch x := v.(type) {
	case string:
		if m := templ.FindStringSubmatchIndex(x); m != nil && m[0] == 0 && m[1] == len(x) {
			if val, ok := cr.value(x[m[2]:m[3]]); ok {
				if _, isStr := val.(string); !isStr {
					return val
				}
			}
		}
		return cr.str(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = cr.expand(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cr.expand(e)
		}
		return out
	}
	return v
}

func (cr *caseRun) tamper(ctx context.Context, stmts []string) error {
	// sha256_hex(text), so that a statement can recompute a record's
	// hash after editing it, as an editor who knows the chain format would.
	if err := sqlstore.RegisterSHA256Hex(); err != nil {
		return fmt.Errorf("tamper: %w", err)
	}
	dsn := "file:" + (&url.URL{Path: cr.r.opts.StorePath}).EscapedPath() + "?_pragma=busy_timeout(10000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("tamper: open store: %w", err)
	}
	defer func() { _ = db.Close() }()
	for _, s := range stmts {
		q := cr.str(s)
		res, err := db.ExecContext(ctx, q)
		ev := Evidence{Step: cr.where, Method: "SQL", Request: q}
		if err != nil {
			ev.Error = err.Error()
			cr.ev = append(cr.ev, ev)
			return fmt.Errorf("tamper %q: %w", q, err)
		}
		n, _ := res.RowsAffected()
		ev.Response = fmt.Sprintf("%d rows affected", n)
		cr.ev = append(cr.ev, ev)
		if n == 0 {
			return fmt.Errorf("tamper %q changed no row", q)
		}
	}
	return nil
}

// replay exports the sessions' sealed records, strips what the decider and
// sealer added, re-decides the log twice and compares.
func (cr *caseRun) replay(ctx context.Context, tenant string, sessions []string) error {
	var log bytes.Buffer
	type key struct {
		session string
		seq     float64
	}
	recorded := make(map[key]map[string]any)
	for _, s := range sessions {
		s = cr.str(s)
		after := "0"
		for {
			p := "/v1/sessions/" + url.PathEscape(s) + "/events?tenant_id=" + url.QueryEscape(tenant) + "&limit=1000&after_seq=" + after
			resp, err := cr.do(ctx, http.MethodGet, p, tenant, "", nil)
			if err != nil {
				return err
			}
			if err := check(Expect{}, 200, resp); err != nil {
				return err
			}
			page, _ := resp.json.(map[string]any)
			evs, _ := page["events"].([]any)
			for _, e := range evs {
				rec, ok := e.(map[string]any)
				if !ok {
					return fmt.Errorf("replay: sealed record is not an object")
				}
				if d, ok := rec["decision"].(map[string]any); ok {
					seq, _ := rec["seq"].(float64)
					recorded[key{s, seq}] = d
				}
				delete(rec, "decision")
				delete(rec, "prev_hash")
				delete(rec, "hash")
				b, err := json.Marshal(rec)
				if err != nil {
					return err
				}
				log.Write(b)
				log.WriteByte('\n')
			}
			next, _ := page["next_cursor"].(string)
			if next == "" {
				break
			}
			after = next
		}
	}
	if len(recorded) == 0 {
		return errors.New("replay: the sessions hold no decided proposal")
	}
	dir, err := os.MkdirTemp("", "aegis-conformance-replay-")
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	file := filepath.Join(dir, "events.ndjson")
	if err := os.WriteFile(file, log.Bytes(), 0o644); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	first, err := cr.r.opts.DecideLog(ctx, file, cr.r.manifests)
	if err != nil {
		return fmt.Errorf("replay: first run: %w", err)
	}
	second, err := cr.r.opts.DecideLog(ctx, file, cr.r.manifests)
	if err != nil {
		return fmt.Errorf("replay: second run: %w", err)
	}
	cr.ev = append(cr.ev, Evidence{Step: cr.where, Method: "REPLAY", Request: log.String(), Response: string(first)})
	if !bytes.Equal(first, second) {
		return fmt.Errorf("replay: two runs over the same log differ:\n%s\n%s", abbreviate(first), abbreviate(second))
	}
	n := 0
	for _, line := range bytes.Split(bytes.TrimSpace(first), []byte("\n")) {
		var got map[string]any
		if err := json.Unmarshal(line, &got); err != nil {
			return fmt.Errorf("replay: decision line: %w", err)
		}
		s, _ := got["session_id"].(string)
		seq, _ := got["seq"].(float64)
		want, ok := recorded[key{s, seq}]
		if !ok {
			return fmt.Errorf("replay: decision for %s seq %v was not recorded", s, seq)
		}
		for _, f := range []string{"outcome", "reason", "constraints", "policy_revision", "manifest_digest", "input_digest"} {
			if !jsonEqual(got[f], want[f]) {
				return fmt.Errorf("replay: %s seq %v: %s = %s, recorded %s", s, seq, f, mustJSON(got[f]), mustJSON(want[f]))
			}
		}
		n++
	}
	if n != len(recorded) {
		return fmt.Errorf("replay: %d decisions replayed, %d recorded", n, len(recorded))
	}
	return nil
}
