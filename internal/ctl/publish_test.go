package ctl

import (
	"bytes"
	"testing"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/schemas/envelope"
)

// TestPublishSignsApprovals: with --approval-secret-file, publish sets
// the grant of each APPROVAL_DECIDED (replacing one it carries) and
// leaves other events as they are.
func TestPublishSignsApprovals(t *testing.T) {
	secret := bytes.Repeat([]byte("p"), 32)
	line := []byte(`{"tenant_id":"acme","session_id":"s1","seq":2,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c1","decision":"allow","grant":"` + string(bytes.Repeat([]byte("A"), 43)) + `"}}`)
	out, err := signApproval(secret, line)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := envelope.Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := grant.VerifyEvent(secret, ev); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	other := []byte(`{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":5,"event_type":"MODEL_CALL_STARTED"}`)
	if got, err := signApproval(secret, other); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("other event: %s %v", got, err)
	}
}
