package lazyfs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// These tests drive the model directly, without FUSE: mount_test.go does
// the same through the kernel.

// fileOp is a step on one file, /f.
type fileOp struct {
	write string // written at off, if not empty
	off   int64
	trunc int64 // truncate to this size, if >= 0 and no write
	sync  bool  // fsync
}

func w(off int64, s string) fileOp { return fileOp{write: s, off: off, trunc: -1} }
func trunc(n int64) fileOp         { return fileOp{trunc: n} }
func fsync() fileOp                { return fileOp{sync: true, trunc: -1} }

// big is a string of n bytes, different from one block to the next.
func big(n int, seed byte) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + (seed+byte(i/BlockSize)+byte(i%7))%26
	}
	return string(b)
}

func TestCut_FileData(t *testing.T) {
	two := big(2*BlockSize+100, 0)
	for _, tc := range []struct {
		name      string
		ops       []fileOp
		nosync    bool
		now, left string // the file's content before and after the cut
	}{
		{name: "unsynced write is lost", ops: []fileOp{w(0, "hello")}, now: "hello", left: ""},
		{name: "synced write survives", ops: []fileOp{w(0, "hello"), fsync()}, now: "hello", left: "hello"},
		{name: "append after sync is lost, with the size", ops: []fileOp{w(0, "hello"), fsync(), w(5, " world")},
			now: "hello world", left: "hello"},
		{name: "overwrite after sync is undone", ops: []fileOp{w(0, "hello"), fsync(), w(1, "ipp")},
			now: "hippo", left: "hello"},
		{name: "truncation after sync is undone", ops: []fileOp{w(0, two), fsync(), trunc(10)},
			now: two[:10], left: two},
		{name: "extension after sync is undone", ops: []fileOp{w(0, "abc"), fsync(), trunc(BlockSize + 3)},
			now: "abc" + strings.Repeat("\x00", BlockSize), left: "abc"},
		{name: "shrink then grow reads zeros", ops: []fileOp{w(0, "abcdef"), fsync(), trunc(2), trunc(6)},
			now: "ab\x00\x00\x00\x00", left: "abcdef"},
		{name: "write across blocks, then overwrite the middle", ops: []fileOp{w(0, two), fsync(), w(BlockSize-2, "XXXX")},
			now: two[:BlockSize-2] + "XXXX" + two[BlockSize+2:], left: two},
		{name: "hole reads zeros and is lost", ops: []fileOp{w(0, "a"), fsync(), w(3*BlockSize, "z")},
			now: "a" + strings.Repeat("\x00", 3*BlockSize-1) + "z", left: "a"},
		{name: "the last sync wins", ops: []fileOp{w(0, "one"), fsync(), w(0, "two"), fsync(), w(0, "six")},
			now: "six", left: "two"},
		{name: "no-op fsync keeps nothing, not even the name", nosync: true, ops: []fileOp{w(0, "hello"), fsync()},
			now: "hello", left: "<none>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(Options{NoSync: tc.nosync})
			f := mustCreate(t, d, d.root, "f", false)
			d.fsync(d.root) // the name is durable: only data is at stake
			for _, op := range tc.ops {
				switch {
				case op.write != "":
					d.write(f, []byte(op.write), op.off)
				case op.sync:
					d.fsync(f)
				default:
					f.truncate(op.trunc)
				}
			}
			if got := readAll(f); got != tc.now {
				t.Fatalf("before the cut the file holds %q, want %q", short(got), short(tc.now))
			}
			d.Cut()
			got := "<none>"
			if f := d.root.curEnt["f"]; f != nil {
				got = readAll(f)
			}
			if got != tc.left {
				t.Fatalf("after the cut the file holds %q, want %q", short(got), short(tc.left))
			}
			if lost := d.Cut(); len(lost.Files)+len(lost.Entries) != 0 {
				t.Fatalf("a second cut lost %v, want nothing", lost)
			}
		})
	}
}

