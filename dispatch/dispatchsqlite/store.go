// Package dispatchsqlite is the embedded store of the dispatch runtime: one
// SQLite file in WAL mode, written by a single goroutine that commits
// whatever has queued up in one transaction (group commit).
//
// Why one writer: SQLite allows one writer at a time. Many goroutines that
// each begin their own transaction queue up on the database lock, spin in
// busy handlers and pay one fsync each; a thousand concurrent requests then
// take a thousand fsyncs. The writer goroutine instead takes every operation
// that arrived while the previous commit was on its way to disk and commits
// them together: the fsync is shared, and throughput grows with load instead
// of collapsing. Reads use their own pool of connections, which WAL lets run
// beside the writer.
//
// Durability: synchronous=FULL, so a commit is on stable storage when an
// operation returns. The process holds an exclusive lock on the database
// (a .lock file beside it): a second process on the same file is refused at
// Open rather than allowed to corrupt the single-writer model. Because of that
// lock, Open can hand back the calls a crashed process left running at once,
// without waiting for their leases to expire.
package dispatchsqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofrs/flock"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"fanout/dispatch"
)

//go:embed migration/*.sql
var migrations embed.FS

// Config configures a Store.
type Config struct {
	// Path is the database file. Its directory is created if needed.
	Path string
	// Synchronous is SQLite's synchronous pragma: FULL (the default) makes
	// every commit durable; NORMAL is faster and may lose the last commits
	// on power loss (not on a process crash). Acknowledged events could be
	// lost with NORMAL, so it is opt-in.
	Synchronous string
	// MaxBatch caps how many operations share one commit (default 512).
	MaxBatch int
	// Readers is the size of the read connection pool (default 4).
	Readers int
	// PageSize is the page size of a database that Open creates (default
	// 4096; a power of two from 512 to 65536). An existing database keeps
	// its own until it is rebuilt: stop fanout, keep a copy, and run
	// sqlite3 data/fanout.db 'PRAGMA journal_mode=DELETE; PRAGMA
	// page_size=4096; VACUUM; PRAGMA journal_mode=WAL;'.
	//
	// Why 4096 again (issue 24), after 2048 (issue 12): with half the
	// pages, a commit writes twice the WAL frames, each a system call, for
	// the same rows: ingesting batches cost 0.87x the CPU per event at
	// 4096, at the same disk per small event; 2048 saved 4 % of the disk of
	// 4 KiB events (a row of 4.2 KB fills two 2 KiB overflow pages better
	// than one of 4 KiB). Figures in docs/BENCHMARKS.md.
	PageSize int
	// Logger receives the store's logs (default slog.Default()).
	Logger *slog.Logger
	// SyncEveryCommit fsyncs every commit, as before lazy commits: by
	// default a commit that carries only state whose loss costs at most a
	// repeated call (finishes, claims, leases, retention) is not fsynced by
	// itself and becomes durable with the next fsync, within 100ms (see
	// writer.doLazy). With NORMAL, nothing is fsynced anyway.
	SyncEveryCommit bool
	// OnCommit, when set, is called by the writer after each group commit
	// that succeeded, with how many operations it carried and how long it
	// took from BEGIN to the end of COMMIT (fsync included), for an
	// application's metrics. It runs on the writer goroutine: keep it short.
	OnCommit func(ops int, took time.Duration)
}

// Store is a dispatch.Store on SQLite.
type Store struct {
	log  *slog.Logger
	lock *flock.Flock
	wdb  *sql.DB
	rdb  *sql.DB
	w    *writer

	// Read statements, prepared once: preparing costs more than running them.
	getStmt, childrenStmt, keysStmt *sql.Stmt

	closed chan struct{}
	// synchronous is the writer's synchronous mode, as SQLite reports it.
	synchronous string

	// retentionMark is, per rule (done, failed), the rowid up to which
	// CallDeleteFinished has nothing left to delete; nextMark is the mark
	// a pass computed, kept only once its transaction commits. Both belong
	// to the writer goroutine (and to the caller after the commit).
	retentionMark, nextMark [2]int64
}

var (
	_ dispatch.Store         = (*Store)(nil)
	_ dispatch.DocStore      = (*Store)(nil)
	_ dispatch.StatsReporter = (*Store)(nil)
	_ dispatch.HistoryStore  = (*Store)(nil)
)

