package conformance

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"time"

	"aegis.dev/aegis/internal/redact"
)

// Report is the compliance report of a run (the JSON of --report).
type Report struct {
	Target     string    `json:"target"`
	RunID      string    `json:"run_id"`
	Started    time.Time `json:"started"`
	DurationMs int64     `json:"duration_ms"`
	Passed     int       `json:"passed"`
	Failed     int       `json:"failed"`
	Skipped    int       `json:"skipped"`
	// Requirements is one entry per requirement, in id order: fail if any
	// of its cases failed, skip if all were skipped, else pass.
	Requirements []RequirementResult `json:"requirements"`
	Cases        []CaseResult        `json:"cases"`
}

// RequirementResult is the verdict on one requirement and its cases.
type RequirementResult struct {
	ID     string   `json:"id"`
	Status string   `json:"status"`
	Cases  []string `json:"cases"`
}

// CaseResult is the verdict on one case with its evidence.
type CaseResult struct {
	Pack        string     `json:"pack"`
	ID          string     `json:"id"`
	Requirement string     `json:"requirement"`
	Description string     `json:"description"`
	Status      string     `json:"status"`
	Message     string     `json:"message,omitempty"`
	DurationMs  int64      `json:"duration_ms"`
	Evidence    []Evidence `json:"evidence"`
}

// Evidence is one exchange of a case: an HTTP request and its response, a
// tamper statement, or a replay.
type Evidence struct {
	Step     string `json:"step"`
	Method   string `json:"method"`
	Path     string `json:"path,omitempty"`
	Request  string `json:"request,omitempty"`
	Status   int    `json:"status,omitempty"`
	Response string `json:"response,omitempty"`
	Error    string `json:"error,omitempty"`
}

func newReport(target, runID string, start time.Time, d time.Duration, cases []CaseResult) *Report {
	r := &Report{Target: redact.URL(target), RunID: runID, Started: start.UTC(), DurationMs: d.Milliseconds(), Cases: cases}
	reqs := make(map[string]*RequirementResult)
	for _, c := range cases {
		switch c.Status {
		case StatusPass:
			r.Passed++
		case StatusFail:
			r.Failed++
		default:
			r.Skipped++
		}
		rr := reqs[c.Requirement]
		if rr == nil {
			rr = &RequirementResult{ID: c.Requirement, Status: StatusSkip}
			reqs[c.Requirement] = rr
		}
		rr.Cases = append(rr.Cases, c.ID)
		switch {
		case c.Status == StatusFail:
			rr.Status = StatusFail
		case c.Status == StatusPass && rr.Status == StatusSkip:
			rr.Status = StatusPass
		}
	}
	for _, rr := range reqs {
		r.Requirements = append(r.Requirements, *rr)
	}
	sort.Slice(r.Requirements, func(i, j int) bool { return r.Requirements[i].ID < r.Requirements[j].ID })
	return r
}

// OK reports whether no case failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("conformance: report: %w", err)
	}
	return nil
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Time     string      `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

func seconds(ms int64) string { return fmt.Sprintf("%.3f", float64(ms)/1000) }

// WriteJUnit writes the report as JUnit XML: one testsuite per pack, one
// testcase per case named "<id> <requirement>".
func (r *Report) WriteJUnit(w io.Writer) error {
	out := junitSuites{Tests: len(r.Cases), Failures: r.Failed, Skipped: r.Skipped, Time: seconds(r.DurationMs)}
	idx := make(map[string]int)
	var ms []int64 // the summed case durations of each suite
	for _, c := range r.Cases {
		i, ok := idx[c.Pack]
		if !ok {
			i = len(out.Suites)
			idx[c.Pack] = i
			out.Suites = append(out.Suites, junitSuite{Name: c.Pack})
			ms = append(ms, 0)
		}
		s := &out.Suites[i]
		jc := junitCase{Name: c.ID + " " + c.Requirement, Classname: "conformance." + c.Pack, Time: seconds(c.DurationMs)}
		s.Tests++
		ms[i] += c.DurationMs
		switch c.Status {
		case StatusFail:
			s.Failures++
			ev, _ := json.MarshalIndent(c.Evidence, "", "  ")
			jc.Failure = &junitMessage{Message: c.Message, Text: c.Description + "\n\n" + string(ev)}
		case StatusSkip:
			s.Skipped++
			jc.Skipped = &junitMessage{Message: c.Message}
		}
		s.Cases = append(s.Cases, jc)
	}
	for i := range out.Suites {
		out.Suites[i].Time = seconds(ms[i])
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return fmt.Errorf("conformance: junit: %w", err)
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("conformance: junit: %w", err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}
