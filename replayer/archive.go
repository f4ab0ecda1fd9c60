package replayer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/manifest"
)

// ErrMissingRevision reports that a policy revision or manifest digest a
// decision was made under is not in the archive. Exact replay never falls
// back to another revision: the caller must supply the archive that holds it.
var ErrMissingRevision = errors.New("replay_missing_revision")

// ErrArchive reports an archive entry that cannot be read or does not hash
// to the digest it is stored under (a damaged or edited archive).
var ErrArchive = errors.New("replay_archive")

// Archive is a content-addressed directory of the policy bundles and
// manifests decisions were made under, so that a replay can load the exact
// revision a recorded decision names:
//
//	DIR/policies/<hex>/<path>.rego   a bundle, <hex> its revision without "sha256:"
//	DIR/manifests/<hex>.json         a manifest, <hex> its digest without "sha256:"
//
// Entries are written once and never changed (a revision names its content).
// aegisd writes the active bundle and every registry manifest at start
// (--archive). Reads verify that the content hashes to its name.
type Archive struct {
	Dir string
}

// hexOf returns the hex part of a "sha256:<hex>" digest, or "" when d is not
// such a digest (so it can never name a path outside the archive).
func hexOf(d string) string {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || !chain.IsHash(h) {
		return ""
	}
	return h
}

// PutBundle stores b under its revision; an existing entry is kept. A
// Revision that is not that of b.Files is refused: it would name content
// that decides otherwise.
func (a *Archive) PutBundle(b *policy.Bundle) error {
	h := hexOf(b.Revision)
	if h == "" {
		return fmt.Errorf("%w: bundle revision %q is not a sha256 digest", ErrArchive, b.Revision)
	}
	if got := policy.ComputeRevision(b.Files); got != b.Revision {
		return fmt.Errorf("%w: bundle revision %s is not that of its files (%s)", ErrArchive, b.Revision, got)
	}
	dst := filepath.Join(a.Dir, "policies", h)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(a.Dir, "policies"), 0o755); err != nil {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	tmp, err := os.MkdirTemp(filepath.Join(a.Dir, "policies"), ".tmp-")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	for name, content := range b.Files {
		p := filepath.Join(tmp, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("%w: %w", ErrArchive, err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("%w: %w", ErrArchive, err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil && !exists(dst) {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	return nil
}

// PutManifest stores m under its digest; an existing entry is kept.
func (a *Archive) PutManifest(m *manifest.Manifest) error {
	h := hexOf(m.Digest())
	if h == "" {
		return fmt.Errorf("%w: manifest %s has no digest", ErrArchive, m.Ref())
	}
	dir := filepath.Join(a.Dir, "manifests")
	dst := filepath.Join(dir, h+".json")
	if exists(dst) {
		return nil
	}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("%w: manifest %s: %w", ErrArchive, m.Ref(), err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	defer func() { _ = os.Remove(f.Name()) }()
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("%w: %w", ErrArchive, err)
	}
	return nil
}

// PutRegistry stores every manifest of every tenant of reg.
func (a *Archive) PutRegistry(reg *manifest.Registry) error {
	for _, t := range reg.Tenants() {
		for _, m := range reg.Manifests(t) {
			if err := a.PutManifest(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// Bundle loads the bundle of a revision. It fails with ErrMissingRevision
// when the archive does not hold it and ErrArchive when the stored files do
// not hash to the revision.
func (a *Archive) Bundle(revision string) (*policy.Bundle, error) {
	h := hexOf(revision)
	if h == "" {
		return nil, fmt.Errorf("%w: policy revision %q is not a sha256 digest", ErrMissingRevision, revision)
	}
	dir := filepath.Join(a.Dir, "policies", h)
	if !exists(dir) {
		return nil, fmt.Errorf("%w: policy revision %s not in archive %s", ErrMissingRevision, revision, a.Dir)
	}
	b, err := policy.LoadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrArchive, err)
	}
	if b.Revision != revision {
		return nil, fmt.Errorf("%w: %s holds revision %s", ErrArchive, dir, b.Revision)
	}
	return b, nil
}

// Manifest loads the manifest of a digest, with the same errors as Bundle.
func (a *Archive) Manifest(digest string) (*manifest.Manifest, error) {
	h := hexOf(digest)
	if h == "" {
		return nil, fmt.Errorf("%w: manifest digest %q is not a sha256 digest", ErrMissingRevision, digest)
	}
	p := filepath.Join(a.Dir, "manifests", h+".json")
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: manifest %s not in archive %s", ErrMissingRevision, digest, a.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrArchive, err)
	}
	m, err := manifest.ParseRecorded(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrArchive, p, err)
	}
	if m.Digest() != digest {
		return nil, fmt.Errorf("%w: %s holds manifest digest %s", ErrArchive, p, m.Digest())
	}
	return m, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
