package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

var errMounted = errors.New("lazyfs: the disk is mounted already")

// Mount is a Disk mounted with FUSE, served by this process.
type Mount struct {
	Dir    string
	d      *Disk
	s      *session
	server *fuse.Server

	unmounted bool
}

// MountOptions tune a mount.
type MountOptions struct {
	// Debug logs every FUSE request.
	Debug bool
}

// Mount mounts the Disk on dir, an existing empty directory, and returns
// once the kernel serves it. A Disk has one mount at a time.
func (d *Disk) Mount(dir string, mo MountOptions) (*Mount, error) {
	s, err := d.start()
	if err != nil {
		return nil, err
	}
	// One client, the kernel, makes every change: its caches of names,
	// attributes and data stay true until the unmount.
	timeout := time.Second
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:        "lazyfs",
			Name:          "lazyfs",
			DisableXAttrs: true,
			Debug:         mo.Debug,
		},
		EntryTimeout:   &timeout,
		AttrTimeout:    &timeout,
		RootStableAttr: &fs.StableAttr{Ino: d.root.ino, Mode: syscall.S_IFDIR},
	}
	root := &node{d: d, s: s, n: d.root}
	server, err := fs.Mount(dir, root, opts)
	if err != nil {
		d.end(s)
		return nil, fmt.Errorf("lazyfs: mount %s: %w", dir, err)
	}
	return &Mount{Dir: dir, d: d, s: s, server: server}, nil
}

// Unmount unmounts, waiting for the kernel to let go. When processes still
// hold files open, it detaches the mount lazily instead (the kernel drops
// it once they are gone) and returns an error saying so. Unmounting twice
// is a no-op.
func (m *Mount) Unmount() error {
	if m.unmounted {
		return nil
	}
	m.unmounted = true
	defer m.d.end(m.s)
	err := m.server.Unmount()
	if err == nil {
		return nil
	}
	// Busy: detach it, so that the next mount on Dir starts afresh.
	if derr := syscall.Unmount(m.Dir, syscall.MNT_DETACH); derr != nil {
		if out, ferr := exec.Command("fusermount3", "-u", "-z", m.Dir).CombinedOutput(); ferr != nil {
			return fmt.Errorf("lazyfs: unmount %s: %v; lazy unmount: %v, fusermount3 -u -z: %v %s", m.Dir, err, derr, ferr, out)
		}
	}
	return fmt.Errorf("lazyfs: unmount %s: %v (detached lazily)", m.Dir, err)
}

// Probe says whether this process can mount a FUSE filesystem here: it
// checks /dev/fuse and fusermount3, then mounts an empty Disk on a new
// directory and unmounts it. The error says what is missing.
func Probe() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("no /dev/fuse: this kernel or sandbox has no FUSE")
	case err != nil:
		return fmt.Errorf("not allowed to use FUSE: %v", err)
	}
	_ = f.Close()
	if _, err := exec.LookPath("fusermount3"); err != nil {
		// go-fuse looks in /bin too.
		if _, err := os.Stat("/bin/fusermount3"); err != nil {
			return fmt.Errorf("no fusermount3 on PATH or in /bin: install it with `apt-get install fuse3`")
		}
	}
	dir, err := os.MkdirTemp("", "lazyfs-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	m, err := New(Options{}).Mount(dir, MountOptions{})
	if err != nil {
		return fmt.Errorf("not allowed to mount a FUSE filesystem here: %v", err)
	}
	if err := os.WriteFile(dir+"/probe", []byte("x"), 0o600); err != nil {
		_ = m.Unmount()
		return fmt.Errorf("a FUSE mount works but cannot be written: %v", err)
	}
	return m.Unmount()
}

// node is a file or a directory of a mount.
type node struct {
	fs.Inode
	d *Disk
	s *session
	n *inode
}

var (
	_ fs.NodeLookuper  = (*node)(nil)
	_ fs.NodeGetattrer = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeReader    = (*node)(nil)
	_ fs.NodeWriter    = (*node)(nil)
	_ fs.NodeFsyncer   = (*node)(nil)
	_ fs.NodeFlusher   = (*node)(nil)
	_ fs.NodeAllocater = (*node)(nil)
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeMkdirer   = (*node)(nil)
	_ fs.NodeUnlinker  = (*node)(nil)
	_ fs.NodeRmdirer   = (*node)(nil)
	_ fs.NodeRenamer   = (*node)(nil)
	_ fs.NodeReaddirer = (*node)(nil)
	_ fs.NodeStatfser  = (*node)(nil)
	_ fs.NodeOpendirer = (*node)(nil)
	_ fs.NodeReleaser  = (*node)(nil)
)

// lock takes the Disk's lock and says whether the mount is still alive:
// after a cut every operation fails with EIO.
func (x *node) lock() syscall.Errno {
	x.d.mu.Lock()
	if x.s.dead {
		x.d.mu.Unlock()
		return syscall.EIO
	}
	return 0
}

func (x *node) unlock() { x.d.mu.Unlock() }

func (n *inode) attr(out *fuse.Attr) {
	out.Ino = n.ino
	out.Mode = n.mode
	out.Nlink = 1
	if n.dir {
		out.Mode |= syscall.S_IFDIR
		out.Nlink = 2
	} else {
		out.Mode |= syscall.S_IFREG
		out.Size = uint64(n.cur.size)
		out.Blocks = uint64(len(n.cur.blocks)) * (BlockSize / 512)
	}
	out.Blksize = BlockSize
	out.Owner = fuse.Owner{Uid: n.uid, Gid: n.gid}
	out.SetTimes(&n.mtime, &n.mtime, &n.mtime)
}

