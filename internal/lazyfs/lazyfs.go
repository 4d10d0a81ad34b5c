// Package lazyfs is a filesystem for power-loss tests, after the idea of
// LazyFS: it keeps every write in memory and makes it durable only when it
// is fsynced, and a power cut (Disk.Cut) throws away whatever was not. A
// test mounts it with FUSE (Disk.Mount), runs a program on the mount,
// cuts the power, unmounts, mounts the same Disk again and looks at what a
// machine would find on its disk after the reboot.
//
// # What is durable
//
// A Disk holds two states of every file and directory: the current one,
// which the mount shows, and the durable one, which is what a cut leaves.
//
//   - File data and size: durable only up to the last fsync or fdatasync
//     of that file (both count the same: fdatasync must keep the size
//     needed to read the data back). Cut loses every write, truncation
//     and extension made since, whole, in every file: it restores each
//     file to exactly the bytes and size of its last fsync. This is
//     harsher than ext4 with data=ordered, where the kernel's periodic
//     writeback makes some unsynced data durable. CutWriteback models
//     that writeback: some unsynced blocks (of BlockSize bytes) reach the
//     disk, at random, leaving files torn between their old and new
//     content, the states that recovery code must also survive.
//   - Directory entries (create, mkdir, unlink, rmdir, rename): with
//     SyncDir, the default, durable only once the directory that holds
//     the entry is fsynced (fsync of a directory file descriptor), as the
//     fsync(2) man page says: "Calling fsync() does not necessarily ensure
//     that the entry in the directory containing the file has also reached
//     disk. For that an explicit fsync() on a file descriptor for the
//     directory is also needed." A file created and fsynced in a directory
//     that never is fsynced is gone after a cut; a file unlinked without a
//     directory fsync comes back, with its durable data. With Journal,
//     every fsync of anything also makes every namespace change made
//     before it durable, which is what ext4's journal commit does in
//     practice (an fsync commits the running transaction, which holds
//     every create, unlink and rename before it); the data of the other
//     files still is not (ext4 then keeps a new, unsynced file at size 0).
//   - A rename within one directory is atomic: the directory's durable
//     entries are either all before or all after it. Across two
//     directories each side becomes durable with its own directory's
//     fsync, so a cut between the two fsyncs can leave the file in both
//     directories or in neither (no journaling filesystem does that;
//     lazyfs is harsher). Renaming a directory into another directory is
//     refused with EXDEV: its partial durability could make cycles.
//   - Permissions and times are not modelled: they are what they were
//     last set to, cut or no cut. Hard links, symbolic links, special
//     files and extended attributes are not supported.
//
// A cut also stops the mount: from then on every operation on it fails
// with EIO, so that nothing a process still does before it is killed
// reaches the disk. The mount must then be unmounted, which drops the
// kernel's caches of it (its page cache still holds the lost data), and
// the Disk mounted afresh.
//
// File locks (flock, fcntl) are left to the kernel, which handles them
// locally: they work between the processes of one machine, as SQLite and
// fanout's lock file need.
//
// The process that serves a mount must not mmap files on it (SQLite does,
// for its -shm file, unless locking_mode is EXCLUSIVE): a page fault that
// waits for the server blocks a thread that Go's scheduler believes is
// running, and the next garbage collection waits for it forever while the
// server cannot run. System calls are fine. Run the programs under test as
// child processes, and read what they left through Disk.CopyTo.
//
// Options.NoSync makes fsync do nothing, for showing that a test notices
// lost data: then nothing written through the mount survives a cut.
package lazyfs

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BlockSize is the unit in which lazyfs keeps file data.
const BlockSize = 4096

// Metadata says when directory entries become durable.
type Metadata int

const (
	// SyncDir: an entry is durable once its directory is fsynced.
	SyncDir Metadata = iota
	// Journal: every fsync also makes every earlier namespace change
	// durable, as an ext4 journal commit does.
	Journal
)

func (m Metadata) String() string {
	if m == Journal {
		return "journal"
	}
	return "syncdir"
}

// Options configures a Disk.
type Options struct {
	Metadata Metadata
	// NoSync makes fsync and fdatasync succeed without making anything
	// durable: a test's deliberate failure.
	NoSync bool
}

// Disk is the state a power cut leaves, and the state the mount shows.
// It outlives its mounts.
type Disk struct {
	mu      sync.Mutex
	opts    Options
	root    *inode
	nextIno uint64
	active  *session // the live mount's session, if any
	stats   Stats
}

// Stats counts what the Disk was asked to do since it was made.
type Stats struct {
	FileSyncs, DirSyncs int64 // fsync and fdatasync calls that succeeded
	Writes              int64 // write calls
	Cuts                int
}

// session is one mount's life: dead once the power is cut.
type session struct{ dead bool }

type block [BlockSize]byte

