// Command floor is the least a durable fan-out can do per event, for
// fanout-load to measure beside fanout (docs/BENCHMARKS.md, issue 24): it
// takes fanout's flags (--addr, --data, --destination; others are
// ignored), and for each POST /v1/event writes the body to a file and
// fsyncs it, answers 202, then POSTs the body to every destination at once
// over keep-alive connections. No store, no retries, no records of
// deliveries: its CPU per event at a given rate is a floor for fanout's on
// the same machine.
//
//	go build -o /tmp/floor ./cmd/fanout-load/floor
//	fanout-load --fanout /tmp/floor --mode event --sinks 2 --rate 100 -d 10s
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	data := fs.String("data", os.TempDir(), "directory of the log file")
	var dests, ignored list
	fs.Var(&dests, "destination", "destination URL (repeatable)")
	fs.Var(&ignored, "allow-network", "ignored")
	fs.Var(&ignored, "api-token", "ignored")
	fs.Var(&ignored, "debug-addr", "ignored")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	f, err := os.OpenFile(filepath.Join(*data, "floor.log"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var (
		mu  sync.Mutex // one writer at a time, as SQLite's
		off int64
		seq atomic.Int64
	)
	page := make([]byte, 4096)
	http.HandleFunc("POST /v1/event", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		copy(page, body)
		_, err = f.WriteAt(page, off)
		if err == nil {
			err = f.Sync()
		}
		off = (off + 4096) % (64 << 20)
		mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		id := seq.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"id":"%d"}`, id)
		for i, d := range dests {
			go func() {
				req, _ := http.NewRequest("POST", d, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("webhook-id", fmt.Sprintf("%d.%d", id, i))
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}()
		}
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "msg=\"fanout listening\" addr=http://%s\n", ln.Addr())
	_ = http.Serve(ln, nil)
}
