// Package pgtest gives tests a PostgreSQL database: a throwaway cluster that
// it starts on loopback in a temporary directory, once per test binary, and
// removes afterwards; or the server named by FANOUT_TEST_DATABASE_URL.
//
// Each test key gets a schema of its own (URL puts it in search_path), so
// tests do not see each other's tables, and opening the same key again sees
// the same data. Tests skip, saying how to get PostgreSQL, when neither the
// server binaries nor FANOUT_TEST_DATABASE_URL are there.
//
// A test package that uses it runs its tests through Runner, which stops the
// cluster once they are done:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Runner(m).Run()) }
//
// or, to check for leaked goroutines once the cluster's own are gone:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Runner(m)) }
//
// A TestMain that runs the tests itself calls Shutdown after them.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable that points the tests at a running server
// instead of a throwaway cluster. Its user must be allowed to create
// schemas in the database; the tests drop the schemas they made.
const EnvURL = "FANOUT_TEST_DATABASE_URL"

// EnvBin names the variable that gives the directory of the server binaries
// (initdb, postgres) when they are neither under /usr/lib/postgresql nor on
// PATH.
const EnvBin = "FANOUT_TEST_PG_BIN"

// SkipMessage is what tests say when there is no PostgreSQL to test on.
const SkipMessage = "PostgreSQL tests skipped: no server binaries (initdb, postgres) found under /usr/lib/postgresql/*/bin or on PATH; " +
	"install them with `apt-get install postgresql`, or set " + EnvURL + " to a server to test on"

var (
	once     sync.Once
	base     string   // URL of the database the schemas go in
	cluster  *Cluster // nil with EnvURL
	setupErr error
	skip     bool

	mu      sync.Mutex
	schemas = map[string]string{} // key -> schema
	token   = randomToken()
)

func randomToken() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Runner returns m with a Run that runs the tests, then calls Shutdown, and
// returns the tests' exit code. A TestMain that checks something after the
// tests (goleak.VerifyTestMain takes a Runner) then sees the cluster gone.
func Runner(m *testing.M) interface{ Run() int } { return runner{m} }

type runner struct{ m *testing.M }

func (r runner) Run() int {
	code := r.m.Run()
	if err := Shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
	}
	return code
}

// Shutdown stops the cluster if one was started, or drops the schemas made
// on FANOUT_TEST_DATABASE_URL.
func Shutdown() error {
	mu.Lock()
	defer mu.Unlock()
	if cluster != nil {
		err := cluster.Stop()
		cluster = nil
		return err
	}
	if base != "" && len(schemas) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return fmt.Errorf("drop test schemas: %w", err)
		}
		defer conn.Close(ctx)
		for _, s := range schemas {
			if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s}.Sanitize()+" CASCADE"); err != nil {
				return fmt.Errorf("drop test schema %s: %w", s, err)
			}
		}
		schemas = map[string]string{}
	}
	return nil
}

func setup() {
	if u := os.Getenv(EnvURL); u != "" {
		base = u
		return
	}
	bin, err := FindBin()
	if err != nil {
		skip = true
		return
	}
	cluster, setupErr = Start(bin)
	if setupErr == nil {
		base = cluster.URL("postgres")
	}
}

// URL returns a connection URL for the schema of key: created empty the
// first time this process asks for key, the same schema afterwards. It
// skips the test when there is no PostgreSQL, and fails it when the
// cluster does not start.
func URL(t testing.TB, key string) string {
	t.Helper()
	once.Do(setup)
	if skip {
		t.Skip(SkipMessage)
	}
	if setupErr != nil {
		t.Fatalf("pgtest: %v", setupErr)
	}
	mu.Lock()
	defer mu.Unlock()
	schema, ok := schemas[key]
	if !ok {
		sum := sha256.Sum256([]byte(key))
		schema = "t_" + token + "_" + hex.EncodeToString(sum[:8])
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Fatalf("pgtest: connect to %s: %v", Redact(base), err)
		}
		defer conn.Close(ctx)
		id := pgx.Identifier{schema}.Sanitize()
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+id+" CASCADE; CREATE SCHEMA "+id); err != nil {
			t.Fatalf("pgtest: create schema for %q: %v", key, err)
		}
		schemas[key] = schema
	}
	return WithSearchPath(base, schema)
}

