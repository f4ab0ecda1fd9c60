package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// VerifyReport is what `aegisctl verify --json` prints.
type VerifyReport struct {
	OK       bool            `json:"ok"`
	Events   int64           `json:"events"`
	Sessions int             `json:"sessions"`
	Failures []chain.Failure `json:"failures"`
}

func runVerify(_ context.Context, env IO, args []string) int {
	fs := newFlags(env, "verify", "--file FILE [--heads FILE] [--json]")
	file := fs.String("file", "", "sealed NDJSON to verify (required)")
	headsFile := fs.String("heads", "", "NDJSON of expected chain heads {tenant_id, session_id, seq, hash}: detects truncated or missing sessions")
	asJSON := fs.Bool("json", false, "print a JSON report instead of text")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *file == "" {
		fs.Usage()
		return ExitUsage
	}
	f, err := os.Open(*file)
	if err != nil {
		return fail(env, ExitRuntime, "verify: %v", err)
	}
	defer f.Close()
	v := chain.NewVerifier()
	dec := envelope.Decoder{Sealed: true, MaxBytes: maxLine}
	var malformed []chain.Failure
	err = eachLine(f, func(n int, line []byte) error {
		ev, err := dec.Decode(line)
		if err != nil {
			malformed = append(malformed, chain.Failure{Reason: chain.ReasonMalformed, Detail: fmt.Sprintf("line %d: %v", n, err)})
			return nil
		}
		_ = v.Add(ev) // failures are collected by the verifier
		return nil
	})
	if err != nil {
		return fail(env, ExitRuntime, "verify: %s: %v", *file, err)
	}
	if *headsFile != "" {
		heads, err := readHeads(*headsFile)
		if err != nil {
			return fail(env, ExitRuntime, "verify: %v", err)
		}
		v.CheckHeads(heads)
	}
	failures := append(malformed, v.Failures()...)
	rep := VerifyReport{OK: len(failures) == 0, Events: v.Events(), Sessions: len(v.Heads()), Failures: failures}
	if rep.Failures == nil {
		rep.Failures = []chain.Failure{}
	}
	if *asJSON {
		if code := writeJSON(env, rep); code != ExitOK {
			return code
		}
	} else if rep.OK {
		fmt.Fprintf(env.Stdout, "OK: %d events in %d sessions verified\n", rep.Events, rep.Sessions)
	} else {
		for _, f := range failures {
			fmt.Fprintf(env.Stderr, "FAIL %s/%s seq %d: %s: %s\n", f.TenantID, f.SessionID, f.Seq, f.Reason, f.Detail)
		}
		fmt.Fprintf(env.Stderr, "verification failed: %d session(s) bad, %d events read\n", len(failures), rep.Events)
	}
	if !rep.OK {
		return ExitFailed
	}
	return ExitOK
}

func readHeads(path string) ([]chain.Head, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var heads []chain.Head
	err = eachLine(f, func(n int, line []byte) error {
		var h chain.Head
		if err := json.Unmarshal(line, &h); err != nil {
			return fmt.Errorf("%s line %d: %w", path, n, err)
		}
		heads = append(heads, h)
		return nil
	})
	return heads, err
}