// Open opens (creating if needed) the database at cfg.Path, migrates it, and
// hands back the calls that a previous process left running.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("dispatchsqlite: Config.Path is required")
	}
	sync := strings.ToUpper(cfg.Synchronous)
	switch sync {
	case "":
		sync = "FULL"
	case "FULL", "NORMAL", "EXTRA":
	default:
		return nil, fmt.Errorf("dispatchsqlite: synchronous must be FULL, EXTRA or NORMAL, not %q", cfg.Synchronous)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 512
	}
	if cfg.Readers <= 0 {
		cfg.Readers = 4
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 4096
	}
	if cfg.PageSize < 512 || cfg.PageSize > 65536 || cfg.PageSize&(cfg.PageSize-1) != 0 {
		return nil, fmt.Errorf("dispatchsqlite: page size %d is not a power of two from 512 to 65536", cfg.PageSize)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}

	if err := mkdirDurable(filepath.Dir(cfg.Path)); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	lock := flock.New(cfg.Path + ".lock")
	locked, err := lock.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock database: %w", err)
	}
	if !locked {
		return nil, fmt.Errorf("database %s is in use by another process (it holds %s)", cfg.Path, cfg.Path+".lock")
	}
	s := &Store{log: cfg.Logger, lock: lock, closed: make(chan struct{})}
	if err := s.open(ctx, cfg, sync); err != nil {
		s.closeDBs()
		_ = lock.Unlock()
		return nil, err
	}
	return s, nil
}

// Synchronous is the synchronous mode the writer's connection runs with,
// as SQLite reports it: FULL or EXTRA (every commit is durable) or NORMAL
// (a power loss may undo the last commits).
func (s *Store) Synchronous() string { return s.synchronous }

