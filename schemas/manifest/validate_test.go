package manifest

import (
	"errors"
	"strings"
	"testing"
)

// validManifest returns a manifest that passes Validate; tests mutate it.
func validManifest(tb testing.TB) *Manifest {
	tb.Helper()
	m := &Manifest{
		Schema:    Schema,
		Name:      "research-agent",
		Version:   "1.2.3",
		Publisher: "Example Corp",
		Permissions: Permissions{
			Tools:            []string{"search", "web_fetch", "send_email"},
			Net:              Net{Domains: []string{"api.example.com", "*.wikipedia.org"}},
			Exec:             Exec{AllowedBins: []string{"git", "/usr/bin/python3"}},
			ApprovalRequired: []string{"send_email"},
			Budgets:          Budgets{MaxSteps: 40, TimeoutMs: 10000},
		},
		Sandbox:   Sandbox{Required: true, Image: "ghcr.io/example/sandbox:1"},
		Integrity: Integrity{TreeSHA256: strings.Repeat("ab", 32), Signature: "MEUCIQD+sig=="},
	}
	if err := m.Validate(); err != nil {
		tb.Fatalf("validManifest does not validate: %v", err)
	}
	return m
}

// want is an expected FieldError: Path and Code exactly, Problem as a
// substring.
type want struct {
	path    string
	code    Code
	problem string
}