// TestCut_FileDataRandom checks the blocks against a plain byte slice over
// random writes, truncations, fsyncs and cuts.
func TestCut_FileDataRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for run := range 20 {
		d := New(Options{})
		f := mustCreate(t, d, d.root, "f", false)
		d.fsync(d.root)
		var cur, dur []byte
		for step := range 300 {
			switch k := r.IntN(20); {
			case k < 12:
				off := r.Int64N(5 * BlockSize)
				data := make([]byte, r.IntN(2*BlockSize))
				for i := range data {
					data[i] = byte(r.IntN(255) + 1)
				}
				d.write(f, data, off)
				if end := off + int64(len(data)); end > int64(len(cur)) {
					cur = append(cur, make([]byte, end-int64(len(cur)))...)
				}
				copy(cur[off:], data)
			case k < 15:
				n := r.Int64N(5 * BlockSize)
				f.truncate(n)
				if n < int64(len(cur)) {
					cur = cur[:n]
				} else {
					cur = append(cur, make([]byte, n-int64(len(cur)))...)
				}
			case k < 18:
				d.fsync(f)
				dur = slices.Clone(cur)
			default:
				d.Cut()
				cur = slices.Clone(dur)
			}
			if got := readAll(f); got != string(cur) {
				t.Fatalf("run %d step %d: the file differs from its model (len %d, want %d)", run, step, len(got), len(cur))
			}
			// Reads at every offset, of every length, agree too.
			off := r.Int64N(int64(len(cur)) + 1)
			buf := make([]byte, r.IntN(3*BlockSize))
			n := f.read(buf, off)
			if want := cur[off:min(int64(len(cur)), off+int64(len(buf)))]; !bytes.Equal(buf[:n], want) {
				t.Fatalf("run %d step %d: read at %d gives %d bytes unlike the model", run, step, off, n)
			}
		}
	}
}

// nsOp is a step on the namespace; the paths are in the root, or in d/.
type nsOp struct {
	op   string // create, mkdir, unlink, rmdir, rename, sync (a file or a directory), write
	a, b string
}

