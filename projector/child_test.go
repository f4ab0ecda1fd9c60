package projector_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"aegis.dev/aegis/internal/daemon"
)

// childEnv, when set, makes the test binary run aegisd with its arguments
// instead of the tests: the same code as cmd/aegisd, as a process the
// integration test can SIGKILL.
const childEnv = "AEGIS_PROJECTOR_TEST_AEGISD"

func runChild(args []string) int {
	cfg, err := daemon.Load(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "aegisd: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := daemon.New(cfg, log).Run(ctx); err != nil {
		log.Error("aegisd stopped", "err", err)
		return 1
	}
	return 0
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
