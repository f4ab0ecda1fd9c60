package ctl

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
)

func runSQL(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "sql", `"SELECT …" --store URL [--format table|csv|json] [--timeout DURATION]`)
	store := fs.String("store", "", "audit store: sqlite:PATH or clickhouse://HOST:PORT/DB (required)")
	format := fs.String("format", "table", "output: table (aligned text), csv (header row first) or json (one object per row, NDJSON)")
	timeout := fs.Duration("timeout", 0, "cancel the query after this long (0: no limit)")
	// The query may come before or after the flags.
	var query string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		query, args = args[0], args[1:]
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if query == "" && fs.NArg() == 1 {
		query = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fail(env, ExitUsage, "sql: one query expected, got extra arguments %q", fs.Args())
	}
	if query == "" || *store == "" {
		fs.Usage()
		return ExitUsage
	}
	if *format != "table" && *format != "csv" && *format != "json" {
		return fail(env, ExitUsage, "sql: --format %q: want table, csv or json", *format)
	}
	if *timeout < 0 {
		return fail(env, ExitUsage, "sql: --timeout %v: must not be negative", *timeout)
	}
	// Only an existing store: a mistyped path or database must not become
	// a new, empty store that every query finds empty.
	st, err := stores.OpenExisting(ctx, *store)
	if err != nil {
		return fail(env, ExitRuntime, "sql: %v", err)
	}
	defer func() { _ = st.Close() }()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	if rs, ok := st.(projector.RowStreamer); ok && *format != "table" {
		// csv and json rows are written as they arrive: a large result
		// is never held whole (the aligned table needs every row first).
		var w *rowWriter
		var writeErr error
		err := rs.QueryEach(ctx, query, func(cols []string, row []any) error {
			if w == nil {
				if err := distinctColumns(*format, cols); err != nil {
					return err
				}
				if w, writeErr = newRowWriter(env.Stdout, *format, cols); writeErr != nil {
					return writeErr
				}
			}
			if row != nil {
				if writeErr = w.row(row); writeErr != nil {
					return writeErr
				}
			}
			return nil
		})
		if writeErr != nil {
			return fail(env, ExitRuntime, "sql: write: %v", writeErr)
		}
		if err != nil {
			return fail(env, ExitFailed, "sql: %v", err)
		}
		if w != nil {
			if err := w.flush(); err != nil {
				return fail(env, ExitRuntime, "sql: write: %v", err)
			}
		}
		return ExitOK
	}
	cols, rows, err := st.Query(ctx, query)
	if err == nil {
		err = distinctColumns(*format, cols)
	}
	if err != nil {
		return fail(env, ExitFailed, "sql: %v", err)
	}
	if err := writeRows(env.Stdout, *format, cols, rows); err != nil {
		return fail(env, ExitRuntime, "sql: write: %v", err)
	}
	return ExitOK
}

// distinctColumns refuses a json result with two columns of one name: an
// object with a repeated key is read differently by different parsers
// (most keep the last value, silently).
func distinctColumns(format string, cols []string) error {
	if format != "json" {
		return nil
	}
	seen := make(map[string]bool, len(cols))
	for _, c := range cols {
		if seen[c] {
			return fmt.Errorf("--format json: two columns are named %q; give one another name with AS", c)
		}
		seen[c] = true
	}
	return nil
}

// rowWriter writes csv or json rows one at a time (see writeRows).
type rowWriter struct {
	format string
	cols   []string
	w      io.Writer
	cw     *csv.Writer
	rec    []string
}

func newRowWriter(w io.Writer, format string, cols []string) (*rowWriter, error) {
	r := &rowWriter{format: format, cols: cols, w: w, rec: make([]string, len(cols))}
	if format == "csv" {
		r.cw = csv.NewWriter(w)
		if err := r.cw.Write(cols); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *rowWriter) row(vals []any) error {
	if r.cw != nil {
		for i, v := range vals {
			r.rec[i] = cell(v)
		}
		return r.cw.Write(r.rec)
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(r.cols[i])
		b.Write(k)
		b.WriteByte(':')
		val, err := json.Marshal(jsonValue(v))
		if err != nil {
			return err
		}
		b.Write(val)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(r.w, b.String())
	return err
}

// jsonValue is v as the json format writes it: times as RFC 3339 text, an
// infinite or NaN real (no JSON number) as the text the table prints, the
// elements of an array likewise.
func jsonValue(v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return cell(x)
		}
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonValue(e)
		}
		return out
	}
	return v
}

func (r *rowWriter) flush() error {
	if r.cw != nil {
		r.cw.Flush()
		return r.cw.Error()
	}
	return nil
}

// cell formats one value for table and CSV output.
func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	}
	return fmt.Sprint(v)
}

// writeRows prints a result: table is aligned columns with a header, csv is
// RFC 4180 with a header, json is one object per row keyed by column name
// (NDJSON) with numbers as JSON numbers.
func writeRows(w io.Writer, format string, cols []string, rows [][]any) error {
	if format != "table" {
		rw, err := newRowWriter(w, format, cols)
		if err != nil {
			return err
		}
		for _, r := range rows {
			if err := rw.row(r); err != nil {
				return err
			}
		}
		return rw.flush()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	for _, r := range rows {
		vals := make([]string, len(r))
		for i, v := range r {
			vals[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cell(v))
		}
		fmt.Fprintln(tw, strings.Join(vals, "\t"))
	}
	fmt.Fprintf(tw, "(%d rows)\n", len(rows))
	return tw.Flush()
}
