package lazyfs_test

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	_ "modernc.org/sqlite"

	"fanout/internal/lazyfs"
)

// These tests go through the kernel: they mount a Disk with FUSE and use
// it with ordinary system calls, and SQLite. They skip, saying why, where
// FUSE cannot be mounted.

var (
	probeOnce sync.Once
	probeErr  error
)

// mount mounts d on a new directory, or skips the test when FUSE is not
// available here.
func mount(t *testing.T, d *lazyfs.Disk) *lazyfs.Mount {
	t.Helper()
	probeOnce.Do(func() { probeErr = lazyfs.Probe() })
	if probeErr != nil {
		t.Skipf("SKIPPED: FUSE tests need a FUSE mount: %v", probeErr)
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return mountOn(t, d, dir)
}

func mountOn(t *testing.T, d *lazyfs.Disk, dir string) *lazyfs.Mount {
	t.Helper()
	m, err := d.Mount(dir, lazyfs.MountOptions{Debug: os.Getenv("LAZYFS_DEBUG") != ""})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return m
}

func syncPath(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
}

func writeFile(t *testing.T, path, data string, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMount_PowerCut(t *testing.T) {
	d := lazyfs.New(lazyfs.Options{})
	m := mount(t, d)
	p := func(name string) string { return filepath.Join(m.Dir, name) }

	writeFile(t, p("synced"), "kept", true)
	writeFile(t, p("replaced"), "old", true)
	writeFile(t, p("unlinked"), "back", true)
	writeFile(t, p("unsynced-data"), "", false)
	if err := os.Mkdir(p("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	syncPath(t, m.Dir) // every name so far is durable, and dir/ empty
	writeFile(t, p("dir/inner"), "inner", true)
	syncPath(t, p("dir"))

	// After the last durable point: appends, a rename over a file, an
	// unlink, a new file whose data is synced but whose name is not, a
	// file in a new directory.
	f, err := os.OpenFile(p("synced"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(" and lost"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p("unsynced-data"), "lost", false)
	writeFile(t, p("tmp"), "new", true)
	if err := os.Rename(p("tmp"), p("replaced")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p("unlinked")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p("new-name"), "data", true)
	if err := os.MkdirAll(p("made/deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p("made/deep/f"), "x", true)
	syncPath(t, p("made/deep"))
	if b, _ := os.ReadFile(p("synced")); string(b) != "kept and lost" {
		t.Fatalf("before the cut synced holds %q", b)
	}

	loss := d.Cut()
	// The mount is dead: a process still running gets EIO.
	if _, err := f.WriteString("more"); !errors.Is(err, syscall.EIO) {
		t.Errorf("write after the cut: %v, want EIO", err)
	}
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Errorf("fsync after the cut: %v, want EIO", err)
	}
	f.Close()
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	m = mountOn(t, d, m.Dir)
	t.Logf("lost at the cut: %v", loss)

	want := map[string]string{
		"synced":        "kept",
		"replaced":      "old",
		"unlinked":      "back",
		"unsynced-data": "",
		"dir/":          "",
		"dir/inner":     "inner",
	}
	got := map[string]string{}
	err = filepath.WalkDir(m.Dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || path == m.Dir {
			return err
		}
		rel, _ := filepath.Rel(m.Dir, path)
		if e.IsDir() {
			got[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(path)
		got[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the cut the disk holds\n  %v\nwant\n  %v", got, want)
	}
}

// TestMount_Semantics checks what ordinary programs rely on: O_EXCL,
// O_TRUNC, truncate, holes, fallocate, rename, readdir, rmdir.
func TestMount_Semantics(t *testing.T) {
	m := mount(t, lazyfs.New(lazyfs.Options{}))
	p := func(name string) string { return filepath.Join(m.Dir, name) }
	writeFile(t, p("a"), "hello world", false)
	if _, err := os.OpenFile(p("a"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, os.ErrExist) {
		t.Errorf("O_EXCL on an existing file: %v, want EEXIST", err)
	}
	writeFile(t, p("a"), "hi", false) // O_TRUNC
	if b, _ := os.ReadFile(p("a")); string(b) != "hi" {
		t.Errorf("after O_TRUNC and a write: %q, want \"hi\"", b)
	}
	if err := os.Truncate(p("a"), 5); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p("a")); string(b) != "hi\x00\x00\x00" {
		t.Errorf("after truncate to 5: %q", b)
	}
	f, err := os.OpenFile(p("b"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("z"), 3*lazyfs.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, 5*lazyfs.BlockSize); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	if st, _ := f.Stat(); st.Size() != 5*lazyfs.BlockSize || st.Mode().Perm() != 0o600 {
		t.Errorf("after fallocate: size %d mode %v, want %d -rw-------", st.Size(), st.Mode(), 5*lazyfs.BlockSize)
	}
	buf := make([]byte, 2)
	if _, err := f.ReadAt(buf, 3*lazyfs.BlockSize-1); err != nil || string(buf) != "\x00z" {
		t.Errorf("read across the hole: %q %v", buf, err)
	}
	f.Close()
	if err := os.Mkdir(p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p("b"), p("d/b")); err != nil {
		t.Fatalf("rename into a directory: %v", err)
	}
	if err := os.Remove(p("d")); err == nil {
		t.Error("rmdir of a directory with a file succeeded")
	}
	entries, err := os.ReadDir(m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "a,d" {
		t.Errorf("readdir: %v, want [a d]", names)
	}
}

// TestMount_SQLite is the reason lazyfs exists: SQLite in WAL mode with
// synchronous=FULL keeps every committed transaction across a power cut;
// NORMAL does not fsync the WAL at commit and loses the last ones; and a
// filesystem whose fsync does nothing loses everything.
func TestMount_SQLite(t *testing.T) {
	for _, tc := range []struct {
		sync   string
		nosync bool
		check  func(t *testing.T, kept, committed int)
	}{
		{sync: "FULL", check: func(t *testing.T, kept, committed int) {
			if kept != committed {
				t.Errorf("synchronous=FULL: %d of %d committed rows after the cut, want all", kept, committed)
			}
		}},
		{sync: "NORMAL", check: func(t *testing.T, kept, committed int) {
			if kept == committed {
				t.Errorf("synchronous=NORMAL: all %d committed rows after the cut; lazyfs should have lost the unsynced ones", kept)
			}
		}},
		{sync: "FULL", nosync: true, check: func(t *testing.T, kept, committed int) {
			if kept != 0 {
				t.Errorf("no-op fsync: %d of %d committed rows after the cut, want none", kept, committed)
			}
		}},
	} {
		t.Run(fmt.Sprintf("%s/nosync=%v", tc.sync, tc.nosync), func(t *testing.T) {
			d := lazyfs.New(lazyfs.Options{NoSync: tc.nosync})
			m := mount(t, d)
			path := filepath.Join(m.Dir, "test.db")
			db := openDB(t, path, tc.sync)
			if _, err := db.Exec(`CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB)`); err != nil {
				t.Fatal(err)
			}
			const committed = 200
			for i := range committed {
				if _, err := db.Exec(`INSERT INTO t VALUES (?, randomblob(300))`, i); err != nil {
					t.Fatal(err)
				}
			}
			noMappings(t, m.Dir)
			// The power goes while the database is open; then its process
			// dies (closing on the dead mount fails, as expected), and the
			// machine reboots.
			loss := d.Cut()
			_ = db.Close()
			if err := m.Unmount(); err != nil {
				t.Fatal(err)
			}
			mountOn(t, d, m.Dir)
			t.Logf("lost at the cut: %v", loss)

			db = openDB(t, path, tc.sync)
			var kept int
			if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&kept); err != nil && !strings.Contains(err.Error(), "no such table") {
				t.Fatalf("count rows after the cut: %v", err)
			}
			var check string
			if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
				t.Errorf("integrity_check after the cut: %q %v", check, err)
			}
			t.Logf("synchronous=%s, nosync=%v: %d of %d committed rows after the cut", tc.sync, tc.nosync, kept, committed)
			tc.check(t, kept, committed)
			noMappings(t, m.Dir)
			if err := db.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

func openDB(t *testing.T, path, sync string) *sql.DB {
	t.Helper()
	// locking_mode=EXCLUSIVE, set before the database is first used in
	// WAL mode, keeps the WAL index in memory instead of an mmapped -shm
	// file, which this process, serving the mount, must not map (see the
	// package's documentation). The WAL and its fsyncs are the same. The
	// driver runs the _pragma list sorted by name, journal_mode before
	// locking_mode: journal mode and synchronous go in their own keys,
	// which it applies after the list.
	db, err := sql.Open("sqlite", "file:"+path+
		"?_pragma=locking_mode(EXCLUSIVE)&_journal_mode=WAL&_synchronous="+sync)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	var mode string
	if err := db.QueryRow(`PRAGMA locking_mode`).Scan(&mode); err != nil || mode != "exclusive" {
		t.Fatalf("locking_mode %q (%v), want exclusive", mode, err)
	}
	return db
}

// noMappings fails the test if this process maps a file under dir: it
// would deadlock on a page fault that waits for its own FUSE server.
func noMappings(t *testing.T, dir string) {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("cannot read /proc/self/maps: %v", err)
	}
	for _, line := range strings.Split(string(maps), "\n") {
		if strings.Contains(line, dir) {
			t.Fatalf("this process maps a file of the mount it serves: %s", line)
		}
	}
}
