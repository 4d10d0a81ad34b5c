package crashtest

import (
	"database/sql"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // for the integrity check of fanout's database

	"fanout/internal/lazyfs"
)

// TestPowerLoss cuts the power under load. A SIGKILL keeps the page cache,
// so the crash tests above would pass without a single fsync; here
// fanout's data directory is a lazyfs mount (internal/lazyfs), which keeps
// only what was fsynced. Each cut throws away every write not fsynced and
// stops the filesystem (every later operation fails with EIO), then the
// test SIGKILLs fanout, unmounts (dropping the kernel's caches), mounts the
// same disk again, checks the database's integrity and restarts fanout on
// it. Directory entries are durable only once their directory is fsynced
// (lazyfs.SyncDir, harsher than ext4). Every second cut, some of the
// unsynced blocks reach the disk anyway, at random, as the kernel's
// writeback may have written them. At the end every acknowledged event
// must have reached every destination: a 2xx means fsynced.
//
// FUSE must be usable (/dev/fuse, fusermount3 from Debian's fuse3, the
// right to mount): otherwise the test skips and says what is missing.
//
// FANOUT_POWERLOSS_BREAK shows that the test can fail: "normal" runs
// fanout with --synchronous NORMAL (commits are not fsynced until a
// checkpoint), "nosync" makes lazyfs's fsync a no-op. Either way the test
// reports the acknowledged events the cuts lost.
func TestPowerLoss(t *testing.T) {
	if err := lazyfs.Probe(); err != nil {
		t.Skipf("SKIPPED: the power-loss test needs a FUSE mount, and cannot have one here: %v", err)
	}
	cfg := powerConfig{
		cuts:  kills(4),
		upMin: 400 * time.Millisecond, upMax: 1200 * time.Millisecond,
		load: loadConfig{singles: 6, batchers: 2, minBatch: 2, maxBatch: 20, rate: 600},
	}
	switch b := os.Getenv("FANOUT_POWERLOSS_BREAK"); b {
	case "":
	case "normal":
		cfg.extra = []string{"--synchronous", "NORMAL"}
	case "nosync":
		cfg.disk.NoSync = true
	default:
		t.Fatalf("FANOUT_POWERLOSS_BREAK=%q: want normal or nosync", b)
	}
	runPowerLoss(t, cfg)
}

// TestPowerLoss_NewDataDir is the same with a data directory that fanout
// creates itself (--data names a directory that does not exist yet), with
// two cuts, on POSIX's letter (lazyfs.SyncDir): the new directory's own
// entry is durable only once its parent is fsynced, which fanout does when
// it creates it; before it did, a cut lost the whole directory with every
// event acknowledged in it. FANOUT_POWERLOSS_EXT4_DIRS=1 models ext4's
// journal instead (lazyfs.Journal: an fsync also makes every earlier create
// durable, the mkdir of the data directory among them).
func TestPowerLoss_NewDataDir(t *testing.T) {
	if err := lazyfs.Probe(); err != nil {
		t.Skipf("SKIPPED: the power-loss test needs a FUSE mount, and cannot have one here: %v", err)
	}
	cfg := powerConfig{
		subdir: "data",
		disk:   lazyfs.Options{Metadata: lazyfs.SyncDir},
		cuts:   kills(2),
		upMin:  400 * time.Millisecond, upMax: 1000 * time.Millisecond,
		load: loadConfig{singles: 6, batchers: 2, minBatch: 2, maxBatch: 20, rate: 600},
	}
	if os.Getenv("FANOUT_POWERLOSS_EXT4_DIRS") != "" {
		cfg.disk.Metadata = lazyfs.Journal
	}
	runPowerLoss(t, cfg)
}

type powerConfig struct {
	disk lazyfs.Options
	// subdir, when set, puts fanout's data directory below the mount's
	// root, for fanout to create.
	subdir       string
	extra        []string // fanout flags
	load         loadConfig
	cuts         int
	upMin, upMax time.Duration // how long each run of fanout takes load
}

