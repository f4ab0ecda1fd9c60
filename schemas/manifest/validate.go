package manifest

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits enforced by Validate. A budget of 0 means "use the default"; a
// budget above its maximum is rejected rather than clamped.
const (
	MaxMaxSteps          = 100000
	MaxMaxToolCalls      = 4096     // distinct calls the decider counts for max_identical_calls (session.MaxCallDigests)
	MaxMaxWallTimeMs     = 86400000 // 24 h
	MaxMaxOutputBytes    = 1 << 30  // 1 GiB
	MaxTimeoutMs         = 3600000  // 1 h
	MaxMaxIdenticalCalls = 1000

	// recordedMaxToolCalls is the limit on max_tool_calls before
	// 2026-11-29, which ParseRecorded still accepts.
	recordedMaxToolCalls = 100000

	// MaxVersionLen bounds version.
	MaxVersionLen = 64
	// MaxTextLen bounds publisher, tool names, binaries, sandbox.image and
	// integrity.signature, in bytes.
	MaxTextLen = 256
)

// NamePattern is the form of a manifest name. It leaves out "@", which
// separates name and version in a reference, and "/", so that a name is a
// valid file name.
const NamePattern = `^[a-z0-9][a-z0-9._-]{0,63}$`

var nameRE = regexp.MustCompile(NamePattern)

// Validate checks m against the rules in docs/manifest.md and returns nil or
// a *ValidationError listing every problem, each with the path of the value
// at fault. Parse calls it; programs that build a Manifest in code should
// call it too (NewRegistry does).
func (m *Manifest) Validate() error {
	if errs := m.validate(current); len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}

// rules selects what validate checks: the current rules, for a manifest
// being loaded, or for one a recorded decision names (ParseRecorded) the
// rules of the build that loaded it, limits tightened since included, so
// that the decisions made under it can still be replayed.
type rules int

const (
	current rules = iota
	recorded
)

type problems []FieldError

func (p *problems) add(path string, code Code, format string, args ...any) {
	*p = append(*p, FieldError{Path: path, Code: code, Problem: fmt.Sprintf(format, args...)})
}

func (m *Manifest) validate(r rules) []FieldError {
	var p problems
	switch {
	case m.Schema == "":
		p.add("schema", CodeRequired, "is required (%q)", Schema)
	case m.Schema != Schema:
		p.add("schema", CodeInvalidValue, "must be %q, got %q", Schema, m.Schema)
	}
	switch {
	case m.Name == "":
		p.add("name", CodeRequired, "is required")
	case !nameRE.MatchString(m.Name):
		p.add("name", CodeInvalidValue, "%q must match %s", m.Name, NamePattern)
	}
	switch {
	case m.Version == "":
		p.add("version", CodeRequired, "is required")
	case len(m.Version) > MaxVersionLen:
		p.add("version", CodeOutOfRange, "must be at most %d bytes", MaxVersionLen)
	default:
		if _, ok := parseSemver(m.Version); !ok {
			p.add("version", CodeInvalidValue, "%q is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], no leading zeros)", m.Version)
		}
	}
	switch {
	case strings.TrimSpace(m.Publisher) == "":
		p.add("publisher", CodeRequired, "is required")
	case len(m.Publisher) > MaxTextLen:
		p.add("publisher", CodeOutOfRange, "must be at most %d bytes", MaxTextLen)
	case !utf8.ValidString(m.Publisher):
		p.add("publisher", CodeInvalidValue, "must be valid UTF-8")
	case hasControl(m.Publisher):
		p.add("publisher", CodeInvalidValue, "must not contain control characters")
	}
	m.Permissions.validate(&p, r)
	if img := m.Sandbox.Image; img != "" {
		checkToken(&p, "sandbox.image", img)
	}
	if h := m.Integrity.TreeSHA256; h != "" && !isLowerHex(h, 64) {
		p.add("integrity.tree_sha256", CodeInvalidValue, "must be 64 lowercase hexadecimal digits")
	}
	if s := m.Integrity.Signature; s != "" {
		checkToken(&p, "integrity.signature", s)
	}
	return p
}

