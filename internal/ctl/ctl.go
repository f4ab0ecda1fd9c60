// Package ctl implements aegisctl, the operator's command line. Commands
// read and write plain JSON/NDJSON so that CI scripts can drive them; their
// names, flags, output shapes and exit codes are a stable interface
// (docs/cli.md).
package ctl

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// Exit codes shared by every command.
const (
	ExitOK      = 0 // success; for verify: everything verified
	ExitFailed  = 1 // the check failed or the input was invalid
	ExitUsage   = 2 // bad flags or arguments
	ExitRuntime = 3 // an I/O or environment error (missing file, unreadable dir)
)

// IO is the process environment a command runs in.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

type command struct {
	summary string
	run     func(ctx context.Context, env IO, args []string) int
}

func commands() map[string]command {
	return map[string]command{
		"canon":       {"JSON on stdin -> RFC 8785 canonical JSON on stdout", runCanon},
		"decide":      {"decide a request {event, snapshot, manifest} from stdin, or a whole event log (--events)", runDecide},
		"seal":        {"unsealed events NDJSON on stdin -> sealed NDJSON on stdout", runSeal},
		"verify":      {"verify a sealed NDJSON file (--file) or an audit store (--store)", runVerify},
		"sql":         {"run a SELECT against an audit store (--store) as a table, CSV or JSON", runSQL},
		"policy":      {"policy bundle tools: 'policy test DIR'", runPolicy},
		"approve":     {"settle an approval through aegisd: 'approve TOKEN --allow|--deny [--reason TEXT]'", runApprove},
		"publish":     {"publish NDJSON events from stdin to the events topic, keyed and partitioned as the pipeline requires", runPublish},
		"export":      {"write the records of a pipeline topic as NDJSON (e.g. aegis.sealed for verify --file)", runExport},
		"conformance": {"run the conformance packs against aegisd: 'conformance run [--target URL]'; write their policy bundle: 'conformance policy --out DIR'", runConformance},
		"replay":      {"replay recorded sessions: verify the chain, re-decide exactly, or what-if under a candidate policy", runReplay},
	}
}

// Main runs aegisctl with args (without the program name) and returns the
// process exit code.
func Main(ctx context.Context, env IO, args []string) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stderr, cmds)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "aegisctl: unknown command %q\n", args[0])
		usage(env.Stderr, cmds)
		return ExitUsage
	}
	return c.run(ctx, env, args[1:])
}

func usage(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: aegisctl COMMAND [flags]\n\ncommands:")
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'aegisctl COMMAND -h' for the flags of a command.")
}

// newFlags returns a FlagSet that reports errors instead of exiting.
func newFlags(env IO, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("aegisctl "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "usage: aegisctl %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// kafkaSecurity declares the --kafka-tls* and --kafka-sasl-* flags of a
// command that reaches Kafka (the same flags as aegisd's).
func kafkaSecurity(fs *flag.FlagSet) *stream.SecurityConfig {
	var c stream.SecurityConfig
	c.RegisterFlags(fs)
	return &c
}

// clusterOption loads the security flags into the option every Kafka call
// of the command passes. A nil option comes with the exit code: 2 for
// flags that cannot work together, 3 for files that cannot be read.
func clusterOption(env IO, cmd string, c *stream.SecurityConfig) (stream.Option, int) {
	if err := c.Validate(); err != nil {
		return nil, fail(env, ExitUsage, "%s: %v", cmd, err)
	}
	sec, err := c.Load()
	if err != nil {
		return nil, fail(env, ExitRuntime, "%s: %v", cmd, err)
	}
	return stream.WithSecurity(sec), ExitOK
}

// parse parses args; it returns an exit code and false when the command must
// stop.
func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK, false
		}
		return ExitUsage, false
	}
	return 0, true
}

func fail(env IO, code int, format string, args ...any) int {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(env.Stderr, "aegisctl: %s\n", strings.TrimSuffix(msg, "\n"))
	return code
}

// maxLine bounds one NDJSON line or sealed record: a sealed event of the
// largest --max-event-bytes aegisd takes (64 MiB; pipeline.SealedMaxBytes).
var maxLine = pipeline.SealedMaxBytes(64 << 20)

// readError is an input that could not be read (as opposed to one that
// was read and is invalid): an environment error, exit 3. A line longer
// than maxLine (bufio.ErrTooLong) is invalid input and stays exit 1.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// inputCode is the exit code for an error of eachLine's reader or of fn:
// ExitRuntime for input that could not be read, ExitFailed otherwise.
func inputCode(err error) int {
	var re *readError
	if errors.As(err, &re) && !errors.Is(err, bufio.ErrTooLong) {
		return ExitRuntime
	}
	return ExitFailed
}

// eachLine calls fn with every non-empty line of r and its 1-based number.
// An error reading r comes back as a *readError.
func eachLine(r io.Reader, fn func(n int, line []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return &readError{fmt.Errorf("line %d: %w", n+1, err)}
	}
	return nil
}
