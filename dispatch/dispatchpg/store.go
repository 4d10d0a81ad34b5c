// Package dispatchpg is the PostgreSQL store of the dispatch runtime, for
// several fanout replicas sharing one database.
//
// This file is a placeholder until the driver lands: Open fails.
package dispatchpg

import (
	"context"
	"errors"
	"log/slog"

	"fanout/dispatch"
)

// Config configures a Store.
type Config struct {
	// URL is a PostgreSQL connection string (postgres://user:pass@host/db).
	URL string
	// Logger receives the store's logs (default slog.Default()).
	Logger *slog.Logger
}

// Store is a dispatch.Store on PostgreSQL.
type Store struct {
	dispatch.Store
}

// Open connects to the database and migrates it.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	return nil, errors.New("dispatchpg: the PostgreSQL store is not built yet")
}
