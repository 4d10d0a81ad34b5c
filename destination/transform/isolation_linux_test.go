package transform

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestIsolation_WorkerProcess: a worker holds no file of fanout's beyond
// its pipes (not even one fanout was started with, not close-on-exec),
// runs nicer than fanout, and is capped in memory by the kernel.
func TestIsolation_WorkerProcess(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "inherited")
	fd, err := syscall.Open(path, syscall.O_CREAT|syscall.O_RDWR, 0o600) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	e, p := isolated(t, slow, Isolation{Workers: 1, Memory: 64 << 20})
	prog, _ := e.Program("dst_1", "function handler(w) {}")
	if _, err := e.Run(context.Background(), prog, Event{ID: "e"}, order); err != nil {
		t.Fatal(err)
	}
	var pid int
	p.mu.Lock()
	for w := range p.live {
		pid = w.cmd.Process.Pid
	}
	p.mu.Unlock()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, f.Name())); target == path {
			t.Errorf("the worker holds fanout's file %s as fd %s", path, f.Name())
		}
	}
	self, _ := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	worker, err := syscall.Getpriority(syscall.PRIO_PROCESS, pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := min(20-self+10, 19); 20-worker != want {
		t.Errorf("the worker's nice is %d, fanout's %d; want %d", 20-worker, 20-self, want)
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(64 << 20 * raceMemoryFactor)
	if !containsLine(string(limits), "Max data size", want) {
		t.Errorf("the worker's limits:\n%s\nwant a data size of %s bytes", limits, want)
	}
}

func containsLine(text, prefix, field string) bool {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			for _, f := range strings.Fields(line[len(prefix):]) {
				if f == field {
					return true
				}
			}
		}
	}
	return false
}
