// Command aegisctl is the Aegis operator's command line. See docs/cli.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"aegis.dev/aegis/internal/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, ctl.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}
