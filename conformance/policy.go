package conformance

import (
	"embed"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"aegis.dev/aegis/decider/policy"
)

//go:embed policy/*.rego
var policyFS embed.FS

// PolicyFile is the file of the conformance rules in the bundle that
// WritePolicy writes (conformance/policy/conformance.rego).
const PolicyFile = "conformance.rego"

// PolicyBundle returns the conformance policy bundle: the default bundle
// (decider/policy) plus PolicyFile, whose rules make the evaluation of the
// tools conformance.builtin_error and conformance.conflict fail and change
// no other decision. A target that runs it provides
// RequireConformancePolicy.
func PolicyBundle() (*policy.Bundle, error) {
	b := policy.Default()
	rules, err := policyFS.ReadFile(path.Join("policy", PolicyFile))
	if err != nil {
		return nil, fmt.Errorf("conformance: policy: %w", err)
	}
	if _, clash := b.Files[PolicyFile]; clash {
		return nil, fmt.Errorf("conformance: policy: the default bundle has a file %s", PolicyFile)
	}
	b.Files[PolicyFile] = string(rules)
	b.Revision = policy.ComputeRevision(b.Files)
	return b, nil
}

// WritePolicy writes the conformance policy bundle (PolicyBundle) into
// dir, as `aegisd --policy dir` and `aegisctl decide --policy dir` read it.
func WritePolicy(dir string) error {
	b, err := PolicyBundle()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("conformance: policy: %w", err)
	}
	for name, content := range b.Files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("conformance: policy: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("conformance: policy: %w", err)
		}
	}
	return nil
}