// NewURL returns the URL of a new empty schema, for a test that does not
// reopen stores by key.
func NewURL(t testing.TB) string {
	t.Helper()
	return URL(t, Unique(t))
}

var unique atomic.Int64

// Unique returns a key that no other call in this process returns: a
// prefix for the keys of one run of a test, so that -count=N runs it on
// fresh schemas each time.
func Unique(t testing.TB) string {
	return fmt.Sprintf("%s#%d", t.Name(), unique.Add(1))
}

// WithSearchPath returns the connection string u with search_path set to
// schema, for URLs (postgres://...) and key=value strings alike.
func WithSearchPath(u, schema string) string {
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		parsed, err := url.Parse(u)
		if err == nil {
			q := parsed.Query()
			q.Set("search_path", schema)
			parsed.RawQuery = q.Encode()
			return parsed.String()
		}
	}
	return u + " search_path=" + schema
}

// Redact hides the password of a connection URL, for messages.
func Redact(u string) string {
	if p, err := url.Parse(u); err == nil && p.User != nil {
		return p.Redacted()
	}
	return u
}

// FindBin returns the directory of initdb and postgres: FANOUT_TEST_PG_BIN,
// else the newest /usr/lib/postgresql/<version>/bin (Debian's layout), else
// the directory of initdb on PATH.
func FindBin() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv(EnvBin); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%s=%s has no initdb and postgres", EnvBin, dir)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Cluster is a PostgreSQL server started from scratch in a temporary
// directory, listening on 127.0.0.1 only.
type Cluster struct {
	Dir  string
	Port int
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start initializes a cluster in a new temporary directory and starts it on
// a free loopback port; its unix socket goes in the directory too. Run as
// root, it runs the server as the postgres user (initdb refuses root).
// The server gets SIGQUIT (immediate shutdown) if this process dies
// without stopping it.
func Start(bin string) (*Cluster, error) {
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	removeStale()
	dir, err := os.MkdirTemp("", "fanout-pgtest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, done: make(chan struct{})}
	fail := func(err error) (*Cluster, error) {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--no-locale", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %v\n%s", err, out))
	}
	// A port that was free a moment ago; a collision makes the server
	// fail to start, and Start tries another.
	for try := 0; ; try++ {
		c.Port, err = freePort()
		if err != nil {
			return fail(err)
		}
		err = c.start(bin, data, cred)
		if err == nil {
			return c, nil
		}
		if try == 2 {
			return fail(err)
		}
	}
}

func (c *Cluster) start(bin, data string, cred *syscall.Credential) error {
	logPath := filepath.Join(c.Dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data,
		"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(c.Port), "-c", "unix_socket_directories="+c.Dir,
		"-c", "max_connections=300", "-c", "shared_buffers=128MB", "-c", "fsync=on", "-c", "synchronous_commit=on",
		"-c", "log_min_messages=warning", "-c", "logging_collector=off")
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	c.done = make(chan struct{})
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			_ = conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		select {
		case <-c.done:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited: %v\n%s", c.err, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = c.cmd.Process.Kill()
			<-c.done
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres did not accept connections within 60s: %v\n%s", err, log)
		}
	}
}

// URL returns the URL of a database of the cluster.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// Stop shuts the server down (fast shutdown, then a kill after 30s) and
// removes its directory.
func (c *Cluster) Stop() error {
	defer os.RemoveAll(c.Dir)
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-c.done:
		return nil
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
		return errors.New("postgres did not stop within 30s; killed")
	}
}

// removeStale removes the directories of clusters whose test binary died
// without stopping them (a -timeout panic skips TestMain's cleanup; the
// server itself got SIGQUIT): older than an hour, with no live postmaster.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "fanout-pgtest-*"))
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || time.Since(fi.ModTime()) < time.Hour {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid")); err == nil {
			pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				continue // still running
			}
		}
		_ = os.RemoveAll(dir)
	}
}

// credential is who runs the server: the postgres user when this process
// is root (initdb refuses root), this process's user otherwise.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and initdb refuses root: need a postgres user to run the server as (%v)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
