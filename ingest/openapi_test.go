package ingest

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestOpenAPIDocumentsEveryRoute guards schemas/openapi.yaml against
// drifting from the routes the server registers.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../schemas/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	paths := map[string]string{} // path -> its block
	re := regexp.MustCompile(`(?m)^  (/\S*):\n`)
	locs := re.FindAllStringSubmatchIndex(doc, -1)
	for i, l := range locs {
		end := len(doc)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		paths[doc[l[2]:l[3]]] = doc[l[1]:end]
	}
	s := &Server{}
	for _, rt := range s.routes() {
		block, ok := paths[rt.path]
		if !ok || !strings.Contains(block, "    "+strings.ToLower(rt.method)+":") {
			t.Errorf("%s %s is not in schemas/openapi.yaml", rt.method, rt.path)
		}
		delete(paths, rt.path)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		delete(paths, p)
	}
	for p := range paths {
		t.Errorf("schemas/openapi.yaml documents %s, which the server does not serve", p)
	}
}
