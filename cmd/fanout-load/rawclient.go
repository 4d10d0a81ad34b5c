package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// A sender sends one pre-built request and returns the answer's status. Each
// load goroutine owns one: none is safe for concurrent use.
type sender interface {
	send(ctx context.Context, r *request) (status int, err error)
	close()
}

// The clients of --client.
const (
	clientRaw     = "raw"
	clientNetHTTP = "nethttp"
)

// rawConn is the cheap client: one keep-alive HTTP/1.1 connection, written
// to with the request's pre-built bytes in one write and read with a
// reusable bufio.Reader. It redials after an error or a Connection: close.
type rawConn struct {
	addr       string // host:port
	conn       net.Conn
	br         *bufio.Reader
	deadlineAt time.Time // when the deadline was last pushed back
	timeout    time.Duration
}

func newRawConn(addr string, timeout time.Duration) *rawConn {
	return &rawConn{addr: addr, timeout: timeout}
}

func (c *rawConn) send(ctx context.Context, r *request) (int, error) {
	if c.conn == nil {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, err
		}
		c.conn = conn
		if c.br == nil {
			c.br = bufio.NewReaderSize(conn, 16<<10)
		} else {
			c.br.Reset(conn)
		}
		c.deadlineAt = time.Time{}
	}
	// Pushing the deadline back costs a timer update: do it once a second,
	// with room for a whole timeout after that.
	if now := time.Now(); now.Sub(c.deadlineAt) > time.Second {
		_ = c.conn.SetDeadline(now.Add(c.timeout + time.Second))
		c.deadlineAt = now
	}
	if _, err := c.conn.Write(r.buf); err != nil {
		c.close()
		return 0, err
	}
	resp, err := readResponse(c.br)
	if err != nil {
		c.close()
		return 0, err
	}
	if resp.close {
		c.close()
	}
	return resp.status, nil
}

func (c *rawConn) close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
}

// netHTTPConn sends through net/http's client, as the load tool did before
// the raw client: kept for comparison (--client nethttp).
type netHTTPConn struct {
	client *http.Client
	url    string
	header http.Header
}

func newNetHTTPConn(client *http.Client, base string, path string, header http.Header) *netHTTPConn {
	return &netHTTPConn{client: client, url: base + path, header: header}
}

func (c *netHTTPConn) send(ctx context.Context, r *request) (int, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", c.url, bytes.NewReader(r.body()))
	if err != nil {
		return 0, err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (c *netHTTPConn) close() {}

// newNetHTTPClient is the net/http client of --client nethttp, as the load
// tool has always configured it.
func newNetHTTPClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        conns * 2,
			MaxIdleConnsPerHost: conns * 2,
			IdleConnTimeout:     time.Minute,
		},
	}
}

// splitBase returns host:port and the path prefix of an http:// base URL.
func splitBase(base string) (hostport, path string, err error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", "", err
	}
	if u.Scheme != "http" {
		return "", "", fmt.Errorf("the raw client speaks plain http only, not %q (use --client nethttp)", base)
	}
	hostport = u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "80")
	}
	return hostport, strings.TrimSuffix(u.Path, "/"), nil
}