func TestCut_Namespace(t *testing.T) {
	for _, tc := range []struct {
		name     string
		metadata Metadata
		ops      []nsOp
		want     []string // the tree after the cut: "path" or "path=content"
	}{
		{name: "created file, synced, directory not synced: gone",
			ops: []nsOp{{"create", "f", ""}, {"write", "f", "data"}, {"sync", "f", ""}}, want: nil},
		{name: "created file, directory synced first: there, empty",
			ops: []nsOp{{"create", "f", ""}, {"sync", ".", ""}, {"write", "f", "data"}}, want: []string{"f="}},
		{name: "created file, both synced: there with its data",
			ops:  []nsOp{{"create", "f", ""}, {"write", "f", "data"}, {"sync", "f", ""}, {"sync", ".", ""}},
			want: []string{"f=data"}},
		{name: "journal: a file's fsync keeps its name too",
			metadata: Journal,
			ops:      []nsOp{{"create", "f", ""}, {"write", "f", "data"}, {"sync", "f", ""}}, want: []string{"f=data"}},
		{name: "journal: any fsync keeps every earlier name, not others' data",
			metadata: Journal,
			ops: []nsOp{{"create", "f", ""}, {"write", "f", "data"}, {"create", "g", ""}, {"write", "g", "more"},
				{"sync", "g", ""}, {"create", "h", ""}},
			want: []string{"f=", "g=more"}},
		{name: "unlink without a directory sync comes back",
			ops: []nsOp{{"create", "f", ""}, {"write", "f", "data"}, {"sync", "f", ""}, {"sync", ".", ""},
				{"unlink", "f", ""}},
			want: []string{"f=data"}},
		{name: "unlink with a directory sync stays",
			ops: []nsOp{{"create", "f", ""}, {"sync", ".", ""}, {"unlink", "f", ""}, {"sync", ".", ""}}, want: nil},
		{name: "journal: unlink then an fsync elsewhere stays",
			metadata: Journal,
			ops: []nsOp{{"create", "f", ""}, {"create", "g", ""}, {"sync", "g", ""}, {"unlink", "f", ""},
				{"sync", "g", ""}},
			want: []string{"g="}},
		{name: "rename over a file is atomic: old state until the directory sync",
			ops: []nsOp{{"create", "f", ""}, {"write", "f", "old"}, {"sync", "f", ""}, {"create", "tmp", ""},
				{"write", "tmp", "new"}, {"sync", "tmp", ""}, {"sync", ".", ""}, {"rename", "tmp", "f"}},
			want: []string{"f=old", "tmp=new"}},
		{name: "rename over a file, directory synced: new state",
			ops: []nsOp{{"create", "f", ""}, {"write", "f", "old"}, {"sync", "f", ""}, {"create", "tmp", ""},
				{"write", "tmp", "new"}, {"sync", "tmp", ""}, {"sync", ".", ""}, {"rename", "tmp", "f"},
				{"sync", ".", ""}},
			want: []string{"f=new"}},
		{name: "rename without syncing the file's data keeps the name, not the data",
			ops:  []nsOp{{"create", "tmp", ""}, {"write", "tmp", "new"}, {"rename", "tmp", "f"}, {"sync", ".", ""}},
			want: []string{"f="}},
		{name: "new directory: its entries need it synced, and its own name its parent",
			ops:  []nsOp{{"mkdir", "d", ""}, {"create", "d/f", ""}, {"sync", "d", ""}},
			want: nil},
		{name: "new directory, parent synced too",
			ops:  []nsOp{{"mkdir", "d", ""}, {"create", "d/f", ""}, {"sync", "d", ""}, {"sync", ".", ""}},
			want: []string{"d/", "d/f="}},
		{name: "rename across directories, only the target synced: in both",
			ops: []nsOp{{"mkdir", "d", ""}, {"create", "f", ""}, {"sync", ".", ""}, {"sync", "d", ""},
				{"rename", "f", "d/f"}, {"sync", "d", ""}},
			want: []string{"d/", "d/f=", "f="}},
		{name: "rename across directories, only the source synced: in neither",
			ops: []nsOp{{"mkdir", "d", ""}, {"create", "f", ""}, {"sync", ".", ""}, {"sync", "d", ""},
				{"rename", "f", "d/f"}, {"sync", ".", ""}},
			want: []string{"d/"}},
		{name: "rmdir without a sync comes back",
			ops:  []nsOp{{"mkdir", "d", ""}, {"sync", ".", ""}, {"rmdir", "d", ""}},
			want: []string{"d/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(Options{Metadata: tc.metadata})
			for _, op := range tc.ops {
				applyNS(t, d, op)
			}
			loss := d.Cut()
			if got := tree(d); !slices.Equal(got, tc.want) {
				t.Fatalf("after the cut the disk holds %q, want %q (lost: %v)", got, tc.want, loss)
			}
		})
	}
}

func TestCut_Report(t *testing.T) {
	d := New(Options{})
	f := mustCreate(t, d, d.root, "f", false)
	d.write(f, []byte(big(3*BlockSize, 1)), 0)
	d.fsync(f)
	d.fsync(d.root)
	d.write(f, []byte("x"), BlockSize) // one block
	mustCreate(t, d, d.root, "new", false)
	loss := d.Cut()
	if loss.Files["f"] != 1 || loss.Blocks() != 1 || !slices.Equal(loss.Entries, []string{"new"}) {
		t.Fatalf("Cut() = %+v, want 1 block of f and the entry new", loss)
	}
	if s := loss.String(); s != "1 unsynced blocks (f 1), 1 directory entries (new)" {
		t.Fatalf("Loss.String() = %q", s)
	}
	if s := d.Stats(); s.FileSyncs != 1 || s.DirSyncs != 1 || s.Cuts != 1 || s.Writes != 2 {
		t.Fatalf("Stats() = %+v", s)
	}
}