// content is a file's data: blocks[i] holds the bytes from i*BlockSize,
// nil reads as zeros. Bytes past size in the last block are zero. The
// current and the durable content of a file share the blocks that were
// not written since the last fsync; a write copies a shared block first.
type content struct {
	size   int64
	blocks []*block
}

func (c content) clone() content { return content{size: c.size, blocks: slices.Clone(c.blocks)} }

func blocksFor(size int64) int { return int((size + BlockSize - 1) / BlockSize) }

// inode is a file or a directory, in both its states.
type inode struct {
	ino   uint64
	dir   bool
	mode  uint32 // permission bits
	uid   uint32
	gid   uint32
	mtime time.Time

	cur, dur       content           // files
	curEnt, durEnt map[string]*inode // directories
}

// New returns an empty Disk: a root directory, durable.
func New(opts Options) *Disk {
	d := &Disk{opts: opts, nextIno: 2}
	d.root = &inode{ino: 1, dir: true, mode: 0o755, uid: uint32(syscall.Getuid()), gid: uint32(syscall.Getgid()),
		mtime: time.Now(), curEnt: map[string]*inode{}, durEnt: map[string]*inode{}}
	return d
}

// Stats returns what the Disk counted so far.
func (d *Disk) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

func (d *Disk) newInode(dir bool, mode, uid, gid uint32) *inode {
	n := &inode{ino: d.nextIno, dir: dir, mode: mode & 0o7777, uid: uid, gid: gid, mtime: time.Now()}
	d.nextIno++
	if dir {
		n.curEnt, n.durEnt = map[string]*inode{}, map[string]*inode{}
	}
	return n
}

// start begins a mount's session.
func (d *Disk) start() (*session, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.active != nil {
		return nil, errMounted
	}
	d.active = &session{}
	return d.active, nil
}

// end ends a session (an unmount); the Disk can be mounted again.
func (d *Disk) end(s *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s.dead = true
	if d.active == s {
		d.active = nil
	}
}

// Loss is what a cut threw away.
type Loss struct {
	// Files maps the path (from the root, current names) of every file
	// whose data or size was not durable to the blocks that differed
	// from the durable content, counting a change of size as one.
	Files map[string]int
	// Entries are the directory entries, as "dir/name", whose current
	// state was not durable: created, removed or pointing elsewhere.
	Entries []string
	// WrittenBack is how many of the lost blocks CutWriteback kept after
	// all.
	WrittenBack int
}

// Blocks is the number of lost blocks in all files.
func (l Loss) Blocks() int {
	n := 0
	for _, b := range l.Files {
		n += b
	}
	return n
}

func (l Loss) String() string {
	if len(l.Files) == 0 && len(l.Entries) == 0 {
		return "nothing unsynced"
	}
	var b strings.Builder
	b.WriteString(strconv.Itoa(l.Blocks()) + " unsynced blocks")
	if len(l.Files) > 0 {
		names := slices.Sorted(maps.Keys(l.Files))
		b.WriteString(" (")
		for i, name := range names {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(name + " " + strconv.Itoa(l.Files[name]))
		}
		b.WriteString(")")
	}
	if l.WrittenBack > 0 {
		b.WriteString(", of which " + strconv.Itoa(l.WrittenBack) + " written back")
	}
	b.WriteString(", " + strconv.Itoa(len(l.Entries)) + " directory entries")
	if len(l.Entries) > 0 {
		b.WriteString(" (" + strings.Join(l.Entries, ", ") + ")")
	}
	return b.String()
}

// Cut cuts the power: the live mount, if any, fails every operation from
// now on, and every file and directory goes back to its durable state.
// It returns what was lost. The mount must still be unmounted before the
// Disk is mounted again.
func (d *Disk) Cut() Loss { return d.CutWriteback(nil, 0) }

// CutWriteback is Cut, except that some of the data written since each
// file's last fsync had reached the disk anyway, as the kernel's writeback
// may have done before the power went: each such block within the durable
// size independently with probability p (so a file can be left torn, part
// old and part new), and of the data appended past the durable size a
// prefix, block by block while a draw stays under p, with the size that
// covers it (ext4's delayed allocation writes the size after the data, so
// an extension never shows garbage); an unsynced truncation with
// probability p. Directory entries are as for Cut. rng makes it
// reproducible; with p = 0 it is Cut.
func (d *Disk) CutWriteback(rng *rand.Rand, p float64) Loss {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.active != nil {
		d.active.dead = true
	}
	loss := Loss{Files: map[string]int{}}
	d.unsynced(d.root, "", map[*inode]bool{}, &loss)
	d.revert(d.root, map[*inode]bool{}, func(n *inode) {
		if p > 0 {
			loss.WrittenBack += n.writeback(rng, p)
		}
	})
	d.stats.Cuts++
	return loss
}

