package ctl

import (
	"context"
	"errors"
	iofs "io/fs"

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
		// A directory or file that cannot be read is an environment
		// error; a bundle that does not compile fails the check.
		var pathErr *iofs.PathError
		if errors.As(err, &pathErr) {
			return fail(env, ExitRuntime, "policy test: %v", err)
		}
		return fail(env, ExitFailed, "policy test: %v", err)
	}
	if failed > 0 || passed == 0 {
		return fail(env, ExitFailed, "policy test: %d passed, %d failed", passed, failed)
	}
	return ExitOK
}
