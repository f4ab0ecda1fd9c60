package conformance

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Credentials returns an aegisd --api-keys file with one operator key per
// tenant the packs act as (Tenants), and the keys by tenant for
// Options.Keys. The keys are random; the file holds only their SHA-256.
func Credentials(packs []*Pack) ([]byte, map[string]string, error) {
	type entry struct {
		ID     string `json:"id"`
		Tenant string `json:"tenant"`
		Role   string `json:"role"`
		SHA256 string `json:"sha256"`
	}
	var file struct {
		Keys []entry `json:"keys"`
	}
	keys := make(map[string]string)
	for _, t := range Tenants(packs) {
		var b [24]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, nil, fmt.Errorf("conformance: credentials: %w", err)
		}
		k := "conf-" + hex.EncodeToString(b[:])
		sum := sha256.Sum256([]byte(k))
		keys[t] = k
		file.Keys = append(file.Keys, entry{ID: "conformance-" + t, Tenant: t, Role: "operator", SHA256: hex.EncodeToString(sum[:])})
	}
	b, err := json.MarshalIndent(file, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("conformance: credentials: %w", err)
	}
	return b, keys, nil
}