// writeback makes part of n's unsynced data durable (see CutWriteback)
// and returns how many blocks it kept.
func (n *inode) writeback(rng *rand.Rand, p float64) (kept int) {
	cur, dur := n.cur, n.dur
	size := dur.size
	switch {
	case cur.size > dur.size:
		// The extension, in order, block by block.
		for size < cur.size && rng.Float64() < p {
			size = min((size/BlockSize+1)*BlockSize, cur.size)
		}
	case cur.size < dur.size && rng.Float64() < p:
		size = cur.size
	}
	blocks := make([]*block, blocksFor(size))
	for i := range blocks {
		var c, o *block
		if i < len(cur.blocks) {
			c = cur.blocks[i]
		}
		if i < len(dur.blocks) {
			o = dur.blocks[i]
		}
		switch {
		case c == o:
			blocks[i] = o
		case size > dur.size && int64(i+1)*BlockSize > dur.size:
			blocks[i] = c // in the extension that reached the disk
			kept++
		case rng.Float64() < p:
			blocks[i] = c
			kept++
		default:
			blocks[i] = o
		}
	}
	// Bytes past the size read as zeros.
	if last := len(blocks) - 1; last >= 0 && size%BlockSize != 0 && blocks[last] != nil {
		b := *blocks[last]
		clear(b[size%BlockSize:])
		blocks[last] = &b
	}
	n.dur = content{size: size, blocks: blocks}
	return kept
}