func TestRename_Errors(t *testing.T) {
	d := New(Options{})
	sub := mustCreate(t, d, d.root, "d", true)
	mustCreate(t, d, d.root, "f", false)
	mustCreate(t, d, d.root, "g", false)
	mustCreate(t, d, sub, "x", false)
	for _, tc := range []struct {
		from, to string
		flags    uint32
		want     syscall.Errno
	}{
		{"missing", "f", 0, syscall.ENOENT},
		{"f", "g", renameNoReplace, syscall.EEXIST},
		{"f", "d", 0, syscall.EISDIR},
		{"d", "f", 0, syscall.ENOTDIR},
		{"f", "f", 0, 0},
		{"f", "g", renameNoReplace | renameExchange, syscall.EINVAL},
		{"f", "nothing", renameExchange, syscall.ENOENT},
	} {
		if got := d.rename(d.root, tc.from, d.root, tc.to, tc.flags); got != tc.want {
			t.Errorf("rename %s -> %s (flags %d) = %v, want %v", tc.from, tc.to, tc.flags, got, tc.want)
		}
	}
	other := mustCreate(t, d, d.root, "e", true)
	if got := d.rename(d.root, "d", other, "d", 0); got != syscall.EXDEV {
		t.Errorf("moving a directory into another = %v, want EXDEV", got)
	}
	if got := d.remove(d.root, "d", true); got != syscall.ENOTEMPTY {
		t.Errorf("rmdir of a directory with a file = %v, want ENOTEMPTY", got)
	}
}

// --- helpers ---

func mustCreate(t *testing.T, d *Disk, dir *inode, name string, isDir bool) *inode {
	t.Helper()
	n, errno := d.create(dir, name, isDir, 0o644, 0, 0)
	if errno != 0 {
		t.Fatalf("create %s: %v", name, errno)
	}
	return n
}

// walk returns the inode at path ("." is the root).
func walk(t *testing.T, d *Disk, path string) *inode {
	t.Helper()
	n := d.root
	if path == "." {
		return n
	}
	for _, part := range strings.Split(path, "/") {
		if n = n.curEnt[part]; n == nil {
			t.Fatalf("no %s", path)
		}
	}
	return n
}

func split(t *testing.T, d *Disk, path string) (*inode, string) {
	t.Helper()
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return walk(t, d, path[:i]), path[i+1:]
	}
	return d.root, path
}

func applyNS(t *testing.T, d *Disk, op nsOp) {
	t.Helper()
	dir, name := split(t, d, op.a)
	var errno syscall.Errno
	switch op.op {
	case "create", "mkdir":
		_, errno = d.create(dir, name, op.op == "mkdir", 0o644, 0, 0)
	case "unlink", "rmdir":
		errno = d.remove(dir, name, op.op == "rmdir")
	case "rename":
		to, newName := split(t, d, op.b)
		errno = d.rename(dir, name, to, newName, 0)
	case "sync":
		d.fsync(walk(t, d, op.a))
	case "write":
		d.write(walk(t, d, op.a), []byte(op.b), 0)
	default:
		t.Fatalf("unknown op %q", op.op)
	}
	if errno != 0 {
		t.Fatalf("%s %s %s: %v", op.op, op.a, op.b, errno)
	}
}

// tree lists the disk's current tree: directories as "path/", files as
// "path=content", sorted.
func tree(d *Disk) []string {
	var out []string
	var visit func(n *inode, prefix string)
	visit = func(n *inode, prefix string) {
		for name, c := range n.curEnt {
			if c.dir {
				out = append(out, prefix+name+"/")
				visit(c, prefix+name+"/")
			} else {
				out = append(out, prefix+name+"="+readAll(c))
			}
		}
	}
	visit(d.root, "")
	slices.Sort(out)
	return out
}

func readAll(n *inode) string {
	buf := make([]byte, n.cur.size)
	return string(buf[:n.read(buf, 0)])
}

func short(s string) string {
	if len(s) > 40 {
		return s[:20] + "..." + s[len(s)-20:]
	}
	return s
}

