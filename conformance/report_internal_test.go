package conformance

import (
	"strings"
	"testing"
	"time"
)

// TestReportRedactsTheTarget: a target URL with credentials in it (basic
// auth in front of aegisd) must not put its password in the report.
func TestReportRedactsTheTarget(t *testing.T) {
	r := newReport("https://ops:s3cret@aegis.internal:8080", "run", time.Now(), 0, nil)
	if strings.Contains(r.Target, "s3cret") || !strings.Contains(r.Target, "aegis.internal:8080") {
		t.Fatalf("report target %q", r.Target)
	}
}