func (perm *Permissions) validate(p *problems, r rules) {
	tools := make(map[string]int, len(perm.Tools))
	for i, t := range perm.Tools {
		path := fmt.Sprintf("permissions.tools[%d]", i)
		if !checkToken(p, path, t) {
			continue
		}
		if strings.Contains(t, "*") {
			p.add(path, CodeInvalidValue, "%q contains \"*\": tools are matched exactly, there are no wildcards", t)
			continue
		}
		if j, dup := tools[t]; dup {
			p.add(path, CodeDuplicateValue, "%q is already declared at permissions.tools[%d]", t, j)
			continue
		}
		tools[t] = i
	}

	domains := make(map[string]int, len(perm.Net.Domains))
	for i, d := range perm.Net.Domains {
		path := fmt.Sprintf("permissions.net.domains[%d]", i)
		if code, problem := domainProblem(d, r); problem != "" {
			p.add(path, code, "%s", problem)
			continue
		}
		if j, dup := domains[d]; dup {
			p.add(path, CodeDuplicateValue, "%q is already listed at permissions.net.domains[%d]", d, j)
			continue
		}
		domains[d] = i
	}

	bins := make(map[string]int, len(perm.Exec.AllowedBins))
	for i, b := range perm.Exec.AllowedBins {
		path := fmt.Sprintf("permissions.exec.allowed_bins[%d]", i)
		if !checkToken(p, path, b) {
			continue
		}
		if j, dup := bins[b]; dup {
			p.add(path, CodeDuplicateValue, "%q is already listed at permissions.exec.allowed_bins[%d]", b, j)
			continue
		}
		bins[b] = i
	}

	approvals := make(map[string]int, len(perm.ApprovalRequired))
	for i, t := range perm.ApprovalRequired {
		path := fmt.Sprintf("permissions.approval_required[%d]", i)
		if t == "" {
			p.add(path, CodeRequired, "must not be empty")
			continue
		}
		if _, declared := tools[t]; !declared {
			p.add(path, CodeUndeclaredTool, "%q is not declared in permissions.tools", t)
			continue
		}
		if j, dup := approvals[t]; dup {
			p.add(path, CodeDuplicateValue, "%q is already listed at permissions.approval_required[%d]", t, j)
			continue
		}
		approvals[t] = i
	}

	perm.Budgets.validate(p, r)
}

func (b *Budgets) validate(p *problems, r rules) {
	check := func(name string, v, def, max int64) {
		path := "permissions.budgets." + name
		switch {
		case v < 0:
			p.add(path, CodeOutOfRange, "must be >= 0 (0 means the default, %d), got %d", def, v)
		case v > max:
			p.add(path, CodeOutOfRange, "must be at most %d, got %d", max, v)
		}
	}
	check("max_steps", b.MaxSteps, DefaultMaxSteps, MaxMaxSteps)
	maxToolCalls := int64(MaxMaxToolCalls)
	if r == recorded {
		maxToolCalls = recordedMaxToolCalls
	}
	check("max_tool_calls", b.MaxToolCalls, DefaultMaxToolCalls, maxToolCalls)
	check("max_wall_time_ms", b.MaxWallTimeMs, DefaultMaxWallTimeMs, MaxMaxWallTimeMs)
	check("max_output_bytes", b.MaxOutputBytes, DefaultMaxOutputBytes, MaxMaxOutputBytes)
	check("timeout_ms", b.TimeoutMs, DefaultTimeoutMs, MaxTimeoutMs)
	check("max_identical_calls", b.MaxIdenticalCalls, DefaultMaxIdenticalCalls, MaxMaxIdenticalCalls)
	if b.TimeoutMs < 0 || b.MaxWallTimeMs < 0 {
		return
	}
	if eff := b.WithDefaults(); eff.TimeoutMs > eff.MaxWallTimeMs {
		p.add("permissions.budgets.timeout_ms", CodeOutOfRange,
			"%d exceeds max_wall_time_ms (%d): one call cannot outlast the session", eff.TimeoutMs, eff.MaxWallTimeMs)
	}
}

