//go:build unix

package decider

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system) the process has used,
// all threads together, or 0 when it cannot be read.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
