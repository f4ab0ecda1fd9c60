package ctl

import (
	"context"
	"io"

	"aegis.dev/aegis/schemas/canon"
)

// maxCanonInput bounds what `aegisctl canon` reads from stdin.
const maxCanonInput = 64 << 20

func runCanon(_ context.Context, env IO, args []string) int {
	fs := newFlags(env, "canon", "< input.json > canonical.json")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return fail(env, ExitUsage, "canon: unexpected argument %q", fs.Arg(0))
	}
	in, err := io.ReadAll(io.LimitReader(env.Stdin, maxCanonInput+1))
	if err != nil {
		return fail(env, ExitRuntime, "read stdin: %v", err)
	}
	if len(in) > maxCanonInput {
		return fail(env, ExitFailed, "input is larger than %d bytes", maxCanonInput)
	}
	out, err := canon.Append(nil, in)
	if err != nil {
		return fail(env, ExitFailed, "invalid input: %v", err)
	}
	if _, err := env.Stdout.Write(out); err != nil {
		return fail(env, ExitRuntime, "write: %v", err)
	}
	return ExitOK
}
