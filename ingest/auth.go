package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"aegis.dev/aegis/schemas/envelope"
)

// Role is what a credential may do. docs/api.md has the full matrix.
type Role string

// Roles.
const (
	// RoleAgent publishes events and proposals and asks for decisions
	// under the server's manifests.
	RoleAgent Role = "agent"
	// RoleOperator does what an agent does, reads sessions, settles and
	// lists approvals, and may test policies with its own manifest.
	RoleOperator Role = "operator"
	// RoleAuditor reads sessions and verifies chains; it writes nothing.
	RoleAuditor Role = "auditor"
)

// Principal is an authenticated caller.
type Principal struct {
	// ID names the key (or certificate) in logs and approval records.
	ID string
	// Tenant is the only tenant the principal may read or write; empty in
	// dev mode, where any tenant goes.
	Tenant string
	Role   Role
	// Manifests, if not empty, are the only manifest references the
	// principal's events may name (KeyEntry.Manifests).
	Manifests []string
}

// AllowsManifest reports whether the principal may publish events that
// name the manifest reference ref: any when it has no Manifests list;
// otherwise ref must be one of them, or name@version of a bare name in
// it. A bound principal must name its manifest on every event: an event
// without one would be decided under whatever manifest its session was
// opened with, while the decider refuses an event that names another
// manifest than its session's (MANIFEST_MISMATCH).
func (p Principal) AllowsManifest(ref string) bool {
	if len(p.Manifests) == 0 {
		return true
	}
	if ref == "" {
		return false
	}
	name, _, _ := strings.Cut(ref, "@")
	for _, m := range p.Manifests {
		if m == ref || (!strings.Contains(m, "@") && m == name) {
			return true
		}
	}
	return false
}

// manifestError is the 403 for an event naming a manifest the principal
// may not use.
func (p Principal) manifestError(ref string) error {
	return errf(http.StatusForbidden, CodeManifestForbidden, "credentials %q may publish only events naming the manifests %s (manifest %q); a session takes its manifest from its first event",
		p.ID, strings.Join(p.Manifests, ", "), ref)
}

// can reports whether the principal's role includes any of roles.
func (p Principal) can(roles ...Role) bool {
	for _, r := range roles {
		if p.Role == r {
			return true
		}
	}
	return false
}

// KeyFile is the JSON file named by --api-keys:
//
//	{"keys": [
//	  {"id": "agent-1", "tenant": "acme", "role": "agent",
//	   "sha256": "<hex SHA-256 of the key>"},
//	  {"id": "ops", "tenant": "acme", "role": "operator", "client_cn": "ops.acme"}
//	]}
//
// Keys are stored only as SHA-256 digests (`printf %s "$KEY" | sha256sum`);
// an entry with client_cn authenticates an mTLS client certificate by its
// subject common name instead.
type KeyFile struct {
	Keys []KeyEntry `json:"keys"`
}

// KeyEntry is one credential of a KeyFile.
type KeyEntry struct {
	ID       string `json:"id"`
	Tenant   string `json:"tenant"`
	Role     Role   `json:"role"`
	SHA256   string `json:"sha256,omitempty"`
	ClientCN string `json:"client_cn,omitempty"`
	// Manifests, if set, are the manifest references the key's events
	// must name ("name" for any version of it, "name@version"; the
	// tenant's default manifest by its name): an agent key of one kind of
	// agent cannot open a session under the manifest of a more trusted
	// kind. Every event published with the key must then carry
	// "manifest".
	Manifests []string `json:"manifests,omitempty"`
}

// Keys authenticates requests. It is immutable and safe for concurrent use.
type Keys struct {
	byHash map[[sha256.Size]byte]Principal
	byCN   map[string]Principal
}

// LoadKeys reads and validates a KeyFile.
func LoadKeys(path string) (*Keys, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: api keys: %w", err)
	}
	var f KeyFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("ingest: api keys %s: %w", path, err)
	}
	return NewKeys(f.Keys)
}

// NewKeys validates entries and indexes them.
func NewKeys(entries []KeyEntry) (*Keys, error) {
	k := &Keys{byHash: make(map[[sha256.Size]byte]Principal), byCN: make(map[string]Principal)}
	ids := make(map[string]bool)
	for i, e := range entries {
		where := fmt.Sprintf("ingest: api keys: entry %d (%q)", i, e.ID)
		if e.ID == "" || ids[e.ID] {
			return nil, fmt.Errorf("%s: id must be set and unique", where)
		}
		ids[e.ID] = true
		if _, err := envelope.Decode(fmt.Appendf(nil, `{"tenant_id":%q,"session_id":"s","seq":1,"ts_unix_ms":1,"event_type":"ERROR_RAISED"}`, e.Tenant)); err != nil {
			return nil, fmt.Errorf("%s: tenant %q is not a valid tenant_id", where, e.Tenant)
		}
		switch e.Role {
		case RoleAgent, RoleOperator, RoleAuditor:
		default:
			return nil, fmt.Errorf("%s: role %q: want agent, operator or auditor", where, e.Role)
		}
		if e.Manifests != nil && len(e.Manifests) == 0 {
			// An empty list would bind the key to no manifest, yet a
			// Principal without a list may name any: refuse it rather
			// than read it as unbound.
			return nil, fmt.Errorf("%s: manifests: an empty list; omit it for a key that may name any manifest of its tenant", where)
		}
		for _, m := range e.Manifests {
			if m == "" || strings.TrimSpace(m) != m {
				return nil, fmt.Errorf("%s: manifests: %q is not a manifest reference", where, m)
			}
		}
		p := Principal{ID: e.ID, Tenant: e.Tenant, Role: e.Role, Manifests: slices.Clone(e.Manifests)}
		switch {
		case e.SHA256 != "" && e.ClientCN == "":
			b, err := hex.DecodeString(strings.ToLower(e.SHA256))
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("%s: sha256 must be 64 hex digits", where)
			}
			var h [sha256.Size]byte
			copy(h[:], b)
			if _, dup := k.byHash[h]; dup {
				return nil, fmt.Errorf("%s: the same key appears twice", where)
			}
			k.byHash[h] = p
		case e.ClientCN != "" && e.SHA256 == "":
			if _, dup := k.byCN[e.ClientCN]; dup {
				return nil, fmt.Errorf("%s: client_cn %q appears twice", where, e.ClientCN)
			}
			k.byCN[e.ClientCN] = p
		default:
			return nil, fmt.Errorf("%s: set exactly one of sha256 and client_cn", where)
		}
	}
	return k, nil
}

// HashKey returns the hex SHA-256 of an API key, as stored in a KeyFile.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// Authenticate returns the principal of r: a bearer API key
// (Authorization: Bearer KEY, or X-API-Key: KEY), else a verified client
// certificate whose common name has an entry.
func (k *Keys) Authenticate(r *http.Request) (Principal, bool) {
	key := ""
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		key = strings.TrimSpace(h[7:])
	} else if h := r.Header.Get("X-API-Key"); h != "" {
		key = h
	}
	if key != "" {
		// Keys are looked up by the digest of the presented key: lookup
		// timing depends only on that digest, never on a stored secret.
		if p, ok := k.byHash[sha256.Sum256([]byte(key))]; ok {
			return p, true
		}
		return Principal{}, false
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		if p, ok := k.byCN[r.TLS.VerifiedChains[0][0].Subject.CommonName]; ok {
			return p, true
		}
	}
	return Principal{}, false
}
