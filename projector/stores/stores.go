// Package stores opens an audit store from its URL, so that programs
// (aegisd, aegisctl) choose a backend by configuration:
//
//	sqlite:PATH                   embedded SQLite file (projector/sqlstore)
//	clickhouse://HOST:PORT/DB     ClickHouse, native protocol (projector/chstore)
package stores

import (
	"context"
	"fmt"
	"strings"

	"aegis.dev/aegis/internal/redact"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/chstore"
	"aegis.dev/aegis/projector/sqlstore"
)

// Store is an opened audit store: everything the projector, `aegisctl sql`
// and `aegisctl verify --store` use.
type Store interface {
	projector.Store
	projector.HeadReader
	projector.Querier
	Close() error
}

// Kind names the backend of a store URL.
type Kind string

// Backends.
const (
	SQLite     Kind = "sqlite"
	ClickHouse Kind = "clickhouse"
)

// Parse checks a store URL and returns its backend.
func Parse(url string) (Kind, error) {
	switch {
	case strings.HasPrefix(url, "sqlite:"):
		if strings.TrimPrefix(url, "sqlite:") == "" {
			return "", fmt.Errorf("store %q: sqlite:PATH needs a path: %w", url, projector.ErrStore)
		}
		return SQLite, nil
	case strings.HasPrefix(url, "clickhouse://"):
		if _, err := chstore.ParseURL(url); err != nil {
			return "", err
		}
		return ClickHouse, nil
	}
	return "", fmt.Errorf("store %q: want sqlite:PATH or clickhouse://HOST:PORT/DB: %w", redact.URL(url), projector.ErrStore)
}

// OpenExisting opens the store at url only if it exists with the current
// schema: it creates and migrates nothing, so a mistyped URL is an error,
// not a new, empty store.
func OpenExisting(ctx context.Context, url string) (Store, error) { return open(ctx, url, true) }

// Open opens the store at url, creating its schema if needed.
func Open(ctx context.Context, url string) (Store, error) { return open(ctx, url, false) }

func open(ctx context.Context, url string, existing bool) (Store, error) {
	kind, err := Parse(url)
	if err != nil {
		return nil, err
	}
	if kind == SQLite {
		if existing {
			return sqlstore.OpenExisting(ctx, strings.TrimPrefix(url, "sqlite:"))
		}
		return sqlstore.Open(ctx, strings.TrimPrefix(url, "sqlite:"))
	}
	cfg, _ := chstore.ParseURL(url)
	cfg.Existing = existing
	return chstore.Open(ctx, cfg)
}
