package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// DecideRequest is the stateless decision request shared by
// `aegisctl decide` and POST /v1/policy/decide. Snapshot and Manifest are
// optional: a missing snapshot is a new session; a missing manifest is
// resolved from the registry when one is configured, else the decision is
// MANIFEST_UNKNOWN.
type DecideRequest struct {
	Event    json.RawMessage `json:"event"`
	Snapshot json.RawMessage `json:"snapshot,omitempty"`
	Manifest json.RawMessage `json:"manifest,omitempty"`
}

// DecisionLine is one line of `aegisctl decide --events`: the same record
// the decider stage writes to the decisions topic.
type DecisionLine = decider.Reply

type policyFlags struct {
	policyDir    string
	manifestDir  string
	manifestFile string
}

func (p *policyFlags) register(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&p.policyDir, "policy", "", "policy bundle directory (default: the built-in bundle)")
	fs.StringVar(&p.manifestDir, "manifests", "", "manifest registry directory laid out as DIR/TENANT/NAME.json")
	fs.StringVar(&p.manifestFile, "manifest", "", "one manifest file used for every session")
}

// validate reports flags that cannot go together (a usage error).
func (p *policyFlags) validate() error {
	if p.manifestDir != "" && p.manifestFile != "" {
		return fmt.Errorf("--manifest and --manifests are exclusive")
	}
	return nil
}

// engine builds the decision engine the flags describe (see validate).
func (p *policyFlags) engine() (*decider.Engine, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	bundle := policy.Default()
	if p.policyDir != "" {
		var err error
		if bundle, err = policy.LoadDir(p.policyDir); err != nil {
			return nil, err
		}
	}
	pe, err := policy.New(bundle)
	if err != nil {
		return nil, err
	}
	var ms decider.Manifests
	switch {
	case p.manifestDir != "":
		reg, err := manifest.LoadDir(p.manifestDir)
		if err != nil {
			return nil, err
		}
		ms = reg
	case p.manifestFile != "":
		m, err := manifest.Load(p.manifestFile)
		if err != nil {
			return nil, err
		}
		ms = staticManifest{m}
	}
	return decider.NewEngine(pe, ms), nil
}

// staticManifest serves one manifest to every session.
type staticManifest struct{ m *manifest.Manifest }

func (s staticManifest) Resolve(string, string) (*manifest.Manifest, error) { return s.m, nil }

// maxDecideRequest bounds the request `aegisctl decide` reads from stdin:
// room for an event, a snapshot and a manifest of the largest size each.
const maxDecideRequest = envelope.DefaultMaxEventBytes * 4

func runDecide(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "decide", "[--events FILE] [--manifest FILE | --manifests DIR] [--policy DIR] (< request.json)")
	var pf policyFlags
	pf.register(fs)
	events := fs.String("events", "", "NDJSON event log (one or many sessions): print one decision line per TOOL_CALL_PROPOSED")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return fail(env, ExitUsage, "decide: unexpected argument %q", fs.Arg(0))
	}
	if err := pf.validate(); err != nil {
		return fail(env, ExitUsage, "decide: %v", err)
	}
	eng, err := pf.engine()
	if err != nil {
		return fail(env, ExitRuntime, "decide: %v", err)
	}
	if *events != "" {
		return decideLog(ctx, env, eng, *events)
	}
	in, err := io.ReadAll(io.LimitReader(env.Stdin, maxDecideRequest+1))
	if err != nil {
		return fail(env, ExitRuntime, "decide: read stdin: %v", err)
	}
	if len(in) > maxDecideRequest {
		return fail(env, ExitFailed, "decide: request is larger than %d bytes", maxDecideRequest)
	}
	d, err := DecideOne(ctx, eng, in, pf.manifestDir != "" || pf.manifestFile != "")
	if err != nil {
		return fail(env, ExitFailed, "decide: %v", err)
	}
	return writeJSON(env, d)
}