func (s *Store) open(ctx context.Context, cfg Config, sync string) error {
	pragmas := []string{
		"busy_timeout(10000)",
		"journal_mode(WAL)",
		"synchronous(" + sync + ")",
		"foreign_keys(OFF)",
		"cache_size(-16384)", // 16 MiB
		"temp_store(MEMORY)",
	}
	if err := createWithPageSize(ctx, cfg.Path, cfg.PageSize); err != nil {
		return err
	}
	var err error
	s.wdb, err = sql.Open("sqlite", dsn(cfg.Path, pragmas, "_txlock=immediate"))
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetMaxIdleConns(1)
	s.wdb.SetConnMaxLifetime(0)
	s.wdb.SetConnMaxIdleTime(0)
	if err := s.migrate(ctx); err != nil {
		return err
	}
	// The lock proves that no other process runs these calls: hand them back
	// now instead of after their leases expire.
	res, err := s.wdb.ExecContext(ctx, `UPDATE calls SET state = 0, lease_owner = NULL, lease_expires = NULL
		WHERE state = 1 AND lease_owner IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("release calls of the previous process: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		s.log.Info("calls left running by the previous process will run again", "calls", n)
	}
	// What the writer's connection runs with, read back rather than
	// assumed: a 2xx means durable only under FULL or EXTRA.
	var level int
	if err := s.wdb.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&level); err != nil {
		return fmt.Errorf("read the synchronous mode: %w", err)
	}
	s.synchronous = map[int]string{0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[level]

	// Readers keep a smaller cache than the writer: they read a row or a
	// few by key (the pages are in the OS's cache anyway), and each
	// connection's cache is memory the process holds.
	s.rdb, err = sql.Open("sqlite", dsn(cfg.Path, append(pragmas[:1:1], "query_only(1)", "cache_size(-4096)")))
	if err != nil {
		return fmt.Errorf("open database for reading: %w", err)
	}
	s.rdb.SetMaxOpenConns(cfg.Readers)
	s.rdb.SetMaxIdleConns(cfg.Readers)
	if err := s.rdb.PingContext(ctx); err != nil {
		return fmt.Errorf("open database for reading: %w", err)
	}
	if s.getStmt, err = s.rdb.PrepareContext(ctx, `SELECT `+callColumns+` FROM calls WHERE id = ?`); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.childrenStmt, err = s.rdb.PrepareContext(ctx, `SELECT `+childColumns+` FROM calls
		WHERE `+childrenRange+` ORDER BY gather, idx`); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.keysStmt, err = s.rdb.PrepareContext(ctx, keysQuery); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}

	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		return fmt.Errorf("open writer connection: %w", err)
	}
	s.w = newWriter(conn, cfg.MaxBatch, s.log)
	s.w.onCommit = cfg.OnCommit
	s.w.durable, s.w.mode, s.w.walPath = s.synchronous, s.synchronous, cfg.Path+"-wal"
	s.w.allDurable = cfg.SyncEveryCommit
	if err := s.w.start(); err != nil {
		_ = conn.Close()
		s.w = nil
		return err
	}
	// The same for the plans of local calls the previous process held:
	// their children without a row run again.
	var plans, planned int64
	err = s.rdb.QueryRowContext(ctx, `SELECT count(*) FROM calls INDEXED BY calls_leased
		WHERE lease_owner IS NOT NULL AND plan IS NOT NULL`).Scan(&plans)
	if err == nil && plans > 0 {
		err = s.w.do(ctx, func(tx *wtx) (err error) {
			planned, err = dropPlans(tx, "*", time.Now())
			return err
		})
	}
	if err != nil {
		_ = s.w.close()
		s.w = nil
		return fmt.Errorf("release the local calls of the previous process: %w", err)
	}
	if planned > 0 {
		s.log.Info("local calls left unfinished by the previous process will run again", "calls", planned)
	}
	return nil
}

// createWithPageSize gives a database that does not exist yet (no file, or
// an empty one) its page size. The page size of a database is fixed when
// its header is first written, which the connections below do at once
// with journal_mode(WAL) (the driver runs the DSN's pragmas in name order,
// journal_mode before page_size): so a connection of its own sets the page
// size first, then WAL, which writes the header.
func createWithPageSize(ctx context.Context, path string, pageSize int) error {
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		return nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open database: %w", err)
	}
	db, err := sql.Open("sqlite", dsn(path, nil))
	if err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "PRAGMA page_size = "+strconv.Itoa(pageSize)); err != nil {
		return fmt.Errorf("create database: page size: %w", err)
	}
	if _, err := db.ExecContext(ctx, "PRAGMA journal_mode = WAL"); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	return nil
}

// mkdirDurable creates dir and its missing parents, and fsyncs the parent
// of each directory it created: SQLite fsyncs the files it writes and the
// directory that holds them, but not that directory's own entry, which a
// power cut would otherwise take with everything in it.
func mkdirDurable(dir string) error {
	dir = filepath.Clean(dir)
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	for _, d := range created {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func dsn(path string, pragmas []string, extra ...string) string {
	q := make([]string, 0, len(pragmas)+len(extra))
	for _, p := range pragmas {
		q = append(q, "_pragma="+url.QueryEscape(p))
	}
	q = append(q, extra...)
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + strings.Join(q, "&")
}

// Close stops the writer after the operations already queued, and closes the
// database. It is safe to call more than once.
func (s *Store) Close() error {
	select {
	case <-s.closed:
		return nil
	default:
	}
	close(s.closed)
	var errs []error
	if s.w != nil {
		errs = append(errs, s.w.close())
	}
	errs = append(errs, s.closeDBs())
	errs = append(errs, s.lock.Unlock())
	return errors.Join(errs...)
}

func (s *Store) closeDBs() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.getStmt, s.childrenStmt, s.keysStmt} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	if s.wdb != nil {
		errs = append(errs, s.wdb.Close())
	}
	return errors.Join(errs...)
}

// StoreStats implements dispatch.StatsReporter.
func (s *Store) StoreStats() dispatch.StoreStats {
	return dispatch.StoreStats{Commits: s.w.commits.Load(), Ops: s.w.opsDone.Load(), Rows: s.w.rows.Snapshot()}
}

// migrate applies the embedded migrations that the database lacks, each in
// its own transaction, and records them.
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.wdb.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// Every migration not applied yet, in order, not only those past the
	// highest applied: migrations made on branches land in any order (a
	// database that has 004 may lack 003).
	applied := map[int]bool{}
	rows, err := s.wdb.QueryContext(ctx, `SELECT version FROM migrations`)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("migrate: %w", err)
		}
		applied[v] = true
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrations, "migration/*.up.sql")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		base := filepath.Base(name)
		version, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migrate: bad migration name %s", base)
		}
		if applied[version] {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		tx, err := s.wdb.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate %s: %w", base, err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migrate %s: %w", base, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)`,
			version, base, time.Now().UnixNano()); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migrate %s: %w", base, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate %s: %w", base, err)
		}
	}
	return nil
}