// checkErrors asserts that err is a *ValidationError with exactly the
// wanted problems, in order.
func checkErrors(tb testing.TB, err error, wants []want) {
	tb.Helper()
	if len(wants) == 0 {
		if err != nil {
			tb.Fatalf("unexpected error: %v", err)
		}
		return
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		tb.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	if !errors.Is(err, ErrInvalid) {
		tb.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	if len(ve.Errors) != len(wants) {
		tb.Fatalf("got %d problems, want %d:\n%v", len(ve.Errors), len(wants), err)
	}
	for i, w := range wants {
		got := ve.Errors[i]
		if got.Path != w.path || got.Code != w.code || !strings.Contains(got.Problem, w.problem) {
			tb.Errorf("problem %d = {%q, %q, %q}, want {%q, %q, containing %q}", i, got.Path, got.Code, got.Problem, w.path, w.code, w.problem)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(m *Manifest)
		want   []want
	}{
		{"valid", func(*Manifest) {}, nil},
		{"minimal: no lists, no budgets", func(m *Manifest) { m.Permissions = Permissions{}; m.Sandbox = Sandbox{}; m.Integrity = Integrity{} }, nil},

		{"schema missing", func(m *Manifest) { m.Schema = "" }, []want{{"schema", CodeRequired, "is required"}}},
		{"schema other version", func(m *Manifest) { m.Schema = "aegis.dev/manifest/v0.2" }, []want{{"schema", CodeInvalidValue, `must be "aegis.dev/manifest/v0.1"`}}},

		{"name missing", func(m *Manifest) { m.Name = "" }, []want{{"name", CodeRequired, "is required"}}},
		{"name upper case", func(m *Manifest) { m.Name = "Research" }, []want{{"name", CodeInvalidValue, "must match"}}},
		{"name with at sign", func(m *Manifest) { m.Name = "a@b" }, []want{{"name", CodeInvalidValue, "must match"}}},
		{"name with slash", func(m *Manifest) { m.Name = "a/b" }, []want{{"name", CodeInvalidValue, "must match"}}},
		{"name starting with dot", func(m *Manifest) { m.Name = ".agent" }, []want{{"name", CodeInvalidValue, "must match"}}},
		{"name of 65 characters", func(m *Manifest) { m.Name = strings.Repeat("a", 65) }, []want{{"name", CodeInvalidValue, "must match"}}},
		{"name of 64 characters", func(m *Manifest) { m.Name = strings.Repeat("a", 64) }, nil},

		{"version missing", func(m *Manifest) { m.Version = "" }, []want{{"version", CodeRequired, "is required"}}},
		{"version two parts", func(m *Manifest) { m.Version = "1.2" }, []want{{"version", CodeInvalidValue, "not a semantic version"}}},
		{"version leading v", func(m *Manifest) { m.Version = "v1.2.3" }, []want{{"version", CodeInvalidValue, "not a semantic version"}}},
		{"version leading zero", func(m *Manifest) { m.Version = "1.02.3" }, []want{{"version", CodeInvalidValue, "not a semantic version"}}},
		{"version empty pre-release", func(m *Manifest) { m.Version = "1.2.3-" }, []want{{"version", CodeInvalidValue, "not a semantic version"}}},
		{"version pre-release leading zero", func(m *Manifest) { m.Version = "1.2.3-01" }, []want{{"version", CodeInvalidValue, "not a semantic version"}}},
		{"version pre-release and build", func(m *Manifest) { m.Version = "1.2.3-rc.1+build.7" }, nil},
		{"version too long", func(m *Manifest) { m.Version = "1.2.3-" + strings.Repeat("a", 60) }, []want{{"version", CodeOutOfRange, "at most 64"}}},

		{"publisher missing", func(m *Manifest) { m.Publisher = "" }, []want{{"publisher", CodeRequired, "is required"}}},
		{"publisher blank", func(m *Manifest) { m.Publisher = "  " }, []want{{"publisher", CodeRequired, "is required"}}},
		{"publisher too long", func(m *Manifest) { m.Publisher = strings.Repeat("p", 257) }, []want{{"publisher", CodeOutOfRange, "at most 256"}}},
		{"publisher invalid UTF-8", func(m *Manifest) { m.Publisher = "Example \xffCorp" }, []want{{"publisher", CodeInvalidValue, "UTF-8"}}},
		{"publisher control character", func(m *Manifest) { m.Publisher = "Example\nCorp" }, []want{{"publisher", CodeInvalidValue, "control characters"}}},

		{"tool empty", func(m *Manifest) { m.Permissions.Tools[1] = "" }, []want{{"permissions.tools[1]", CodeRequired, "must not be empty"}}},
		{"tool with space", func(m *Manifest) { m.Permissions.Tools[0] = "web search" }, []want{{"permissions.tools[0]", CodeInvalidValue, "whitespace"}}},
		{"tool wildcard", func(m *Manifest) { m.Permissions.Tools[0] = "*" }, []want{{"permissions.tools[0]", CodeInvalidValue, "no wildcards"}}},
		{"tool too long", func(m *Manifest) { m.Permissions.Tools[0] = strings.Repeat("t", 257) }, []want{{"permissions.tools[0]", CodeOutOfRange, "at most 256"}}},
		{"tool invalid UTF-8", func(m *Manifest) { m.Permissions.Tools[0] = "search\xff" }, []want{{"permissions.tools[0]", CodeInvalidValue, "UTF-8"}}},
		{"bin invalid UTF-8", func(m *Manifest) { m.Permissions.Exec.AllowedBins[0] = "git\xc3" }, []want{{"permissions.exec.allowed_bins[0]", CodeInvalidValue, "UTF-8"}}},
		{"tool duplicate", func(m *Manifest) { m.Permissions.Tools = append(m.Permissions.Tools, "search") }, []want{{"permissions.tools[3]", CodeDuplicateValue, "already declared at permissions.tools[0]"}}},

		{"domain empty", func(m *Manifest) { m.Permissions.Net.Domains[0] = "" }, []want{{"permissions.net.domains[0]", CodeRequired, "must not be empty"}}},
		{"domain bare star", func(m *Manifest) { m.Permissions.Net.Domains[1] = "*" }, []want{{"permissions.net.domains[1]", CodeInvalidValue, `bare "*"`}}},
		{"domain star inside", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api.*.example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "whole first label"}}},
		{"domain star prefix without dot", func(m *Manifest) { m.Permissions.Net.Domains[0] = "*example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "whole first label"}}},
		{"domain double star", func(m *Manifest) { m.Permissions.Net.Domains[0] = "*.*.example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "whole first label"}}},
		{"domain star of a top-level domain", func(m *Manifest) { m.Permissions.Net.Domains[0] = "*.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "whole top-level domain"}}},
		{"domain star alone with dot", func(m *Manifest) { m.Permissions.Net.Domains[0] = "*." }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "must not end with a dot"}}},
		{"domain URL", func(m *Manifest) { m.Permissions.Net.Domains[0] = "https://api.example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "not a URL"}}},
		{"domain port", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api.example.com:443" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "port"}}},
		{"domain IPv6", func(m *Manifest) { m.Permissions.Net.Domains[0] = "::1" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "port"}}},
		{"domain path", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api.example.com/v1" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "path"}}},
		{"domain upper case", func(m *Manifest) { m.Permissions.Net.Domains[0] = "API.example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "lowercase"}}},
		{"domain trailing dot", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api.example.com." }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "must not end with a dot"}}},
		{"domain empty label", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api..example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "empty label"}}},
		{"domain underscore", func(m *Manifest) { m.Permissions.Net.Domains[0] = "my_host.example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "only a-z, 0-9"}}},
		{"domain hyphen edge", func(m *Manifest) { m.Permissions.Net.Domains[0] = "-api.example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, `starting or ending with "-"`}}},
		{"domain long label", func(m *Manifest) { m.Permissions.Net.Domains[0] = strings.Repeat("a", 64) + ".com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "longer than 63"}}},
		{"domain too long", func(m *Manifest) {
			m.Permissions.Net.Domains[0] = strings.Repeat(strings.Repeat("a", 60)+".", 5) + "com"
		}, []want{{"permissions.net.domains[0]", CodeInvalidValue, "longer than 253"}}},
		{"domain with space", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api example.com" }, []want{{"permissions.net.domains[0]", CodeInvalidValue, "only a-z, 0-9"}}},
		{"domain duplicate", func(m *Manifest) { m.Permissions.Net.Domains = append(m.Permissions.Net.Domains, "*.wikipedia.org") }, []want{{"permissions.net.domains[2]", CodeDuplicateValue, "already listed at permissions.net.domains[1]"}}},
		{"domain single label and IPv4", func(m *Manifest) { m.Permissions.Net.Domains = []string{"localhost", "10.0.0.1"} }, nil},
		{"domain star over IPv4 addresses", func(m *Manifest) { m.Permissions.Net.Domains[1] = "*.0.1" }, []want{{"permissions.net.domains[1]", CodeInvalidValue, "IPv4"}}},
		{"domain star over a numeric top-level label", func(m *Manifest) { m.Permissions.Net.Domains[1] = "*.example.123" }, []want{{"permissions.net.domains[1]", CodeInvalidValue, "IPv4"}}},
		{"domain star over a hexadecimal last label", func(m *Manifest) { m.Permissions.Net.Domains[1] = "*.0.0x1" }, []want{{"permissions.net.domains[1]", CodeInvalidValue, "IPv4"}}},
		{"domain star with digits in the last label", func(m *Manifest) { m.Permissions.Net.Domains[1] = "*.example.x1" }, nil},

		{"bin empty", func(m *Manifest) { m.Permissions.Exec.AllowedBins[0] = "" }, []want{{"permissions.exec.allowed_bins[0]", CodeRequired, "must not be empty"}}},
		{"bin with space", func(m *Manifest) { m.Permissions.Exec.AllowedBins[1] = "python3 -c" }, []want{{"permissions.exec.allowed_bins[1]", CodeInvalidValue, "whitespace"}}},
		{"bin with tab", func(m *Manifest) { m.Permissions.Exec.AllowedBins[1] = "git\t" }, []want{{"permissions.exec.allowed_bins[1]", CodeInvalidValue, "whitespace"}}},
		{"bin duplicate", func(m *Manifest) { m.Permissions.Exec.AllowedBins = append(m.Permissions.Exec.AllowedBins, "git") }, []want{{"permissions.exec.allowed_bins[2]", CodeDuplicateValue, "already listed at permissions.exec.allowed_bins[0]"}}},

		{"approval of undeclared tool", func(m *Manifest) { m.Permissions.ApprovalRequired = []string{"send_email", "exec"} }, []want{{"permissions.approval_required[1]", CodeUndeclaredTool, `"exec" is not declared`}}},
		{"approval case differs from tool", func(m *Manifest) { m.Permissions.ApprovalRequired = []string{"Send_Email"} }, []want{{"permissions.approval_required[0]", CodeUndeclaredTool, "not declared"}}},
		{"approval empty", func(m *Manifest) { m.Permissions.ApprovalRequired = []string{""} }, []want{{"permissions.approval_required[0]", CodeRequired, "must not be empty"}}},
		{"approval duplicate", func(m *Manifest) { m.Permissions.ApprovalRequired = []string{"send_email", "send_email"} }, []want{{"permissions.approval_required[1]", CodeDuplicateValue, "already listed"}}},

		{"budget negative steps", func(m *Manifest) { m.Permissions.Budgets.MaxSteps = -1 }, []want{{"permissions.budgets.max_steps", CodeOutOfRange, "must be >= 0 (0 means the default, 24)"}}},
		{"budget negative tool calls", func(m *Manifest) { m.Permissions.Budgets.MaxToolCalls = -5 }, []want{{"permissions.budgets.max_tool_calls", CodeOutOfRange, "must be >= 0"}}},
		{"budget negative output", func(m *Manifest) { m.Permissions.Budgets.MaxOutputBytes = -1 }, []want{{"permissions.budgets.max_output_bytes", CodeOutOfRange, "must be >= 0"}}},
		{"budget negative identical calls", func(m *Manifest) { m.Permissions.Budgets.MaxIdenticalCalls = -1 }, []want{{"permissions.budgets.max_identical_calls", CodeOutOfRange, "must be >= 0"}}},
		{"budget negative timeout", func(m *Manifest) { m.Permissions.Budgets.TimeoutMs = -1 }, []want{{"permissions.budgets.timeout_ms", CodeOutOfRange, "must be >= 0"}}},
		{"budget negative wall time", func(m *Manifest) { m.Permissions.Budgets.MaxWallTimeMs = -1 }, []want{{"permissions.budgets.max_wall_time_ms", CodeOutOfRange, "must be >= 0"}}},
		{"budget steps too high", func(m *Manifest) { m.Permissions.Budgets.MaxSteps = MaxMaxSteps + 1 }, []want{{"permissions.budgets.max_steps", CodeOutOfRange, "at most 100000"}}},
		{"budget tool calls too high", func(m *Manifest) { m.Permissions.Budgets.MaxToolCalls = MaxMaxToolCalls + 1 }, []want{{"permissions.budgets.max_tool_calls", CodeOutOfRange, "at most 4096"}}},
		{"budget wall time too high", func(m *Manifest) { m.Permissions.Budgets.MaxWallTimeMs = MaxMaxWallTimeMs + 1 }, []want{{"permissions.budgets.max_wall_time_ms", CodeOutOfRange, "at most 86400000"}}},
		{"budget output too high", func(m *Manifest) { m.Permissions.Budgets.MaxOutputBytes = 1 << 40 }, []want{{"permissions.budgets.max_output_bytes", CodeOutOfRange, "at most 1073741824"}}},
		{"budget identical calls too high", func(m *Manifest) { m.Permissions.Budgets.MaxIdenticalCalls = 1001 }, []want{{"permissions.budgets.max_identical_calls", CodeOutOfRange, "at most 1000"}}},
		{"budget timeout too high", func(m *Manifest) {
			m.Permissions.Budgets.TimeoutMs = MaxTimeoutMs + 1
			m.Permissions.Budgets.MaxWallTimeMs = MaxMaxWallTimeMs
		}, []want{{"permissions.budgets.timeout_ms", CodeOutOfRange, "at most 3600000"}}},
		{"budget timeout above default wall time", func(m *Manifest) { m.Permissions.Budgets.TimeoutMs = 120001 }, []want{{"permissions.budgets.timeout_ms", CodeOutOfRange, "120001 exceeds max_wall_time_ms (120000)"}}},
		{"budget default timeout above wall time", func(m *Manifest) { m.Permissions.Budgets = Budgets{MaxWallTimeMs: 1000} }, []want{{"permissions.budgets.timeout_ms", CodeOutOfRange, "30000 exceeds max_wall_time_ms (1000)"}}},
		{"budget maxima accepted", func(m *Manifest) {
			m.Permissions.Budgets = Budgets{MaxSteps: MaxMaxSteps, MaxToolCalls: MaxMaxToolCalls, MaxWallTimeMs: MaxMaxWallTimeMs, MaxOutputBytes: MaxMaxOutputBytes, TimeoutMs: MaxTimeoutMs, MaxIdenticalCalls: MaxMaxIdenticalCalls}
		}, nil},

		{"sandbox image with space", func(m *Manifest) { m.Sandbox.Image = "ghcr.io/x y" }, []want{{"sandbox.image", CodeInvalidValue, "whitespace"}}},
		{"integrity tree hash short", func(m *Manifest) { m.Integrity.TreeSHA256 = "abc" }, []want{{"integrity.tree_sha256", CodeInvalidValue, "64 lowercase hexadecimal"}}},
		{"integrity tree hash upper case", func(m *Manifest) { m.Integrity.TreeSHA256 = strings.Repeat("AB", 32) }, []want{{"integrity.tree_sha256", CodeInvalidValue, "64 lowercase hexadecimal"}}},
		{"integrity signature with newline", func(m *Manifest) { m.Integrity.Signature = "abc\ndef" }, []want{{"integrity.signature", CodeInvalidValue, "whitespace"}}},

		{"every problem is listed", func(m *Manifest) {
			m.Name = ""
			m.Permissions.Tools = []string{"a", "a"}
			m.Permissions.Net.Domains = []string{"ok.example.com", "*", "x.example.com:80"}
			m.Permissions.Budgets.MaxSteps = -1
		}, []want{
			{"name", CodeRequired, "is required"},
			{"permissions.tools[1]", CodeDuplicateValue, "already declared"},
			{"permissions.net.domains[1]", CodeInvalidValue, `bare "*"`},
			{"permissions.net.domains[2]", CodeInvalidValue, "port"},
			{"permissions.approval_required[0]", CodeUndeclaredTool, `"send_email" is not declared`},
			{"permissions.budgets.max_steps", CodeOutOfRange, "must be >= 0"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest(t)
			tt.mutate(m)
			checkErrors(t, m.Validate(), tt.want)
		})
	}
}

func TestValidationErrorMessageNamesEveryProblem(t *testing.T) {
	m := validManifest(t)
	m.Name = ""
	m.Permissions.Budgets.MaxSteps = -1
	got := m.Validate().Error()
	for _, s := range []string{"manifest: invalid: ", "name: is required", "; permissions.budgets.max_steps: must be >= 0"} {
		if !strings.Contains(got, s) {
			t.Errorf("Error() = %q, missing %q", got, s)
		}
	}
}

func TestSemverPrecedence(t *testing.T) {
	// Ascending order from semver.org 2.0.0 §11, plus numeric edge cases.
	ordered := []string{
		"0.9.99", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
		"1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0", "10.0.0",
	}
	for i := range ordered {
		for j := range ordered {
			a, aok := parseSemver(ordered[i])
			b, bok := parseSemver(ordered[j])
			if !aok || !bok {
				t.Fatalf("parse %q/%q failed", ordered[i], ordered[j])
			}
			want := 0
			switch {
			case i < j:
				want = -1
			case i > j:
				want = 1
			}
			if got := a.compare(b); got != want {
				t.Errorf("compare(%s, %s) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
	a, _ := parseSemver("1.0.0+build.1")
	b, _ := parseSemver("1.0.0+build.2")
	if a.compare(b) != 0 {
		t.Errorf("build metadata changed precedence")
	}
}