// unsynced adds to loss what of the current tree under n is not durable.
func (d *Disk) unsynced(n *inode, path string, seen map[*inode]bool, loss *Loss) {
	if seen[n] {
		return
	}
	seen[n] = true
	if !n.dir {
		if k := n.lostBlocks(); k > 0 {
			loss.Files[strings.TrimPrefix(path, "/")] = k
		}
		return
	}
	names := make([]string, 0, len(n.curEnt)+len(n.durEnt))
	for name := range n.curEnt {
		names = append(names, name)
	}
	for name := range n.durEnt {
		if _, ok := n.curEnt[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		if n.curEnt[name] != n.durEnt[name] {
			loss.Entries = append(loss.Entries, strings.TrimPrefix(path+"/"+name, "/"))
		}
		if c := n.curEnt[name]; c != nil {
			d.unsynced(c, path+"/"+name, seen, loss)
		}
	}
}

// lostBlocks counts the blocks of the current content that are not the
// durable ones, and one more if the size differs.
func (n *inode) lostBlocks() int {
	k := 0
	if n.cur.size != n.dur.size {
		k++
	}
	for i, b := range n.cur.blocks {
		if i >= len(n.dur.blocks) || n.dur.blocks[i] != b {
			k++
		}
	}
	return k
}

// revert sets the current state of everything reachable from n in the
// durable tree to its durable state, after calling before on each file.
func (d *Disk) revert(n *inode, seen map[*inode]bool, before func(*inode)) {
	if seen[n] {
		return
	}
	seen[n] = true
	if !n.dir {
		before(n)
		n.cur = n.dur.clone()
		return
	}
	n.curEnt = maps.Clone(n.durEnt)
	for _, name := range slices.Sorted(maps.Keys(n.durEnt)) { // in order: rng draws are reproducible
		d.revert(n.durEnt[name], seen, before)
	}
}

// --- operations on the current state; the caller holds d.mu ---

// fsync makes n durable: a file's data and size, a directory's entries.
// With Journal it also commits every namespace change.
func (d *Disk) fsync(n *inode) {
	if n.dir {
		d.stats.DirSyncs++
	} else {
		d.stats.FileSyncs++
	}
	if d.opts.NoSync {
		return
	}
	if n.dir {
		n.durEnt = maps.Clone(n.curEnt)
	} else {
		n.dur = n.cur.clone()
	}
	if d.opts.Metadata == Journal {
		d.commitNamespace(d.root, map[*inode]bool{})
	}
}

func (d *Disk) commitNamespace(n *inode, seen map[*inode]bool) {
	if seen[n] || !n.dir {
		return
	}
	seen[n] = true
	n.durEnt = maps.Clone(n.curEnt)
	for _, c := range n.curEnt {
		d.commitNamespace(c, seen)
	}
}

// writable returns block i of the current content, private to it: a block
// shared with the durable content is copied first.
func (n *inode) writable(i int) *block {
	b := n.cur.blocks[i]
	if b == nil || (i < len(n.dur.blocks) && n.dur.blocks[i] == b) {
		nb := new(block)
		if b != nil {
			*nb = *b
		}
		n.cur.blocks[i] = nb
		return nb
	}
	return b
}

func (d *Disk) write(n *inode, data []byte, off int64) {
	d.stats.Writes++
	end := off + int64(len(data))
	if nb := blocksFor(end); nb > len(n.cur.blocks) {
		n.cur.blocks = append(n.cur.blocks, make([]*block, nb-len(n.cur.blocks))...)
	}
	for len(data) > 0 {
		b := n.writable(int(off / BlockSize))
		k := copy(b[off%BlockSize:], data)
		data, off = data[k:], off+int64(k)
	}
	n.cur.size = max(n.cur.size, end)
	n.mtime = time.Now()
}

// read reads into dest from off and returns how many bytes it read.
func (n *inode) read(dest []byte, off int64) int {
	if off >= n.cur.size {
		return 0
	}
	dest = dest[:min(int64(len(dest)), n.cur.size-off)]
	for k := 0; k < len(dest); {
		p := off + int64(k)
		var src []byte
		if b := n.cur.blocks[p/BlockSize]; b != nil {
			src = b[p%BlockSize:]
		}
		w := min(len(dest)-k, BlockSize-int(p%BlockSize))
		if src == nil {
			clear(dest[k : k+w])
		} else {
			copy(dest[k:k+w], src)
		}
		k += w
	}
	return len(dest)
}

func (n *inode) truncate(size int64) {
	nb := blocksFor(size)
	if size < n.cur.size {
		clear(n.cur.blocks[nb:])
		n.cur.blocks = n.cur.blocks[:nb]
		if o := size % BlockSize; o != 0 && n.cur.blocks[nb-1] != nil {
			clear(n.writable(nb - 1)[o:])
		}
	} else if nb > len(n.cur.blocks) {
		n.cur.blocks = append(n.cur.blocks, make([]*block, nb-len(n.cur.blocks))...)
	}
	n.cur.size = size
	n.mtime = time.Now()
}

func (d *Disk) create(dir *inode, name string, isDir bool, mode, uid, gid uint32) (*inode, syscall.Errno) {
	if !dir.dir {
		return nil, syscall.ENOTDIR
	}
	if dir.curEnt[name] != nil {
		return nil, syscall.EEXIST
	}
	c := d.newInode(isDir, mode, uid, gid)
	dir.curEnt[name] = c
	dir.mtime = time.Now()
	return c, 0
}

func (d *Disk) remove(dir *inode, name string, isDir bool) syscall.Errno {
	c := dir.curEnt[name]
	switch {
	case c == nil:
		return syscall.ENOENT
	case isDir && !c.dir:
		return syscall.ENOTDIR
	case !isDir && c.dir:
		return syscall.EISDIR
	case isDir && len(c.curEnt) > 0:
		return syscall.ENOTEMPTY
	}
	delete(dir.curEnt, name)
	dir.mtime = time.Now()
	return 0
}

// Flags of renameat2.
const (
	renameNoReplace = 0x1
	renameExchange  = 0x2
)

func (d *Disk) rename(from *inode, name string, to *inode, newName string, flags uint32) syscall.Errno {
	c := from.curEnt[name]
	if c == nil {
		return syscall.ENOENT
	}
	if c.dir && from != to {
		return syscall.EXDEV
	}
	old := to.curEnt[newName]
	switch {
	case flags&^(renameNoReplace|renameExchange) != 0 || flags == renameNoReplace|renameExchange:
		return syscall.EINVAL
	case flags&renameExchange != 0:
		if old == nil {
			return syscall.ENOENT
		}
		if old.dir && from != to {
			return syscall.EXDEV
		}
		from.curEnt[name], to.curEnt[newName] = old, c
		return 0
	case old == c:
		return 0
	case old != nil && flags&renameNoReplace != 0:
		return syscall.EEXIST
	case old != nil && old.dir && !c.dir:
		return syscall.EISDIR
	case old != nil && !old.dir && c.dir:
		return syscall.ENOTDIR
	case old != nil && old.dir && len(old.curEnt) > 0:
		return syscall.ENOTEMPTY
	}
	delete(from.curEnt, name)
	to.curEnt[newName] = c
	from.mtime, to.mtime = time.Now(), time.Now()
	return 0
}

// CopyTo writes the current tree (what the mount shows) into dir, a
// directory on another filesystem, for the process that serves the mount
// to read without going through it.
func (d *Disk) CopyTo(dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copyTree(d.root, dir, map[*inode]bool{})
}

func copyTree(n *inode, dir string, seen map[*inode]bool) error {
	if seen[n] {
		return fmt.Errorf("lazyfs: %s is a directory met twice", dir)
	}
	seen[n] = true
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, c := range n.curEnt {
		path := filepath.Join(dir, name)
		if c.dir {
			if err := copyTree(c, path, seen); err != nil {
				return err
			}
			continue
		}
		buf := make([]byte, c.cur.size)
		if err := os.WriteFile(path, buf[:c.read(buf, 0)], 0o644); err != nil {
			return err
		}
	}
	return nil
}