// DecideOne answers a stateless decision request. With useRegistry, a
// request without a manifest is resolved through the engine's manifests.
func DecideOne(ctx context.Context, eng *decider.Engine, body []byte, useRegistry bool) (*envelope.Decision, error) {
	var req DecideRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("request: trailing data after the JSON object")
	}
	if len(req.Event) == 0 {
		return nil, fmt.Errorf("request: event is required")
	}
	ev, err := envelope.Decode(req.Event)
	if err != nil {
		return nil, fmt.Errorf("request: event: %w", err)
	}
	snap := session.New(ev.TenantID, ev.SessionID)
	if len(req.Snapshot) > 0 && string(req.Snapshot) != "null" {
		sd := json.NewDecoder(bytes.NewReader(req.Snapshot))
		sd.DisallowUnknownFields()
		if err := sd.Decode(snap); err != nil {
			return nil, fmt.Errorf("request: snapshot: %w", err)
		}
		if snap.TenantID == "" && snap.SessionID == "" {
			snap.TenantID, snap.SessionID = ev.TenantID, ev.SessionID
		}
		if snap.TenantID != ev.TenantID || snap.SessionID != ev.SessionID {
			return nil, fmt.Errorf("request: snapshot is of %s/%s, event of %s/%s", snap.TenantID, snap.SessionID, ev.TenantID, ev.SessionID)
		}
		if err := withinBounds(snap); err != nil {
			return nil, fmt.Errorf("request: snapshot: %w", err)
		}
	}
	if len(req.Manifest) > 0 && string(req.Manifest) != "null" {
		m, err := manifest.Parse(req.Manifest)
		if err != nil {
			return nil, fmt.Errorf("request: manifest: %w", err)
		}
		return eng.DecideWith(ctx, snap, ev, m)
	}
	if useRegistry {
		return eng.Decide(ctx, snap, ev)
	}
	return eng.DecideWith(ctx, snap, ev, nil)
}

// withinBounds refuses a snapshot holding more than the reducer ever keeps
// (the bounds of decider/session): no session reaches it, and deciding on
// one of a request's worth of entries costs far more than the request.
func withinBounds(s *session.Snapshot) error {
	for _, b := range []struct {
		name   string
		n, max int
	}{
		{"calls", len(s.Calls), session.MaxCallDigests},
		{"approvals", len(s.Approvals), session.MaxApprovals},
		{"sanitizer_keys", len(s.SanitizerKeys), session.MaxSanitizerKeys},
		{"taint_sources", len(s.TaintSources), session.MaxTaintSources},
		{"recent_tools", len(s.RecentTools), session.MaxRecentTools},
	} {
		if b.n > b.max {
			return fmt.Errorf("%s holds %d entries; a session keeps at most %d", b.name, b.n, b.max)
		}
	}
	return nil
}

// decideLog runs the reducer and the policy over an NDJSON event log and
// prints one DecisionLine per proposal. Bad lines are reported on stderr and
// make the exit code ExitFailed; the other sessions go on.
func decideLog(ctx context.Context, env IO, eng *decider.Engine, path string) int {
	f, err := os.Open(path)
	if err != nil {
		return fail(env, ExitRuntime, "decide: %v", err)
	}
	defer f.Close()
	type key struct{ tenant, session string }
	snaps := make(map[key]*session.Snapshot)
	out := json.NewEncoder(env.Stdout)
	bad := 0
	err = eachLine(f, func(n int, line []byte) error {
		ev, err := envelope.Decode(line)
		if err != nil {
			bad++
			fmt.Fprintf(env.Stderr, "aegisctl: decide: %s line %d: %v\n", path, n, err)
			return nil
		}
		k := key{ev.TenantID, ev.SessionID}
		snap := snaps[k]
		if snap == nil {
			snap = session.New(ev.TenantID, ev.SessionID)
			snaps[k] = snap
		}
		if err := eng.Step(ctx, snap, ev); err != nil {
			bad++
			fmt.Fprintf(env.Stderr, "aegisctl: decide: %s line %d: %v\n", path, n, err)
			return nil
		}
		if ev.Decision == nil {
			return nil
		}
		return out.Encode(decider.NewReply(ev))
	})
	if errors.Is(err, bufio.ErrTooLong) {
		// An invalid line that ends the reading: the lines after it
		// are not decided.
		bad++
		fmt.Fprintf(env.Stderr, "aegisctl: decide: %s %v (an event is at most %d bytes); the lines after it were not read\n", path, err, maxLine)
	} else if err != nil {
		return fail(env, ExitRuntime, "decide: %s: %v", path, err)
	}
	if bad > 0 {
		return fail(env, ExitFailed, "decide: %d bad line(s) in %s", bad, path)
	}
	return ExitOK
}

func writeJSON(env IO, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return fail(env, ExitRuntime, "encode: %v", err)
	}
	b = append(b, '\n')
	if _, err := env.Stdout.Write(b); err != nil {
		return fail(env, ExitRuntime, "write: %v", err)
	}
	return ExitOK
}
