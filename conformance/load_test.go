package conformance_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/conformance"
)

// TestLoadNamesTheDirectory: `aegisctl conformance run --packs DIR` with a
// DIR that is missing or holds no pack says which directory it read, not
// ".".
func TestLoadNamesTheDirectory(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir")
	for _, dir := range []string{missing, t.TempDir()} {
		_, err := conformance.Load(dir)
		if !errors.Is(err, conformance.ErrPack) || !strings.Contains(err.Error(), dir) {
			t.Errorf("Load(%s): %v, want an ErrPack naming the directory", dir, err)
		}
	}
}
