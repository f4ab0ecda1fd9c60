// Package manifest implements capability manifests (aegis.dev/manifest/v0.1):
// what an agent may do. See docs/manifest.md.
package manifest

// Schema is the value of the "schema" field of every manifest.
const Schema = "aegis.dev/manifest/v0.1"

// Defaults applied to budgets a manifest leaves unset.
const (
	DefaultMaxSteps          = 24
	DefaultMaxToolCalls      = 12
	DefaultMaxWallTimeMs     = 120000
	DefaultMaxOutputBytes    = 1048576
	DefaultTimeoutMs         = 30000
	DefaultMaxIdenticalCalls = 2
)

// Manifest is a capability manifest.
type Manifest struct {
	Schema      string      `json:"schema"`
	Name        string      `json:"name"`
	Version     string      `json:"version"`
	Publisher   string      `json:"publisher"`
	Permissions Permissions `json:"permissions"`
	Sandbox     Sandbox     `json:"sandbox"`
	Integrity   Integrity   `json:"integrity"`
}

// Permissions declares what the agent may use. Anything not declared is denied.
type Permissions struct {
	Tools            []string `json:"tools"`
	Net              Net      `json:"net"`
	Exec             Exec     `json:"exec"`
	ApprovalRequired []string `json:"approval_required"`
	Budgets          Budgets  `json:"budgets"`
}

// Net lists egress domains: exact names ("api.example.com") or suffix
// patterns ("*.example.com", which matches sub-domains but not the apex).
type Net struct {
	Domains []string `json:"domains"`
}

// Exec lists the binaries exec-like tools may run.
type Exec struct {
	AllowedBins []string `json:"allowed_bins"`
}

// Budgets are per-session ceilings. A zero value means "use the default".
type Budgets struct {
	MaxSteps          int64 `json:"max_steps,omitempty"`
	MaxToolCalls      int64 `json:"max_tool_calls,omitempty"`
	MaxWallTimeMs     int64 `json:"max_wall_time_ms,omitempty"`
	MaxOutputBytes    int64 `json:"max_output_bytes,omitempty"`
	TimeoutMs         int64 `json:"timeout_ms,omitempty"`
	MaxIdenticalCalls int64 `json:"max_identical_calls,omitempty"`
}

// Sandbox states the isolation the agent's tools run in.
type Sandbox struct {
	Required bool   `json:"required"`
	Image    string `json:"image,omitempty"`
}

// Integrity pins the agent's package content.
type Integrity struct {
	TreeSHA256 string `json:"tree_sha256,omitempty"`
	Signature  string `json:"signature,omitempty"`
}

// WithDefaults returns b with every unset budget replaced by its default.
func (b Budgets) WithDefaults() Budgets {
	set := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	set(&b.MaxSteps, DefaultMaxSteps)
	set(&b.MaxToolCalls, DefaultMaxToolCalls)
	set(&b.MaxWallTimeMs, DefaultMaxWallTimeMs)
	set(&b.MaxOutputBytes, DefaultMaxOutputBytes)
	set(&b.TimeoutMs, DefaultTimeoutMs)
	set(&b.MaxIdenticalCalls, DefaultMaxIdenticalCalls)
	return b
}
