//go:build unix

package webhook

import "syscall"

// alive peeks at the socket without waiting and reports whether it is open
// with nothing to read, as an idle connection should be.
func (t *trackedConn) alive() bool {
	if t.raw == nil {
		return true
	}
	var b [1]byte
	open := false
	err := t.raw.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = err == syscall.EAGAIN
		return true // done: never wait for the socket
	})
	return err == nil && open
}
