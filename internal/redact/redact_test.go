package redact

import (
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for raw, want := range map[string]string{
		"clickhouse://aegis:S3cretPW@ch.example:9000/audit":  "clickhouse://aegis:REDACTED@ch.example:9000/audit",
		"clickhouse://aegis:S3cretPW@ch.example:9000":        "clickhouse://aegis:REDACTED@ch.example:9000",
		"clickhouse://aegis:S3cretPW%@ch.example:9000/audit": "clickhouse:(unparsable URL, not shown)",
		"https://bob:50%off@mcp.example/mcp":                 "https:(unparsable URL, not shown)",
		"https://mcp.example/mcp?api_key=TOKEN123#frag":      "https://mcp.example/mcp",
		"http://user@host/x":                                 "http://user@host/x",
		"sqlite:/var/lib/aegis/audit.db":                     "sqlite:/var/lib/aegis/audit.db",
	} {
		got := URL(raw)
		if got != want {
			t.Errorf("URL(%q) = %q, want %q", raw, got, want)
		}
		for _, secret := range []string{"S3cretPW", "50%off", "TOKEN123"} {
			if strings.Contains(got, secret) {
				t.Errorf("URL(%q) shows %s", raw, secret)
			}
		}
	}
}
