package manifest

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"aegis.dev/aegis/schemas/canon"
)

// DigestPrefix starts every manifest digest.
const DigestPrefix = "sha256:"

// Ref returns the manifest's reference, "name@version". Resolve accepts it
// and returns this manifest.
func (m *Manifest) Ref() string { return m.Name + "@" + m.Version }

// Digest identifies the manifest's content: "sha256:" followed by the 64
// lowercase hex digits of the SHA-256 of the RFC 8785 canonical JSON of the
// manifest as parsed, that is of json.Marshal(m) (see MarshalJSON). So:
//
//   - every field of types.go is present, lists as arrays (possibly []),
//     except budgets equal to 0 and empty sandbox.image,
//     integrity.tree_sha256 and integrity.signature, which are omitted;
//   - key order, whitespace and escapes in the source file do not matter,
//     nor does an absent list versus [] or null;
//   - a budget written as 0 and an absent budget give the same digest, but
//     a budget written as its default value does not: the digest is over
//     what the file says, not over the effective limits.
//
// Digest is the manifest_digest of every decision made under the manifest
// and the key of Registry.ByDigest. It returns "" only for a manifest that
// Validate rejects because a budget exceeds 2^53-1, which canonical JSON
// cannot carry; a Registry never holds such a manifest.
func (m *Manifest) Digest() string {
	d, err := m.digest()
	if err != nil {
		return ""
	}
	return d
}

func (m *Manifest) digest() (string, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("manifest digest %s: %w", m.Ref(), err)
	}
	sum, err := canon.Sum(b)
	if err != nil {
		return "", fmt.Errorf("manifest digest %s: %w", m.Ref(), err)
	}
	return DigestPrefix + hex.EncodeToString(sum[:]), nil
}

// MarshalJSON encodes m as encoding/json would, except that nil lists are
// written as [] rather than null: a manifest has one JSON form whether its
// lists were absent, null or empty in the source.
func (m Manifest) MarshalJSON() ([]byte, error) {
	type plain Manifest // no methods: avoids recursion
	p := plain(*m.normalized())
	return json.Marshal(&p)
}

// normalized returns a shallow copy of m whose nil lists are empty.
func (m *Manifest) normalized() *Manifest {
	c := *m
	orEmpty := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	c.Permissions.Tools = orEmpty(c.Permissions.Tools)
	c.Permissions.Net.Domains = orEmpty(c.Permissions.Net.Domains)
	c.Permissions.Exec.AllowedBins = orEmpty(c.Permissions.Exec.AllowedBins)
	c.Permissions.ApprovalRequired = orEmpty(c.Permissions.ApprovalRequired)
	return &c
}

// Clone returns a deep copy of m.
func (m *Manifest) Clone() *Manifest {
	c := *m
	c.Permissions.Tools = slices.Clone(m.Permissions.Tools)
	c.Permissions.Net.Domains = slices.Clone(m.Permissions.Net.Domains)
	c.Permissions.Exec.AllowedBins = slices.Clone(m.Permissions.Exec.AllowedBins)
	c.Permissions.ApprovalRequired = slices.Clone(m.Permissions.ApprovalRequired)
	return &c
}
