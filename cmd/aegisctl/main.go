// Command aegisctl is the Aegis operator's command line. See docs/cli.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"aegis.dev/aegis/internal/ctl"
)

func main() {
	// Policies may name the time zone "Local" (time.clock, time.date,
	// time.format, ...): pinning it to UTC makes a decision independent
	// of the host's TZ, so a replay elsewhere decides alike.
	time.Local = time.UTC
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, ctl.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}
