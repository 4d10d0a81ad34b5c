package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"fanout/dispatch"
)

// directReadBuffer is the read buffer of a direct delivery, taken from a pool
// for the time of one request: it bounds the size of an answer's status line
// and headers, which net/http allows far larger. A destination whose headers
// do not fit gets a clear error, retried like any answer that cannot be read.
const directReadBuffer = 16 << 10

// newDirectClient returns the fasthttp client of deliveries sent directly.
// Every connection it opens is dialed by dial (the guard's, when there is
// one), given TLS here for an https destination, and kept in conns: over
// TLS, conns sees what the destination says in HTTP, not in TLS records
// (see trackedConn).
func newDirectClient(cfg Config, dial func(ctx context.Context, network, addr string) (net.Conn, error), conns *connSet) *fasthttp.Client {
	base := cfg.TLS.Clone()
	if base == nil {
		base = &tls.Config{}
	}
	if base.ClientSessionCache == nil {
		base.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	}
	return &fasthttp.Client{
		ConfigureClient: func(hc *fasthttp.HostClient) error {
			secure := hc.IsTLS
			hc.DialTimeout = func(addr string, timeout time.Duration) (net.Conn, error) {
				if timeout <= 0 {
					// fasthttp dials without a timeout for a request that
					// waited for a free connection.
					timeout = cfg.Timeout
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				c, err := dial(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				var raw syscall.RawConn
				if sc, ok := c.(syscall.Conn); ok {
					raw, _ = sc.SyscallConn()
				}
				if secure {
					tc := tls.Client(c, serverConfig(base, addr))
					if err := tc.HandshakeContext(ctx); err != nil {
						_ = c.Close()
						return nil, err
					}
					c = tc
				}
				return conns.add(c, raw), nil
			}
			return nil
		},
		MaxConnsPerHost:     cfg.MaxConnsPerHost,
		MaxIdleConnDuration: 90 * time.Second,
		// The connection used last first: the others age out of the pool
		// instead of all staying barely alive, and the one taken is the
		// least likely to have been closed by the destination meanwhile.
		ConnPoolStrategy: fasthttp.LIFO,
		// Wait for a connection when all are busy, within the attempt's
		// deadline, rather than fail at once.
		MaxConnWaitTimeout: cfg.Timeout,
		// sendDirect decides on sending again (see errIdleClosed).
		MaxIdemponentCallAttempts: 1,
		ReadBufferSize:            directReadBuffer,
		NoDefaultUserAgentHeader:  true,
		// The path is sent as net/http sends it (url.URL.RequestURI).
		DisablePathNormalizing: true,
		// The body is read here, up to MaxResponseBytes (see drain).
		StreamResponseBody: true,
	}
}

// serverConfig is base for the server at addr (host:port).
func serverConfig(base *tls.Config, addr string) *tls.Config {
	c := base.Clone()
	if c.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		c.ServerName = host
	}
	return c
}

// maxIdleClosed bounds the pooled connections one attempt may find closed
// before it gives up (each is dropped from the pool as it is found).
const maxIdleClosed = 64

// sendDirect sends the delivery to its destination, at u (r.URL parsed).
func (c *Client) sendDirect(ctx context.Context, r *Request, u *url.URL, h *headers) (*Result, error) {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(u.Scheme + "://" + u.Host + u.RequestURI())
	req.Header.SetMethod(r.method())
	for k, vs := range h.extra {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.SetContentType(contentType(r))
	req.Header.SetUserAgent(h.userAgent)
	req.Header.Set("webhook-id", h.id)
	req.Header.Set("webhook-timestamp", h.timestamp)
	if h.signature != "" {
		req.Header.Set("webhook-signature", h.signature)
	}
	req.SetBodyRaw(r.Body)

	// fasthttp takes a deadline, not a context. A delivery is cancelled
	// only when the runtime gives up on the calls still running at
	// shutdown, all together: then close the connections, which ends every
	// request on them at once (net/http would end the cancelled one only).
	// A delivery still dialing, or waiting for a connection, runs on to its
	// deadline.
	stop := context.AfterFunc(ctx, func() {
		if ctx.Err() == context.Canceled {
			c.conns.closeAll()
		}
	})
	defer stop()
	deadline, _ := ctx.Deadline()
	start := time.Now()
	err := c.direct.DoDeadline(req, resp, deadline)
	for i := 0; i < maxIdleClosed && errors.Is(err, errIdleClosed) && ctx.Err() == nil; i++ {
		// Nothing was sent: the pooled connection had been closed by
		// the destination while idle. Another one, or a new one.
		err = c.direct.DoDeadline(req, resp, deadline)
	}
	if err != nil {
		return nil, c.directError(ctx, err)
	}
	var excerpt string
	if body := resp.BodyStream(); body != nil {
		excerpt = drain(body, c.maxResponseBytes)
		// Closing a body not read to its end closes its connection.
		_ = resp.CloseBodyStream()
	}
	res := &Result{StatusCode: resp.StatusCode(), Duration: time.Since(start), Excerpt: excerpt}
	return res, classify(res.StatusCode, string(resp.Header.Peek("Retry-After")), excerpt, c.now())
}

// directError classifies a failure of fasthttp's client for the runtime.
// Errors of the dial (the guard's refusal, DNS, a refused connection) and
// of TLS come through as they are, and dispatch.ErrorStatus knows them;
// fasthttp's own errors are mapped here, since it would take an error it
// does not know for a permanent one.
func (c *Client) directError(ctx context.Context, err error) error {
	var be *BlockedError
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &be):
		return be
	case ctx.Err() == context.Canceled:
		return fmt.Errorf("%w: delivery cancelled: %v", dispatch.ErrTemporary, err)
	case errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, fasthttp.ErrDialTimeout),
		errors.Is(err, fasthttp.ErrTLSHandshakeTimeout), ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("%w: no answer within %v: %v", dispatch.ErrTimeout, c.timeout, err)
	case errors.As(err, &small):
		return fmt.Errorf("%w: the destination's status line and headers exceed %d bytes", dispatch.ErrHTTP, directReadBuffer)
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return fmt.Errorf("%w: %v", dispatch.ErrTemporary, err)
	case errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, errIdleClosed):
		return fmt.Errorf("%w: the destination closed the connection without answering", dispatch.ErrTCP)
	}
	if s := dispatch.ErrorStatus(err); s != dispatch.StatusPermanent {
		return err
	}
	// What is left is an answer fasthttp could not parse.
	return fmt.Errorf("%w: unreadable answer: %v", dispatch.ErrHTTP, err)
}

