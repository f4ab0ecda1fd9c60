// Command aegis-loadtest simulates a fleet of agents publishing to Aegis and
// reports throughput, latency and whether every event was sealed exactly
// once (docs/benchmarks.md, "Load test"). It is a thin main over
// aegis.dev/aegis/loadtest.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"aegis.dev/aegis/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := loadtest.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
