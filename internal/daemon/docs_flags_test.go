package daemon

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/loadtest"
)

// externalFlags are flags the docs give to other programs: Kafka's
// kafka-acls.sh and TopicCommand, clickhouse-client, an example MCP server.
var externalFlags = map[string]bool{
	"add": true, "allow-principal": true, "bootstrap-server": true, "command-config": true, "create": true,
	"group": true, "list": true, "operation": true, "query": true, "replication-factor": true,
	"resource-pattern-type": true, "stdio": true, "transactional-id": true,
}

// TestDocsNameOnlyExistingFlags: every --flag the docs name is a flag of
// aegisd, of an aegisctl command or of aegis-loadtest (or of one of the
// external programs the docs show), so that a renamed or removed flag
// cannot stay documented. Flags are a contract scripts rely on.
func TestDocsNameOnlyExistingFlags(t *testing.T) {
	known := map[string]bool{"config": true, "h": true, "help": true}
	fs := flag.NewFlagSet("aegisd", flag.ContinueOnError)
	cfg := Defaults()
	cfg.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) { known[f.Name] = true })

	usageFlag := regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)
	collect := func(out string) {
		for _, m := range usageFlag.FindAllStringSubmatch(out, -1) {
			known[m[1]] = true
		}
	}
	var help bytes.Buffer
	ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &help}, []string{"help"})
	commands := regexp.MustCompile(`(?m)^  ([a-z]+) `).FindAllStringSubmatch(help.String(), -1)
	if len(commands) < 10 {
		t.Fatalf("aegisctl help lists %d commands:\n%s", len(commands), help.String())
	}
	for _, c := range commands {
		for _, args := range [][]string{{c[1], "-h"}, {c[1], "run", "-h"}, {c[1], "policy", "-h"}, {c[1], "test", "-h"}} {
			var out bytes.Buffer
			ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out}, args)
			collect(out.String())
		}
	}
	var lt bytes.Buffer
	loadtest.Main(context.Background(), []string{"-h"}, &lt, &lt)
	collect(lt.String())

	root := filepath.Join("..", "..")
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"), filepath.Join(root, "deploy", "README.md"))
	docFlag := regexp.MustCompile(`(?:^|[^A-Za-z0-9_-])--([a-z][a-z0-9-]*)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range docFlag.FindAllStringSubmatch(line, -1) {
				name := m[1]
				if strings.HasSuffix(name, "-") || known[name] || externalFlags[name] {
					continue // "--kafka-tls-*" names a family
				}
				t.Errorf("%s:%d names --%s, which no Aegis program has", f, i+1, name)
			}
		}
	}
}