// checkToken reports an empty, over-long, invalid UTF-8 or whitespace-bearing
// string and returns whether s passed. Invalid UTF-8 reaches Validate only
// from a manifest built in code (Parse rejects it); json.Marshal would write
// it as U+FFFD, so two manifests that decide differently would share one
// digest.
func checkToken(p *problems, path, s string) bool {
	switch {
	case s == "":
		p.add(path, CodeRequired, "must not be empty")
	case len(s) > MaxTextLen:
		p.add(path, CodeOutOfRange, "must be at most %d bytes", MaxTextLen)
	case !utf8.ValidString(s):
		p.add(path, CodeInvalidValue, "%q must be valid UTF-8", s)
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		p.add(path, CodeInvalidValue, "%q must not contain whitespace or control characters", s)
	default:
		return true
	}
	return false
}

func hasControl(s string) bool { return strings.IndexFunc(s, unicode.IsControl) >= 0 }

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// domainProblem returns the code and problem of a bad permissions.net.domains
// entry, or an empty problem if d is an exact host name or "*." followed by
// a host name of at least two labels whose last label is not a number
// (under the recorded rules, it may be one: such patterns were valid until
// 2026-11-29).
func domainProblem(d string, r rules) (Code, string) {
	switch {
	case d == "":
		return CodeRequired, "must not be empty"
	case d == "*":
		return CodeInvalidValue, `a bare "*" is not allowed: use "*." followed by a domain, e.g. "*.example.com"`
	case strings.Contains(d, "://"):
		return CodeInvalidValue, fmt.Sprintf("%q must be a host name, not a URL", d)
	case strings.ContainsAny(d, "/?#"):
		return CodeInvalidValue, fmt.Sprintf("%q must not contain a path, query or fragment", d)
	case strings.Contains(d, ":"):
		return CodeInvalidValue, fmt.Sprintf("%q must not contain a port (or be an IPv6 address)", d)
	case strings.ToLower(d) != d:
		return CodeInvalidValue, fmt.Sprintf("%q must be lowercase", d)
	case strings.HasSuffix(d, "."):
		return CodeInvalidValue, fmt.Sprintf("%q must not end with a dot", d)
	}
	host, wildcard := strings.CutPrefix(d, "*.")
	if strings.Contains(host, "*") {
		return CodeInvalidValue, fmt.Sprintf(`%q: "*" is only allowed as the whole first label, as in "*.example.com"`, d)
	}
	if problem := hostProblem(host); problem != "" {
		return CodeInvalidValue, fmt.Sprintf("%q %s", d, problem)
	}
	if wildcard && !strings.Contains(host, ".") {
		return CodeInvalidValue, fmt.Sprintf(`%q would match a whole top-level domain: name at least two labels after "*."`, d)
	}
	if wildcard && r == current && ipv4Number(host[strings.LastIndexByte(host, '.')+1:]) {
		// No top-level domain is a number: URL parsers read a host whose
		// last label is one as an IPv4 address, so "*.0.1" would match
		// 127.0.0.1 and 10.0.0.1 rather than any sub-domain.
		return CodeInvalidValue, fmt.Sprintf(`%q ends in a numeric label: it would match IPv4 addresses (list an address as an exact entry)`, d)
	}
	return "", ""
}

// ipv4Number reports whether a lowercase label is a number in the sense of
// the WHATWG URL standard's IPv4 parser: decimal digits, or "0x" followed
// by hexadecimal digits (possibly none). A host whose last label is such a
// number is parsed as an IPv4 address.
func ipv4Number(label string) bool {
	if hex, ok := strings.CutPrefix(label, "0x"); ok {
		return isLowerHex(hex, len(hex))
	}
	return numeric(label)
}

// hostProblem returns why h is not a lowercase host name (labels of 1..63
// characters of a-z, 0-9 and "-", not starting or ending with "-", 253
// characters in all), or "".
func hostProblem(h string) string {
	if len(h) > 253 {
		return "is longer than 253 characters"
	}
	for label := range strings.SplitSeq(h, ".") {
		switch {
		case label == "":
			return "has an empty label"
		case len(label) > 63:
			return fmt.Sprintf("has label %q longer than 63 characters", label)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Sprintf("has label %q starting or ending with \"-\"", label)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Sprintf("has label %q with character %q: only a-z, 0-9 and \"-\" are allowed", label, c)
			}
		}
	}
	return ""
}