func TestCopyTo(t *testing.T) {
	d := New(Options{})
	for _, op := range []nsOp{{"mkdir", "d", ""}, {"create", "d/f", ""}, {"write", "d/f", "inner"},
		{"create", "g", ""}, {"write", "g", big(BlockSize+7, 3)}, {"create", "empty", ""}} {
		applyNS(t, d, op)
	}
	dir := t.TempDir()
	if err := d.CopyTo(dir); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if e.IsDir() {
			got = append(got, rel+"/")
			return nil
		}
		b, err := os.ReadFile(path)
		got = append(got, rel+"="+string(b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := tree(d); !slices.Equal(got, want) {
		t.Fatalf("CopyTo wrote %q, want the current tree %q", got, want)
	}
}

// TestCutWriteback checks the states a cut with writeback leaves against
// the file's last synced and current content, over random histories.
func TestCutWriteback(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	at := func(b []byte, from, to int64) []byte { // b's bytes in [from, to), zeros past its end
		out := make([]byte, to-from)
		if from < int64(len(b)) {
			copy(out, b[from:min(to, int64(len(b)))])
		}
		return out
	}
	for run := range 200 {
		p := []float64{0, 0.3, 0.5, 1}[run%4]
		d := New(Options{})
		f := mustCreate(t, d, d.root, "f", false)
		d.fsync(d.root)
		var dur []byte
		for round := range 5 {
			// Sync some content, then change it without a sync.
			cur := slices.Clone(dur)
			for range 1 + r.IntN(6) {
				if r.IntN(4) == 0 {
					n := r.Int64N(6 * BlockSize)
					f.truncate(n)
					cur = append(cur[:min(n, int64(len(cur)))], make([]byte, max(0, n-int64(len(cur))))...)
					continue
				}
				off := r.Int64N(6 * BlockSize)
				data := make([]byte, 1+r.IntN(2*BlockSize))
				for i := range data {
					data[i] = byte(1 + r.IntN(255))
				}
				d.write(f, data, off)
				if end := off + int64(len(data)); end > int64(len(cur)) {
					cur = append(cur, make([]byte, end-int64(len(cur)))...)
				}
				copy(cur[off:], data)
				if r.IntN(5) == 0 {
					d.fsync(f)
					dur = slices.Clone(cur)
				}
			}
			loss := d.CutWriteback(rand.New(rand.NewPCG(uint64(run), uint64(round))), p)
			got := []byte(readAll(f))
			size := int64(len(got))
			oldSize, newSize := int64(len(dur)), int64(len(cur))
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("run %d round %d (p=%v, synced %d bytes, current %d): %s", run, round, p, oldSize, newSize,
					fmt.Sprintf(format, args...))
			}
			switch {
			case p == 0 && !bytes.Equal(got, dur):
				fail("p=0 left %d bytes unlike the synced content", size)
			case p == 1 && !bytes.Equal(got, cur):
				fail("p=1 left %d bytes unlike the current content", size)
			case newSize > oldSize && (size < oldSize || size > newSize || (size != oldSize && size != newSize && size%BlockSize != 0)):
				fail("size %d after an extension: want the synced size, a block boundary in between, or the current size", size)
			case newSize < oldSize && size != oldSize && size != newSize:
				fail("size %d after a truncation: want one of the two", size)
			case newSize == oldSize && size != oldSize:
				fail("size %d, want %d", size, oldSize)
			}
			for from := int64(0); from < size; from += BlockSize {
				to := min(from+BlockSize, size)
				b := got[from:to]
				isNew, isOld := bytes.Equal(b, at(cur, from, to)), bytes.Equal(b, at(dur, from, to))
				switch {
				case size > oldSize && to > oldSize && !isNew:
					fail("block at %d is in the extension that reached the disk, but not the new data", from)
				case !isNew && !isOld:
					fail("block at %d is neither the synced nor the current data", from)
				}
			}
			if p == 0 && loss.WrittenBack != 0 {
				fail("p=0 wrote back %d blocks", loss.WrittenBack)
			}
			dur = got // what the disk holds now
		}
	}
}
