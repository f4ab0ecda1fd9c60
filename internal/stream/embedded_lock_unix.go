//go:build unix

package stream

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDataDir takes an exclusive lock on the data dir for as long as the
// returned file stays open, so that a second broker cannot run on it.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("stream: embedded: data dir: %w: %w", ErrConfig, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("stream: embedded: data dir: %w: %w", ErrConfig, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("stream: embedded: data dir %s is in use by another broker (%s is locked): %w", dir, lockFile, ErrConfig)
		}
		return nil, fmt.Errorf("stream: embedded: lock data dir %s: %w: %w", dir, ErrConfig, err)
	}
	return f, nil
}
