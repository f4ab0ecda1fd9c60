package conformance_test

import (
	"errors"
	"testing"

	"aegis.dev/aegis/conformance"
)

const onePack = `name: one
cases:
  - {id: ONE-001, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: deny}}}
`

// TestParseRejectsSecondDocument: a file holding a second YAML document
// (after "---") is an error, not a pack whose later cases silently never
// run.
func TestParseRejectsSecondDocument(t *testing.T) {
	for _, ok := range []string{onePack, "---\n" + onePack, onePack + "---\n", onePack + "...\n"} {
		if _, err := conformance.Parse([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	two := onePack + "---\ncases:\n  - {id: ONE-002, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: allow}}}\n"
	p, err := conformance.Parse([]byte(two))
	if !errors.Is(err, conformance.ErrPack) {
		t.Fatalf("Parse of two documents: %v, %+v", err, p)
	}
}

// TestParseRejectsEmptyTamperAndReplay: a tamper or replay step must name
// at least one statement or session (the schema's minItems); an empty one
// would otherwise pass without doing anything.
func TestParseRejectsEmptyTamperAndReplay(t *testing.T) {
	for _, step := range []string{"{tamper: []}", "{replay: []}"} {
		pack := "cases:\n  - {id: ONE-001, requirement: REQ-TAMPER-EDIT, description: d, scenario: {steps: [" + step + "]}}\n"
		if p, err := conformance.Parse([]byte(pack)); !errors.Is(err, conformance.ErrPack) {
			t.Errorf("%s: %v, %+v", step, err, p)
		}
	}
}
