package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// proc is a server this tool started: fanout, or the baseline.
type proc struct {
	cmd  *exec.Cmd
	addr string
	dir  string
	keep bool // leave dir for a look afterwards (--keep-data)
	mu   sync.Mutex
	tail []string // last lines of its stderr, for errors
	done chan error
}

var listenRE = regexp.MustCompile(`(?:msg="fanout listening" addr=|baseline listening )(?:http://)?(\S+)`)

// startProc starts a server and waits for the line that gives its address.
func startProc(ctx context.Context, name string, args []string, dir string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, dir: dir, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.tail = append(p.tail, line)
			if len(p.tail) > 40 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	go func() { p.done <- cmd.Wait() }()
	select {
	case p.addr = <-addr:
		return p, nil
	case err := <-p.done:
		return nil, fmt.Errorf("%s exited before listening: %v\n%s", name, err, p.logs())
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("%s did not listen within 30s\n%s", name, p.logs())
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return nil, ctx.Err()
	}
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// peakRSS returns the process's peak resident set size in bytes, from
// /proc (Linux); 0 elsewhere.
func (p *proc) peakRSS() int64 { return p.status("VmHWM:") }

// rss returns the process's resident set size in bytes now.
func (p *proc) rss() int64 { return p.status("VmRSS:") }

// status reads a field in kB of /proc/<pid>/status, in bytes.
func (p *proc) status(field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// resetPeakRSS starts the process's peak RSS (VmHWM) anew, where Linux
// allows it (clear_refs 5, Linux 4.0 and later); it reports whether it did.
func (p *proc) resetPeakRSS() bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.cmd.Process.Pid), []byte("5"), 0) == nil
}

// cpuSeconds returns the CPU time (user and system) the process has used,
// from /proc (Linux); 0 elsewhere.
func (p *proc) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// stop sends SIGTERM and waits, then kills. The data directory stays (see
// cleanup), so that it can be measured.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("did not stop within 60s of SIGTERM; killed")
	}
}

// cleanup removes the data directory, unless it is to be kept.
func (p *proc) cleanup() {
	if p.dir != "" && !p.keep {
		_ = os.RemoveAll(p.dir)
	}
}

// startFanout starts --fanout on loopback with a fresh data directory and the
// sinks as destinations, and returns it and its base URL; with --url it
// returns no process and the URL.
func startFanout(ctx context.Context, o *options, sk *sink, stderr io.Writer) (*proc, string, error) {
	base := strings.TrimSuffix(o.url, "/")
	if o.fanoutBin == "" {
		if sk != nil {
			fmt.Fprintf(stderr, "sinks: configure the fanout at %s with --destination %s\n", base, strings.Join(sk.urls(), " --destination "))
		}
		return nil, base, nil
	}
	dir, err := os.MkdirTemp("", "fanout-load-")
	if err != nil {
		return nil, "", err
	}
	args := []string{"--addr", "127.0.0.1:0", "--data", dir}
	if sk != nil {
		// The sinks listen on loopback, which fanout's SSRF guard refuses
		// unless it is allowed; allow exactly the sinks' address.
		args = append(args, "--allow-network", "127.0.0.1/32")
		for _, u := range sk.urls() {
			args = append(args, "--destination", u)
		}
	}
	if o.token != "" {
		args = append(args, "--api-token", o.token)
	}
	args = append(args, o.fanoutArgs...)
	server, err := startProc(ctx, o.fanoutBin, args, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, "", err
	}
	if o.keepData {
		server.keep = true
		fmt.Fprintf(stderr, "fanout's data directory, kept: %s\n", dir)
	}
	return server, "http://" + server.addr, nil
}

// stopFanout stops fanout cleanly and says so if it did not.
func stopFanout(server *proc, stderr io.Writer) {
	if err := server.stop(); err != nil {
		fmt.Fprintf(stderr, "fanout stopped with %v\n%s\n", err, server.logs())
	}
}

func runFanout(ctx context.Context, o *options, stderr io.Writer) (*report, error) {
	var sk *sink
	if o.sinks > 0 {
		var err error
		sk, err = startSink("127.0.0.1:0", o.sinks, o.sinkLatency, o.faults, o.faulty)
		if err != nil {
			return nil, err
		}
		defer sk.close()
	}
	server, base, err := startFanout(ctx, o, sk, stderr)
	if err != nil {
		return nil, err
	}
	if server == nil {
		return drive(ctx, "fanout", base, o, sk, stderr, nil)
	}
	defer server.cleanup()
	r, err := drive(ctx, "fanout", base, o, sk, stderr, server)
	if err != nil {
		stopFanout(server, stderr)
		return nil, err
	}
	r.PeakRSSMiB = float64(server.peakRSS()) / (1 << 20)
	running, runningFiles, err := dirSize(server.dir)
	stopFanout(server, stderr)
	if err == nil {
		stopped, stoppedFiles, err := dirSize(server.dir)
		if err == nil {
			r.Disk = newDiskReport(r.Accepted, o.sinks, eventBytes(newRunID(), o.eventSize), running, stopped)
			r.Disk.RunningFiles, r.Disk.StoppedFiles = runningFiles, stoppedFiles
		}
	}
	return r, nil
}

func runBaseline(ctx context.Context, o *options, stderr io.Writer) (*report, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	server, err := startProc(ctx, self, []string{"baseline-server", "--addr", "127.0.0.1:0"}, "")
	if err != nil {
		return nil, err
	}
	defer server.stop()
	bo := *o
	bo.sinks = 0 // the baseline delivers nothing
	r, err := drive(ctx, "baseline", "http://"+server.addr, &bo, nil, stderr, server)
	if err != nil {
		return nil, err
	}
	r.PeakRSSMiB = float64(server.peakRSS()) / (1 << 20)
	return r, nil
}

// serveBaseline is the trivial server: it reads the body, checks that it is
// JSON, and answers 202 with an id, as fanout does, with no storage at all.
func serveBaseline(args []string) error {
	fs := flag.NewFlagSet("baseline-server", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	var n atomic.Int64
	handler := func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<20))
		if err != nil || !json.Valid(body) {
			http.Error(w, `{"error":"bad"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"id":"%d"}`+"\n", n.Add(1))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/event", handler)
	mux.HandleFunc("POST /v1/batch", handler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(os.Stderr, "baseline listening %s\n", ln.Addr())
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
