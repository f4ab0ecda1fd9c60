package ctl

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"aegis.dev/aegis/projector/stores"
)

func runSQL(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "sql", `"SELECT …" --store URL [--format table|csv|json]`)
	store := fs.String("store", "", "audit store: sqlite:PATH or clickhouse://HOST:PORT/DB (required)")
	format := fs.String("format", "table", "output: table (aligned text), csv (header row first) or json (one object per row, NDJSON)")
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
	st, err := stores.Open(ctx, *store)
	if err != nil {
		return fail(env, ExitRuntime, "sql: %v", err)
	}
	defer func() { _ = st.Close() }()
	cols, rows, err := st.Query(ctx, query)
	if err != nil {
		return fail(env, ExitFailed, "sql: %v", err)
	}
	if err := writeRows(env.Stdout, *format, cols, rows); err != nil {
		return fail(env, ExitRuntime, "sql: write: %v", err)
	}
	return ExitOK
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
	switch format {
	case "csv":
		cw := csv.NewWriter(w)
		if err := cw.Write(cols); err != nil {
			return err
		}
		rec := make([]string, len(cols))
		for _, r := range rows {
			for i, v := range r {
				rec[i] = cell(v)
			}
			if err := cw.Write(rec); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	case "json":
		for _, r := range rows {
			var b strings.Builder
			b.WriteByte('{')
			for i, v := range r {
				if i > 0 {
					b.WriteByte(',')
				}
				k, _ := json.Marshal(cols[i])
				b.Write(k)
				b.WriteByte(':')
				if t, ok := v.(time.Time); ok {
					v = t.UTC().Format(time.RFC3339)
				}
				val, err := json.Marshal(v)
				if err != nil {
					return err
				}
				b.Write(val)
			}
			b.WriteString("}\n")
			if _, err := io.WriteString(w, b.String()); err != nil {
				return err
			}
		}
		return nil
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
