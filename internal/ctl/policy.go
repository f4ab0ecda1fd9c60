package ctl

import (
	"context"

	"aegis.dev/aegis/decider/policy"
)

func runPolicy(ctx context.Context, env IO, args []string) int {
	if len(args) == 0 || args[0] != "test" {
		return fail(env, ExitUsage, "policy: usage: aegisctl policy test DIR")
	}
	fs := newFlags(env, "policy test", "DIR")
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return ExitUsage
	}
	passed, failed, err := policy.Test(ctx, fs.Arg(0), env.Stdout)
	if err != nil {
		return fail(env, ExitFailed, "policy test: %v", err)
	}
	if failed > 0 || passed == 0 {
		return fail(env, ExitFailed, "policy test: %d passed, %d failed", passed, failed)
	}
	return ExitOK
}