func (n *inode) stable() fs.StableAttr {
	if n.dir {
		return fs.StableAttr{Mode: syscall.S_IFDIR, Ino: n.ino}
	}
	return fs.StableAttr{Mode: syscall.S_IFREG, Ino: n.ino}
}

func (x *node) child(ctx context.Context, c *inode) *fs.Inode {
	return x.NewInode(ctx, &node{d: x.d, s: x.s, n: c}, c.stable())
}

func (x *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return nil, e
	}
	c := x.n.curEnt[name]
	if c == nil {
		x.unlock()
		return nil, syscall.ENOENT
	}
	c.attr(&out.Attr)
	x.unlock()
	return x.child(ctx, c), 0
}

func (x *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	x.n.attr(&out.Attr)
	return 0
}

func (x *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	if size, ok := in.GetSize(); ok {
		if x.n.dir {
			return syscall.EISDIR
		}
		x.n.truncate(int64(size))
	}
	if mode, ok := in.GetMode(); ok {
		x.n.mode = mode & 0o7777
	}
	if uid, ok := in.GetUID(); ok {
		x.n.uid = uid
	}
	if gid, ok := in.GetGID(); ok {
		x.n.gid = gid
	}
	if mt, ok := in.GetMTime(); ok {
		x.n.mtime = mt
	}
	x.n.attr(&out.Attr)
	return 0
}

func (x *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return nil, 0, e
	}
	defer x.unlock()
	if x.n.dir {
		return nil, 0, syscall.EISDIR
	}
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		x.n.truncate(0)
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (x *node) Opendir(ctx context.Context) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	x.unlock()
	return 0
}

func (x *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return nil, e
	}
	defer x.unlock()
	return fuse.ReadResultData(dest[:x.n.read(dest, off)]), 0
}

func (x *node) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return 0, e
	}
	defer x.unlock()
	x.d.write(x.n, data, off)
	return uint32(len(data)), 0
}

// Fsync serves fsync and fdatasync of files, and fsync of directories.
func (x *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	x.d.fsync(x.n)
	return 0
}

// Flush is a close: it makes nothing durable.
func (x *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	x.unlock()
	return 0
}

func (x *node) Release(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// Allocate serves fallocate: mode 0 extends the file like a write of
// zeros, FALLOC_FL_KEEP_SIZE does nothing (lazyfs has no space to reserve),
// the rest is not supported.
func (x *node) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	const keepSize = 0x1
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	switch {
	case mode == keepSize:
		return 0
	case mode != 0:
		return syscall.EOPNOTSUPP
	}
	if end := int64(off + size); end > x.n.cur.size {
		x.n.truncate(end)
	}
	return 0
}

func (x *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return nil, nil, 0, e
	}
	c := x.n.curEnt[name]
	switch {
	case c != nil && flags&syscall.O_EXCL != 0:
		x.unlock()
		return nil, nil, 0, syscall.EEXIST
	case c != nil && c.dir:
		x.unlock()
		return nil, nil, 0, syscall.EISDIR
	case c != nil:
		if flags&syscall.O_TRUNC != 0 {
			c.truncate(0)
		}
	default:
		caller, _ := fuse.FromContext(ctx)
		var errno syscall.Errno
		uid, gid := owner(caller)
		if c, errno = x.d.create(x.n, name, false, mode, uid, gid); errno != 0 {
			x.unlock()
			return nil, nil, 0, errno
		}
	}
	c.attr(&out.Attr)
	x.unlock()
	return x.child(ctx, c), nil, fuse.FOPEN_KEEP_CACHE, 0
}

func owner(c *fuse.Caller) (uid, gid uint32) {
	if c == nil {
		return uint32(os.Getuid()), uint32(os.Getgid())
	}
	return c.Uid, c.Gid
}

func (x *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return nil, e
	}
	caller, _ := fuse.FromContext(ctx)
	uid, gid := owner(caller)
	c, errno := x.d.create(x.n, name, true, mode, uid, gid)
	if errno != 0 {
		x.unlock()
		return nil, errno
	}
	c.attr(&out.Attr)
	x.unlock()
	return x.child(ctx, c), 0
}

func (x *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	return x.d.remove(x.n, name, false)
}

func (x *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	return x.d.remove(x.n, name, true)
}

func (x *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	to, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	return x.d.rename(x.n, name, to.n, newName, flags)
}

func (x *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if e := x.lock(); e != 0 {
		return nil, e
	}
	defer x.unlock()
	names := slices.Sorted(maps.Keys(x.n.curEnt))
	list := make([]fuse.DirEntry, 0, len(names))
	for _, name := range names {
		c := x.n.curEnt[name]
		list = append(list, fuse.DirEntry{Name: name, Ino: c.ino, Mode: c.stable().Mode})
	}
	return fs.NewListDirStream(list), 0
}

func (x *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	if e := x.lock(); e != 0 {
		return e
	}
	defer x.unlock()
	const blocks = 1 << 24 // 64 GiB of 4 KiB blocks: plenty, it is memory
	out.Bsize, out.Frsize, out.NameLen = BlockSize, BlockSize, 255
	out.Blocks, out.Bfree, out.Bavail = blocks, blocks, blocks
	out.Files, out.Ffree = 1<<20, 1<<20
	return 0
}
