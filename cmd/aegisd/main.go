// Command aegisd runs Aegis stages: all of them with an embedded Kafka
// broker by default, or any set of them against real brokers. See
// docs/pipeline.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"aegis.dev/aegis/internal/daemon"
)

func main() {
	// Policies may name the time zone "Local" (time.clock, time.date,
	// time.format, ...): pinning it to UTC makes a decision independent
	// of the host's TZ, so a replay elsewhere decides alike.
	time.Local = time.UTC
	cfg, err := daemon.Load(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "aegisd: %v\n", err)
		os.Exit(2)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := daemon.New(cfg, log).Run(ctx); err != nil {
		log.Error("aegisd stopped", "err", err)
		os.Exit(1)
	}
	log.Info("aegisd stopped")
}
