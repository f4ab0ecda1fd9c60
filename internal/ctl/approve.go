package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// runApprove is `aegisctl approve TOKEN --allow|--deny [--reason TEXT]`: it
// settles an approval through the gateway's POST /v1/approvals/{token},
// which records the approver (the API key's id) in the APPROVAL_DECIDED
// event it publishes. The API key is read from --api-key-file or the
// AEGIS_API_KEY environment variable (none in --dev servers).
func runApprove(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "approve", "TOKEN --allow|--deny [--reason TEXT] [--server URL] [--api-key-file FILE]")
	allow := fs.Bool("allow", false, "approve the call")
	deny := fs.Bool("deny", false, "deny the call")
	reason := fs.String("reason", "", "reason recorded with the decision")
	server := fs.String("server", "http://127.0.0.1:8080", "base URL of aegisd's HTTP API")
	keyFile := fs.String("api-key-file", "", "file holding the operator's API key (default: $AEGIS_API_KEY)")
	// The token may come before the flags, as in the synopsis.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		args = append(append([]string(nil), args[1:]...), args[0])
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 || *allow == *deny {
		fs.Usage()
		return ExitUsage
	}
	key := os.Getenv("AEGIS_API_KEY")
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fail(env, ExitRuntime, "approve: %v", err)
		}
		key = strings.TrimSpace(string(b))
	}
	decision := "deny"
	if *allow {
		decision = "allow"
	}
	body, _ := json.Marshal(map[string]string{"decision": decision, "reason": *reason})
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(*server, "/")+"/v1/approvals/"+url.PathEscape(fs.Arg(0)), bytes.NewReader(body))
	if err != nil {
		return fail(env, ExitUsage, "approve: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fail(env, ExitRuntime, "approve: %v", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fail(env, ExitRuntime, "approve: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(out, &e) == nil && e.Error.Code != "" {
			return fail(env, ExitFailed, "approve: %s: %s", e.Error.Code, e.Error.Message)
		}
		return fail(env, ExitFailed, "approve: HTTP %d", resp.StatusCode)
	}
	fmt.Fprintf(env.Stdout, "%s\n", bytes.TrimSpace(out))
	return ExitOK
}
