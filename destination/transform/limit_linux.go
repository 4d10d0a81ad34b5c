package transform

import (
	"os"
	"os/exec"
	"strconv"
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

// keepInheritedFiles marks close-on-exec every file descriptor above 2 of
// this process: those fanout opens are already, but those it was started
// with (a supervisor's sockets, a shell's pipes) are not, and a worker
// that runs tenants' programs has no business holding them.
func keepInheritedFiles() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// lowerPriority makes a worker nicer than fanout by 10 (Linux's nice
// applies per thread: each of the worker's threads, and the threads they
// start inherit it), so that a program spinning until its worker is
// killed yields the CPU to fanout's own work.
func lowerPriority() {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// The raw system call answers 20 - nice.
		cur, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
		if err != nil {
			continue
		}
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, tid, min(20-cur+10, 19))
	}
}
