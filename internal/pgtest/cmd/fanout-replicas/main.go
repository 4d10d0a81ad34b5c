// Command fanout-replicas stands in for the fanout binary where a tool
// starts one fanout (the load tool's --fanout) and measures several
// replicas on PostgreSQL instead: it starts a throwaway PostgreSQL cluster
// (or uses FANOUT_REPLICAS_DATABASE_URL, in a fresh schema), starts
// FANOUT_REPLICAS replicas of FANOUT_REPLICAS_BIN on it with the arguments
// it was given, and, for more than one replica, listens where it was told
// to (--addr) and hands each client connection to the next replica in
// turn. It prints fanout's "fanout listening" line, and on SIGTERM stops
// the replicas (SIGTERM), then the cluster.
//
//	go build -o bin/fanout . && go build -o bin/fanout-replicas ./internal/pgtest/cmd/fanout-replicas
//	FANOUT_REPLICAS=3 go run ./cmd/fanout-load --fanout bin/fanout-replicas --fanout-arg=--allow-network=127.0.0.0/8 ...
//
// The load tool's CPU and RSS figures then describe this process (the
// connection balancer), not the replicas or PostgreSQL.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
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

	"github.com/jackc/pgx/v5"

	"fanout/internal/pgtest"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fanout-replicas:", err)
		os.Exit(1)
	}
}

var listeningRE = regexp.MustCompile(`msg="fanout listening" addr=(?:http://)?(\S+)`)

func run(args []string) error {
	n := 3
	if v := os.Getenv("FANOUT_REPLICAS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			return fmt.Errorf("FANOUT_REPLICAS=%q: want a positive number", v)
		}
	}
	bin := os.Getenv("FANOUT_REPLICAS_BIN")
	if bin == "" {
		bin = "bin/fanout"
	}
	// The address to serve on is ours; each replica gets a port of its own.
	addr := "127.0.0.1:0"
	var rest []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--addr" && i+1 < len(args):
			addr = args[i+1]
			i++
		case strings.HasPrefix(a, "--addr="):
			addr = strings.TrimPrefix(a, "--addr=")
		default:
			rest = append(rest, a)
		}
	}

	dbURL, cleanup, err := database()
	if err != nil {
		return err
	}
	defer cleanup()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var replicas []*replica
	defer func() {
		for _, r := range replicas {
			r.stop()
		}
	}()
	for i := range n {
		r, err := start(bin, append([]string{"--addr", "127.0.0.1:0", "--database-url", dbURL}, rest...), i)
		if err != nil {
			return err
		}
		replicas = append(replicas, r)
	}
	if n == 1 {
		fmt.Fprintf(os.Stderr, "level=INFO msg=\"fanout listening\" addr=http://%s replicas=1\n", replicas[0].addr)
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintf(os.Stderr, "level=INFO msg=\"fanout listening\" addr=http://%s replicas=%d\n", ln.Addr(), n)
	go balance(ln, replicas)
	<-ctx.Done()
	return nil
}

// database returns the URL of a fresh schema, on FANOUT_REPLICAS_DATABASE_URL
// or on a throwaway cluster, and what removes it.
func database() (string, func(), error) {
	if base := os.Getenv("FANOUT_REPLICAS_DATABASE_URL"); base != "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		schema := "replicas_" + hex.EncodeToString(b[:])
		if err := exec1(base, "CREATE SCHEMA "+schema); err != nil {
			return "", nil, err
		}
		return pgtest.WithSearchPath(base, schema), func() { _ = exec1(base, "DROP SCHEMA "+schema+" CASCADE") }, nil
	}
	bin, err := pgtest.FindBin()
	if err != nil {
		return "", nil, fmt.Errorf("%v: set FANOUT_REPLICAS_DATABASE_URL, or apt-get install postgresql", err)
	}
	c, err := pgtest.Start(bin)
	if err != nil {
		return "", nil, err
	}
	return c.URL("postgres"), func() { _ = c.Stop() }, nil
}

func exec1(url, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

type replica struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

// start runs one replica, passing its log on (but its "listening" line,
// which would name the wrong address), and waits until it listens.
func start(bin string, args []string, i int) (*replica, error) {
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &replica{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
				continue
			}
			fmt.Fprintf(os.Stderr, "replica=%d %s\n", i, sc.Text())
		}
	}()
	go func() { _ = cmd.Wait(); close(r.done) }()
	select {
	case r.addr = <-addr:
		return r, nil
	case <-r.done:
		return nil, fmt.Errorf("replica %d exited before listening: %v", i, cmd.ProcessState)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("replica %d did not listen within 30s", i)
	}
}

func (r *replica) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// balance hands each connection to the next replica in turn; the load
// tool's clients keep their connections alive, so the load splits evenly.
func balance(ln net.Listener, replicas []*replica) {
	var next atomic.Int64
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r := replicas[int(next.Add(1)-1)%len(replicas)]
		go func() {
			defer c.Close()
			up, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(up, c)
				closeWrite(up)
			}()
			_, _ = io.Copy(c, up)
			closeWrite(c)
			wg.Wait()
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
