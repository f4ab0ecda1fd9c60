//go:build !unix

package decider

import "time"

// processCPU cannot be read here: the benchmark reports no CPU figure.
func processCPU() time.Duration { return 0 }
