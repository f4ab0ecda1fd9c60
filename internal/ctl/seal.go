package ctl

import (
	"bufio"
	"context"
	"fmt"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

func runSeal(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "seal", "[--decide [--manifest FILE | --manifests DIR] [--policy DIR]] < events.ndjson > sealed.ndjson")
	var pf policyFlags
	pf.register(fs)
	decide := fs.Bool("decide", false, "run the decider on each event first (as the pipeline does), recording decisions on proposals")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return fail(env, ExitUsage, "seal: unexpected argument %q", fs.Arg(0))
	}
	if err := pf.validate(); err != nil {
		return fail(env, ExitUsage, "seal: %v", err)
	}
	if !*decide && (pf.policyDir != "" || pf.manifestDir != "" || pf.manifestFile != "") {
		return fail(env, ExitUsage, "seal: --policy, --manifests and --manifest apply to --decide")
	}
	var eng *decider.Engine
	if *decide {
		var err error
		if eng, err = pf.engine(); err != nil {
			return fail(env, ExitRuntime, "seal: %v", err)
		}
	}
	type key struct{ tenant, session string }
	heads := make(map[key]*chain.Head)
	snaps := make(map[key]*session.Snapshot)
	w := bufio.NewWriterSize(env.Stdout, 64<<10)
	dec := envelope.Decoder{Sealed: !*decide}
	var buf []byte
	var writeErr error // the output failed, as opposed to a bad line
	err := eachLine(env.Stdin, func(n int, line []byte) error {
		ev, err := dec.Decode(line)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		k := key{ev.TenantID, ev.SessionID}
		if eng != nil {
			snap := snaps[k]
			if snap == nil {
				snap = session.New(ev.TenantID, ev.SessionID)
				snaps[k] = snap
			}
			if err := eng.Step(ctx, snap, ev); err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
		}
		head, err := chain.Link(heads[k], ev)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		heads[k] = &head
		if buf, err = ev.AppendCanonical(buf[:0], true); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		buf = append(buf, '\n')
		_, writeErr = w.Write(buf)
		return writeErr
	})
	if writeErr != nil {
		return fail(env, ExitRuntime, "seal: write: %v", writeErr)
	}
	if err != nil {
		return fail(env, inputCode(err), "seal: %v", err)
	}
	if err := w.Flush(); err != nil {
		return fail(env, ExitRuntime, "seal: write: %v", err)
	}
	return ExitOK
}
