package transform

import (
	"os/exec"
	"syscall"
)

// setHardMemoryLimit caps the process's data segment (RLIMIT_DATA: its
// heap and every private anonymous mapping since Linux 4.7), where Go's
// heap lives: past it the kernel refuses memory and the Go runtime ends the
// process ("fatal error: runtime: out of memory"). RLIMIT_AS would count
// the address space Go reserves without using, and stop a worker long
// before its heap is large.
func setHardMemoryLimit(limit int64) error {
	return syscall.Setrlimit(syscall.RLIMIT_DATA, &syscall.Rlimit{Cur: uint64(limit), Max: uint64(limit)})
}

// hardMemoryLimit says whether setHardMemoryLimit enforces anything here.
const hardMemoryLimit = true

// tieToParent makes the kernel kill the worker when fanout ends, however
// it ends (a SIGKILL leaves no time to stop workers).
func tieToParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
