package grant

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"aegis.dev/aegis/schemas/envelope"
)

var secret = bytes.Repeat([]byte("k"), 32)

// digest is the call digest of send_email with {"to":"k@example.com"}.
const digest = "93b58ff102e9503d13043030bd79ebe629bcfb4e4721b1585f6aecab26fb3606"

const payload = `{"call_id":"c1","decision":"deny","approver":"ops","tool_name":"send_email","args_digest":"` + digest + `"}`

func TestSignVerify(t *testing.T) {
	signed, err := Sign(secret, "acme", "s1", []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(secret, "acme", "s1", signed); err != nil {
		t.Fatalf("own grant: %v", err)
	}
	// The signed payload decodes as an APPROVAL_DECIDED: the grant has
	// the decoder's shape.
	ev := `{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":` + string(signed) + `}`
	dec, err := envelope.Decode([]byte(ev))
	if err != nil {
		t.Fatalf("decode signed event: %v", err)
	}
	if err := VerifyEvent(secret, dec); err != nil {
		t.Fatalf("decoded event: %v", err)
	}
	// Key order and a grant already present do not matter.
	again, err := Sign(secret, "acme", "s1", []byte(`{"grant":"x","tool_name":"send_email","args_digest":"`+digest+`","approver":"ops","decision":"deny","call_id":"c1"}`))
	if err != nil || !bytes.Equal(again, signed) {
		t.Fatalf("re-sign: %s %v, want %s", again, err, signed)
	}
	g, err := Compute(secret, "acme", "s1", []byte(payload))
	if err != nil || !strings.Contains(string(signed), `"grant":"`+g+`"`) {
		t.Fatalf("Compute %q %v, signed %s", g, err, signed)
	}

	cases := []struct {
		name, tenant, session string
		secret                []byte
		payload               string
		want                  error
	}{
		{"no grant", "acme", "s1", secret, payload, ErrMissing},
		{"null grant", "acme", "s1", secret, strings.Replace(string(signed), `"grant":"`+g+`"`, `"grant":null`, 1), ErrMissing},
		{"other secret", "acme", "s1", bytes.Repeat([]byte("x"), 32), string(signed), ErrInvalid},
		{"other session", "acme", "s2", secret, string(signed), ErrInvalid},
		{"other tenant", "globex", "s1", secret, string(signed), ErrInvalid},
		{"deny made allow", "acme", "s1", secret, strings.Replace(string(signed), `"deny"`, `"allow"`, 1), ErrInvalid},
		{"other call", "acme", "s1", secret, strings.Replace(string(signed), `"c1"`, `"c2"`, 1), ErrInvalid},
		{"member added", "acme", "s1", secret, strings.Replace(string(signed), `{`, `{"extra":1,`, 1), ErrInvalid},
		{"member removed", "acme", "s1", secret, strings.Replace(string(signed), `"approver":"ops",`, ``, 1), ErrInvalid},
		{"not base64", "acme", "s1", secret, strings.Replace(string(signed), g, strings.Repeat("!", 43), 1), ErrInvalid},
		{"not a string", "acme", "s1", secret, strings.Replace(string(signed), `"`+g+`"`, `7`, 1), ErrInvalid},
	}
	// A decision that does not name the exact call is refused whatever
	// its grant: one the secret's MAC covers (Compute signs anything)
	// would otherwise settle whatever is pending under the call_id.
	for name, p := range map[string]string{
		"no tool_name":             `{"call_id":"c1","decision":"allow","args_digest":"` + digest + `"}`,
		"no args_digest":           `{"call_id":"c1","decision":"allow","tool_name":"send_email"}`,
		"empty tool_name":          `{"call_id":"c1","decision":"allow","tool_name":"","args_digest":"` + digest + `"}`,
		"args_digest not a digest": `{"call_id":"c1","decision":"allow","tool_name":"send_email","args_digest":"abc"}`,
		"args_digest upper case":   `{"call_id":"c1","decision":"allow","tool_name":"send_email","args_digest":"` + strings.ToUpper(digest) + `"}`,
		"no call_id":               `{"decision":"allow","tool_name":"send_email","args_digest":"` + digest + `"}`,
	} {
		if _, err := Sign(secret, "acme", "s1", []byte(p)); !errors.Is(err, ErrUnbound) {
			t.Errorf("Sign %s: %v, want ErrUnbound", name, err)
		}
		mac, err := Compute(secret, "acme", "s1", []byte(p))
		if err != nil {
			t.Fatal(err)
		}
		withGrant := strings.Replace(p, `{`, `{"grant":"`+mac+`",`, 1)
		if err := Verify(secret, "acme", "s1", []byte(withGrant)); !errors.Is(err, ErrUnbound) {
			t.Errorf("Verify %s: %v, want ErrUnbound", name, err)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := Verify(tc.secret, tc.tenant, tc.session, []byte(tc.payload)); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestGrantVector pins the MAC input (docs/envelope.md#approval-grants),
// computed independently of this package.
func TestGrantVector(t *testing.T) {
	g, err := Compute([]byte("0123456789abcdef0123456789abcdef"), "t", "s", []byte(`{"tool_name":"send_email","decision":"allow","call_id":"c","args_digest":"`+digest+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	// HMAC-SHA256 over
	// {"domain":"aegis.approval-grant.v1","payload":{"args_digest":"93b5…3606","call_id":"c","decision":"allow","tool_name":"send_email"},"session_id":"s","tenant_id":"t"}
	if want := "3K38sgk97jFOZq7y1qsbbBjphjV0C6pkGGIPeDJD5w4"; g != want {
		t.Fatalf("grant %s, want %s", g, want)
	}
}