// connSet holds the direct connections that are open.
type connSet struct {
	mu   sync.Mutex
	open map[*trackedConn]struct{}
}

// add tracks c; raw, when not nil, is its TCP connection's, for alive.
func (s *connSet) add(c net.Conn, raw syscall.RawConn) net.Conn {
	t := &trackedConn{Conn: c, set: s, raw: raw}
	s.mu.Lock()
	s.open[t] = struct{}{}
	s.mu.Unlock()
	return t
}

// closeAll closes every open connection: requests on them fail at once.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.open))
	for t := range s.open {
		conns = append(conns, t)
	}
	s.mu.Unlock()
	for _, t := range conns {
		_ = t.Close()
	}
}

// errIdleClosed is the failure of a request that was not sent because its
// kept-alive connection turned out closed by the destination while it was
// idle: sendDirect sends it again on another connection.
var errIdleClosed = errors.New("the destination had closed the kept-alive connection")

// trackedConn is a connection of a connSet, which it leaves when closed.
//
// Before a request is written on a connection that answered one already, it
// checks that the destination has not closed it meanwhile: net/http's client
// sees the close of an idle connection with the goroutine that reads it,
// fasthttp's has none and would write the request into a closed connection,
// where its failure could not be told from a destination that took the
// request and then hung up. The check peeks at the socket without waiting:
// an end of stream, an error, or bytes (over TLS, the close_notify alert;
// over HTTP, nothing may come before a request) mean closed, and the
// request is not written. A close that races the check fails the attempt,
// as with net/http.
type trackedConn struct {
	net.Conn
	set  *connSet
	raw  syscall.RawConn // of the TCP connection under TLS; nil: no check
	once sync.Once
	// Used by the one request on the connection at a time.
	readOne bool // bytes were read since the last write
}

func (t *trackedConn) Write(p []byte) (int, error) {
	if t.readOne { // the first write of a request on a used connection
		t.readOne = false
		if !t.alive() {
			return 0, errIdleClosed
		}
	}
	return t.Conn.Write(p)
}

func (t *trackedConn) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	if n > 0 {
		t.readOne = true
	}
	return n, err
}

// Handshake is that of the TLS connection inside, if any: fasthttp takes a
// connection with a Handshake method for one that has TLS already.
func (t *trackedConn) Handshake() error {
	if h, ok := t.Conn.(interface{ Handshake() error }); ok {
		return h.Handshake()
	}
	return nil
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.set.mu.Lock()
		delete(t.set.open, t)
		t.set.mu.Unlock()
	})
	return t.Conn.Close()
}