func runPowerLoss(t *testing.T, cfg powerConfig) {
	began := time.Now()
	disk := lazyfs.New(cfg.disk)
	root := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// fanout's data directory is the mount's root, which always exists,
	// so that what is at stake is fanout's files in it; or cfg.subdir in
	// it, for fanout to create.
	mount := mountDisk(t, disk, root)
	data := filepath.Join(root, cfg.subdir)
	sinks := []*sink{newSink(t, healthy), newSink(t, healthy)}
	args := fanoutArgs(data, urlsOf(sinks, "/hook"),
		append(append([]string{"--workers", strconv.Itoa(crashWorkers)}, fastRetries...), cfg.extra...)...)
	t.Logf("fanout %s on lazyfs (%v, nosync=%v)", strings.Join(args, " "), cfg.disk.Metadata, cfg.disk.NoSync)

	l := newLoader(cfg.load)
	t.Cleanup(l.stop)
	p := startFanout(t, args)
	l.target(p.URL)
	l.start()

	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, seed))
	t.Logf("writeback seed %d", seed)
	var kills []kill
	for i := range cfg.cuts {
		before := l.accepted.Load()
		time.Sleep(cfg.upMin + rand.N(cfg.upMax-cfg.upMin))
		if !l.waitAccepted(before+1, 30*time.Second) {
			t.Fatalf("run %d of fanout accepted no event within 30s", i+1)
		}
		// The power goes: what was not fsynced is gone (except, every
		// second cut, what the kernel's writeback had written anyway:
		// torn WAL tails and half-done checkpoints, for SQLite to
		// recover), and the filesystem answers nothing more. Then the
		// process dies, and the machine reboots.
		k := kill{inflight: l.inflight.Load(), at: time.Now()}
		var loss lazyfs.Loss
		if i%2 == 1 {
			loss = disk.CutWriteback(rng, 0.5)
		} else {
			loss = disk.Cut()
		}
		l.target("")
		powerOff(t, p)
		if err := mount.Unmount(); err != nil {
			t.Fatal(err)
		}
		mount = mountDisk(t, disk, root)
		integrity(t, copyDisk(t, disk, cfg.subdir))
		k.restartAt = time.Now()
		p = startFanout(t, args)
		k.restartTook = time.Since(k.restartAt)
		l.target(p.URL)
		kills = append(kills, k)
		t.Logf("cut %d at %v: %d events acknowledged so far, %d requests in flight; lost %v; restarted in %v",
			i+1, k.at.Sub(began).Round(time.Millisecond), l.accepted.Load(), k.inflight, loss,
			k.restartTook.Round(time.Millisecond))
	}
	time.Sleep(cfg.upMin) // the last run takes load too
	l.stop()

	// Drain: wait until every acknowledged event reached every
	// destination, or the destinations went quiet without some; then
	// until fanout's store says that every call is done, and stop it.
	drainStart := time.Now()
	reqs, sent, unexpected := l.results()
	ackedIDs := ackedIDs(reqs)
	for _, s := range sinks {
		waitDeliveredOrStalled(s, ackedIDs, 5*time.Second, 2*time.Minute)
	}
	waitAllDone(t, disk, cfg.subdir, 2*time.Minute)
	terminate(t, p, time.Minute)
	// Now that fanout has nothing left to do, what has not arrived never
	// will.
	lost := 0
	for i, s := range sinks {
		if n := len(ackedIDs) - countDelivered(s, ackedIDs); n > 0 {
			t.Errorf("destination %d: %d of the %d acknowledged events never arrived", i, n, len(ackedIDs))
			lost = max(lost, n)
		}
	}
	drain := time.Since(drainStart)
	final := copyDisk(t, disk, cfg.subdir)
	integrity(t, final)
	storedEvents, storedDeliveries := checkAllDone(t, final)

	if len(unexpected) > 0 {
		t.Errorf("fanout gave answers it should not have:\n%s", strings.Join(unexpected, "\n"))
	}
	// A finish waits at most 100ms for its fsync, plus the few ms a
	// group of them waits for company: 250ms covers it with room for a
	// slow machine.
	fig := verifyCrash(t, reqs, sent, sinks, kills, crashWorkers, 250*time.Millisecond, storedEvents, storedDeliveries)
	fig.drain, fig.total = drain, time.Since(began)
	fig.log(t)
	// This process serves the mount: a file of it mapped here could
	// deadlock it (see lazyfs).
	if maps, err := os.ReadFile("/proc/self/maps"); err == nil && strings.Contains(string(maps), root) {
		t.Errorf("the test process maps a file of the mount it serves")
	}
	st := disk.Stats()
	t.Logf("lazyfs: %d writes, %d file fsyncs, %d directory fsyncs, %d cuts", st.Writes, st.FileSyncs, st.DirSyncs, st.Cuts)
	if st.FileSyncs == 0 {
		t.Errorf("fanout never fsynced a file on lazyfs: the test proved nothing")
	}
	if lost > 0 {
		t.Errorf("POWER LOSS LOST ACKNOWLEDGED EVENTS: %d of %d acknowledged events were never delivered after %d power cuts",
			lost, len(ackedIDs), len(kills))
	}
}

