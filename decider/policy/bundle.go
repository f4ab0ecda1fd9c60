// Package policy evaluates Aegis decision policies written in Rego. It is the
// only package that imports OPA.
//
// A Bundle is a set of Rego files; Default returns the embedded default
// bundle and LoadDir reads an operator's bundle from disk. New compiles a
// bundle once into an Engine, whose Eval answers one policy decision per
// event. Evaluation is deterministic: time builtins see the event's
// timestamp, and builtins whose results depend on the outside world
// (http.send, net.lookup_ip_addr, opa.runtime, random numbers, ...) are not
// available to policies, so replaying a session reproduces every decision.
//
// The policy input contract, the default rules and every reason code are
// described in docs/policy.md.
package policy

import (
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Errors returned by this package. Callers match them with errors.Is; the
// wrapped cause says what failed.
var (
	// ErrBundle: a bundle could not be read, parsed or compiled. The caller
	// must not run with it.
	ErrBundle = errors.New("policy: invalid bundle")
	// ErrEval: evaluating the policy failed (builtin error, conflicting
	// values, cancelled context, ...).
	ErrEval = errors.New("policy: evaluation failed")
	// ErrUndefined: the decision query produced no value.
	ErrUndefined = errors.New("policy: decision undefined")
	// ErrMalformed: the decision value does not have the documented shape.
	ErrMalformed = errors.New("policy: malformed decision")
	// ErrInput: the input could not be turned into a policy input.
	ErrInput = errors.New("policy: invalid input")
)

//go:embed bundle/*.rego
var defaultFS embed.FS

// Bundle is a policy bundle: Rego files keyed by their slash-separated path
// relative to the bundle root. Files whose name ends in "_test.rego" are
// unit tests: Test runs them, evaluation ignores them.
type Bundle struct {
	// Revision identifies the policy: "sha256:" followed by the hex SHA-256
	// of the policy files (not the tests) in the framing described at
	// ComputeRevision. Empty: New computes it; any other value must be
	// exactly that.
	Revision string
	Files    map[string]string
}

// Default returns the embedded default bundle (decider/policy/bundle). Each
// call returns a fresh Bundle that the caller may modify (then set its
// Revision to ComputeRevision(Files), or clear it: New refuses a Revision
// that is not that of the files).
func Default() *Bundle {
	files := make(map[string]string)
	err := fs.WalkDir(defaultFS, "bundle", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := defaultFS.ReadFile(path)
		if err != nil {
			return err
		}
		files[strings.TrimPrefix(path, "bundle/")] = string(data)
		return nil
	})
	if err != nil {
		// The embedded file system is part of the binary; failing to read
		// it is a build defect, not a runtime condition.
		panic(fmt.Sprintf("policy: read embedded bundle: %v", err))
	}
	return &Bundle{Revision: ComputeRevision(files), Files: files}
}

// LoadDir reads every *.rego file under dir (recursively) into a Bundle.
// Paths are relative to dir and slash-separated. Entries whose name starts
// with "." (.git, editor files) are skipped; other files are ignored. A directory without any
// policy file (only tests, or nothing) is an error wrapping ErrBundle.
func LoadDir(dir string) (*Bundle, error) {
	files := make(map[string]string)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".rego") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		files[filepath.ToSlash(rel)] = string(data)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: load %s: %w", ErrBundle, dir, err)
	}
	if len(policyFiles(files)) == 0 {
		return nil, fmt.Errorf("%w: load %s: no .rego policy files", ErrBundle, dir)
	}
	return &Bundle{Revision: ComputeRevision(files), Files: files}, nil
}

// ComputeRevision returns the revision of a bundle with the given files:
// "sha256:" + hex(SHA-256(F1 || F2 || ...)) where the Fi are the policy
// files (test files excluded) in ascending byte order of their paths and
// each Fi is
//
//	uint64be(len(path)) || path || uint64be(len(content)) || content
//
// Test files are excluded because they cannot change a decision.
func ComputeRevision(files map[string]string) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range policyFiles(files) {
		c := files[p]
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
		binary.BigEndian.PutUint64(n[:], uint64(len(c)))
		h.Write(n[:])
		h.Write([]byte(c))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// isTestFile reports whether path names a Rego unit-test file.
func isTestFile(path string) bool { return strings.HasSuffix(path, "_test.rego") }

// policyFiles returns the sorted paths of the non-test files.
func policyFiles(files map[string]string) []string {
	out := make([]string, 0, len(files))
	for p := range files {
		if !isTestFile(p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
