package conformance

import (
	"encoding/xml"
	"strconv"
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

// TestJUnitReport: every failed case is a testcase with a failure, every
// skipped one has skipped, the counts agree with the cases, and every
// time attribute is a number of seconds (JUnit readers parse it; the
// testsuites' was empty).
func TestJUnitReport(t *testing.T) {
	r := newReport("http://t", "run", time.Now(), 2500*time.Millisecond, []CaseResult{
		{Pack: "a", ID: "A-001", Requirement: "REQ-A", Status: StatusPass, DurationMs: 1200},
		{Pack: "a", ID: "A-002", Requirement: "REQ-A", Status: StatusFail, Message: "step 1: outcome = \"allow\", want \"deny\"", DurationMs: 300},
		{Pack: "b", ID: "B-001", Requirement: "REQ-B", Status: StatusSkip, Message: "needs kafka"},
	})
	var buf strings.Builder
	if err := r.WriteJUnit(&buf); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Skipped  int    `xml:"skipped,attr"`
		Time     string `xml:"time,attr"`
		Suites   []struct {
			Name     string `xml:"name,attr"`
			Tests    int    `xml:"tests,attr"`
			Failures int    `xml:"failures,attr"`
			Skipped  int    `xml:"skipped,attr"`
			Time     string `xml:"time,attr"`
			Cases    []struct {
				Name    string `xml:"name,attr"`
				Time    string `xml:"time,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
				} `xml:"failure"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal([]byte(buf.String()), &got); err != nil {
		t.Fatal(err)
	}
	if got.Tests != 3 || got.Failures != 1 || got.Skipped != 1 || len(got.Suites) != 2 {
		t.Fatalf("testsuites %+v", got)
	}
	seconds := func(what, s string) float64 {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Errorf("%s: time %q is not a number of seconds", what, s)
		}
		return f
	}
	seconds("testsuites", got.Time)
	for _, s := range got.Suites {
		var sum float64
		for _, c := range s.Cases {
			sum += seconds(c.Name, c.Time)
		}
		if st := seconds("testsuite "+s.Name, s.Time); st != sum {
			t.Errorf("testsuite %s: time %v, its cases' %v", s.Name, st, sum)
		}
	}
	a, b := got.Suites[0], got.Suites[1]
	if a.Tests != 2 || a.Failures != 1 || a.Cases[1].Failure == nil || !strings.Contains(a.Cases[1].Failure.Message, "want \"deny\"") || a.Cases[0].Failure != nil {
		t.Errorf("testsuite a: %+v", a)
	}
	if b.Tests != 1 || b.Skipped != 1 || b.Cases[0].Skipped == nil {
		t.Errorf("testsuite b: %+v", b)
	}
}