// powerOff SIGKILLs fanout after a cut, and waits until it is gone. Unlike
// Proc.Kill it accepts a process that died already: after the cut every
// operation on its files fails, and a page fault on its mmapped -shm file
// raises SIGBUS.
func powerOff(t *testing.T, p *fanoutProc) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("SIGKILL fanout: %v", err)
	}
	p.WaitExit(t, 10*time.Second)
}

// mountDisk mounts disk on dir for the rest of the test.
func mountDisk(t *testing.T, disk *lazyfs.Disk, dir string) *lazyfs.Mount {
	t.Helper()
	m, err := disk.Mount(dir, lazyfs.MountOptions{})
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

// copyDisk copies what the mount shows into a new directory and returns
// fanout's data directory in it. This process serves the mount, so it must
// not open SQLite on it: SQLite mmaps its -shm file, and a page fault that
// waits for this process's own FUSE server can deadlock it (see lazyfs).
// The copy is taken at one instant, under lazyfs's lock: what a crash at
// that instant would leave, which SQLite recovers from its WAL.
func copyDisk(t *testing.T, disk *lazyfs.Disk, subdir string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "copy")
	if err := disk.CopyTo(dir); err != nil {
		t.Fatalf("copy the disk: %v", err)
	}
	return filepath.Join(dir, subdir)
}

// integrity runs SQLite's integrity check on fanout's database in data, a
// copy of the disk. A database that does not exist yet passes.
func integrity(t *testing.T, data string) {
	t.Helper()
	path := filepath.Join(data, "fanout.db")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&res); err != nil || res != "ok" {
		t.Fatalf("integrity_check of fanout's database after a power cut: %q %v", res, err)
	}
}

// waitAllDone waits until fanout's store, read from copies of the disk
// while fanout runs, holds no call that is not done.
func waitAllDone(t *testing.T, disk *lazyfs.Disk, subdir string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data := copyDisk(t, disk, subdir)
		counts := callCounts(t, data)
		if err := os.RemoveAll(filepath.Dir(data)); err != nil {
			t.Fatal(err)
		}
		if notDone(counts) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fanout's store still holds %d calls that are not done %v after the load stopped: %v",
				notDone(counts), timeout, counts)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitDeliveredOrStalled waits until every one of ids was delivered to the
// sink, or no attempt reached the sink for stall (retries are --retry-max
// apart), or timeout passed. Unlike waitDelivered it does not wait minutes
// for events that a power cut lost; whether any was lost is for the caller
// to count once fanout has finished.
func waitDeliveredOrStalled(s *sink, ids []string, stall, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for next := 0; ; {
		next += s.delivered(ids[next:])
		quiet := time.Since(time.Unix(0, s.lastAttempt.Load())) >= stall
		if next == len(ids) || quiet || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countDelivered is how many of ids the sink got.
func countDelivered(s *sink, ids []string) int {
	n := 0
	for _, id := range ids {
		if len(s.get(id).deliveries) > 0 {
			n++
		}
	}
	return n
}
