// Package webhook sends events to destination URLs over HTTP and turns what
// the destination answers into an outcome the dispatch runtime understands:
// success, a failure worth retrying (with the destination's Retry-After), or
// a permanent failure.
package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"fanout/dispatch"
)

// Defaults of a Client.
const (
	DefaultTimeout = 10 * time.Second
	// DefaultMaxResponseBytes bounds how much of a response is read: enough
	// to keep the connection reusable for ordinary answers and to quote an
	// error, never the whole of an endless body.
	DefaultMaxResponseBytes = 64 << 10
	// ExcerptBytes is how much of a response body an outcome quotes.
	ExcerptBytes = 512
)

// Client sends webhooks. It is safe for concurrent use.
//
// A delivery sent directly goes through fasthttp's client, which writes the
// request and reads the answer in the caller's goroutine, from pooled
// buffers: net/http's client hands every request to two goroutines of its
// connection and allocates its request and response, which made it the
// largest cost of a delivery after the store (docs/BENCHMARKS.md, issue 12's
// third pass). A delivery through a proxy goes
// through net/http, whose proxy support (absolute-form requests, CONNECT,
// SOCKS5) fasthttp does not match.
type Client struct {
	direct           *fasthttp.Client
	conns            *connSet // direct connections, for cancellation
	proxied          *http.Client
	guard            *Guard
	proxy            func(*http.Request) (*url.URL, error)
	timeout          time.Duration
	maxResponseBytes int64
	userAgent        string
	now              func() time.Time
}

// Config configures a Client.
type Config struct {
	// Timeout bounds one attempt: connecting, sending and reading the
	// answer (default DefaultTimeout).
	Timeout time.Duration
	// MaxResponseBytes bounds how much of a response is read (default
	// DefaultMaxResponseBytes). A longer body is cut and its connection
	// closed.
	MaxResponseBytes int64
	// MaxConnsPerHost bounds the connections to one destination host
	// (default 256).
	MaxConnsPerHost int
	// UserAgent is sent with every request.
	UserAgent string
	// Guard, when set, refuses destinations at addresses it blocks: at
	// dial time, after DNS (with the guard's resolver), and before a
	// request is handed to a proxy.
	Guard *Guard
	// Proxy chooses the proxy of a request, as http.Transport.Proxy does;
	// nil sends every request directly. The proxy itself is dialed without
	// the guard's check: the operator named it.
	Proxy func(*http.Request) (*url.URL, error)
	// DialContext dials connections when there is no Guard; nil is a plain
	// net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLS configures HTTPS (nil: the system's roots).
	TLS *tls.Config
	// Now is the clock of webhook-timestamp (default time.Now).
	Now func() time.Time
}

// NewClient returns a client. Redirects are not followed: a destination that
// redirects is misconfigured, and following would send the event to a URL
// nobody configured.
func NewClient(cfg Config) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.MaxConnsPerHost <= 0 {
		cfg.MaxConnsPerHost = 256
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "fanout"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	direct := cfg.DialContext
	if direct == nil {
		direct = (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext
	}
	dial := direct
	if cfg.Guard != nil {
		dial = cfg.Guard.DialContext(cfg.Timeout)
	}
	c := &Client{
		conns:            &connSet{open: make(map[*trackedConn]struct{})},
		guard:            cfg.Guard,
		proxy:            cfg.Proxy,
		timeout:          cfg.Timeout,
		maxResponseBytes: cfg.MaxResponseBytes,
		userAgent:        cfg.UserAgent,
		now:              cfg.Now,
	}
	c.direct = newDirectClient(cfg, dial, c.conns)
	if cfg.Proxy != nil {
		c.proxied = newProxiedClient(cfg, dial, direct)
	}
	return c
}

// newProxiedClient returns the net/http client of deliveries through a
// proxy. It dials the proxy without the guard (the operator named it), and
// anything else through the guard.
func newProxiedClient(cfg Config, guarded, direct func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if p := proxyOf(ctx); p != nil && p.addr == addr {
			return direct(ctx, network, addr)
		}
		return guarded(ctx, network, addr)
	}
	transport := &http.Transport{
		// Send decides on the proxy, so that it can check the
		// destination first; the transport follows its decision.
		Proxy: func(r *http.Request) (*url.URL, error) {
			if p := proxyOf(r.Context()); p != nil {
				return p.url, nil
			}
			return nil, nil
		},
		DialContext:           dial,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   cfg.MaxConnsPerHost,
		MaxConnsPerHost:       cfg.MaxConnsPerHost,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       cfg.TLS,
	}
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Close closes idle connections.
func (c *Client) Close() {
	c.direct.CloseIdleConnections()
	if c.proxied != nil {
		c.proxied.CloseIdleConnections()
	}
}

// Request is one delivery attempt.
type Request struct {
	// Method is POST when empty (a destination's transformation may
	// choose another).
	Method string
	URL    string
	// ID is the webhook-id header: the same on every attempt, so that a
	// receiver can drop a duplicate.
	ID   string
	Body []byte
	// ContentType is the body's; "" is application/json (a raw event
	// has its own).
	ContentType string
	// Header holds extra headers (a destination's own).
	Header http.Header
	// Keys sign the delivery (see Sign); none, no signature.
	Keys [][]byte
}

// Result is what the destination answered to a successful attempt: the
// output of a delivery, kept in the store as JSON.
type Result struct {
	StatusCode int           `json:"status"`
	Duration   time.Duration `json:"duration_ns"`
	// Excerpt is the start of the response body, for the record.
	Excerpt string `json:"excerpt,omitempty"`
	// Cancelled, when set, says why nothing was sent: the destination's
	// transformation cancelled the delivery (StatusCode is then 0).
	Cancelled string `json:"cancelled,omitempty"`
}

// method is r's method, POST by default.
func (r *Request) method() string {
	if r.Method == "" {
		return http.MethodPost
	}
	return r.Method
}

// Send makes one attempt. It returns the result whenever the destination
// answered, and an error when the attempt failed; the error is classified for
// the dispatch runtime: network errors, timeouts, 408, 425, 429 and 5xx are
// retried (with the destination's Retry-After), other answers are permanent.
//
// The status line decides the outcome; a body that fails to arrive in full
// (cut at the limit, or the timeout) changes nothing to it.
func (c *Client) Send(ctx context.Context, r *Request) (*Result, error) {
	u, err := url.Parse(r.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: bad destination URL: %v", dispatch.ErrPermanent, redactError(err))
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: bad destination URL %q: want http:// or https:// and a host", dispatch.ErrPermanent, Redact(u))
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	h := &headers{userAgent: c.userAgent, id: r.ID, extra: r.Header}
	ts := c.now().Unix()
	h.timestamp = strconv.FormatInt(ts, 10)
	if len(r.Keys) > 0 {
		h.signature = Sign(r.Keys, r.ID, ts, r.Body)
	}
	if c.proxy != nil {
		p, err := c.route(ctx, u)
		if err != nil {
			return nil, err
		}
		if p != nil {
			return c.sendProxied(ctx, r, h, p)
		}
	}
	return c.sendDirect(ctx, r, u, h)
}

// contentType is the Content-Type of a request's body.
func contentType(r *Request) string {
	if r.ContentType != "" {
		return r.ContentType
	}
	return "application/json"
}

// headers are the headers of one attempt.
type headers struct {
	userAgent, id, timestamp, signature string
	extra                               http.Header // the destination's own
}

// sendProxied sends through net/http, to the proxy p.
func (c *Client) sendProxied(ctx context.Context, r *Request, h *headers, p *proxyRoute) (*Result, error) {
	ctx = context.WithValue(ctx, proxyKey{}, p)
	req, err := http.NewRequestWithContext(ctx, r.method(), r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return nil, fmt.Errorf("%w: bad destination URL: %v", dispatch.ErrPermanent, redactError(err))
	}
	for k, v := range h.extra {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", contentType(r))
	req.Header.Set("User-Agent", h.userAgent)
	req.Header.Set("webhook-id", h.id)
	req.Header.Set("webhook-timestamp", h.timestamp)
	if h.signature != "" {
		req.Header.Set("webhook-signature", h.signature)
	}
	start := time.Now()
	resp, err := c.proxied.Do(req)
	if err != nil {
		err = redactError(err) // net/http's error carries the whole URL
		if ctx.Err() == context.DeadlineExceeded {
			return nil, fmt.Errorf("%w: no answer within %v: %v", dispatch.ErrTimeout, c.timeout, err)
		}
		return nil, err // classified by dispatch.ErrorStatus: network errors are retried
	}
	excerpt := drain(resp.Body, c.maxResponseBytes)
	resp.Body.Close()
	res := &Result{StatusCode: resp.StatusCode, Duration: time.Since(start), Excerpt: excerpt}
	return res, classify(resp.StatusCode, resp.Header.Get("Retry-After"), excerpt, c.now())
}

// drain reads at most limit bytes of body, so that the connection can be
// reused, and returns the start of it as text.
func drain(body io.Reader, limit int64) string {
	var buf bytes.Buffer
	_, _ = io.Copy(&buf, io.LimitReader(body, limit))
	b := buf.Bytes()
	if len(b) > ExcerptBytes {
		b = b[:ExcerptBytes]
	}
	for len(b) > 0 && !utf8.Valid(b) {
		b = b[:len(b)-1]
	}
	return strings.TrimSpace(string(b))
}

// StatusError is the error of a non-2xx answer.
type StatusError struct {
	Code       int
	Excerpt    string
	RetryAfter time.Duration
	status     dispatch.Status
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("destination answered %d %s", e.Code, http.StatusText(e.Code))
	if e.Excerpt != "" {
		msg += ": " + e.Excerpt
	}
	return msg
}

// Status classifies the answer for the dispatch runtime.
func (e *StatusError) Status() dispatch.Status { return e.status }

// AttemptDetail is what the record of a failed attempt keeps of the answer
// (dispatch.Detailer): the API shows it, and reads it back with
// ParseAttemptDetail rather than knowing its JSON.
type AttemptDetail struct {
	StatusCode int    `json:"status_code"`
	Excerpt    string `json:"excerpt,omitempty"`
	RetryAfter string `json:"retry_after,omitempty"`
}

// ParseAttemptDetail reads the detail of a recorded attempt; ok is false
// when there is none or it is not one of ours (a network error has none).
func ParseAttemptDetail(b []byte) (d AttemptDetail, ok bool) {
	if len(b) == 0 || json.Unmarshal(b, &d) != nil {
		return AttemptDetail{}, false
	}
	return d, true
}

// Detail describes the answer in the record of the attempt.
func (e *StatusError) Detail() any {
	return AttemptDetail{StatusCode: e.Code, Excerpt: e.Excerpt, RetryAfter: durationString(e.RetryAfter)}
}

func durationString(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}

// classify turns the status of an answer, and its Retry-After, into the
// attempt's error: nil for a 2xx.
func classify(code int, retryAfter string, excerpt string, now time.Time) error {
	if code >= 200 && code < 300 {
		return nil
	}
	e := &StatusError{Code: code, Excerpt: excerpt, status: dispatch.StatusPermanent}
	switch {
	case code == http.StatusRequestTimeout:
		e.status = dispatch.StatusTimeout
	case code == http.StatusTooManyRequests:
		e.status = dispatch.StatusThrottled
	case code == http.StatusTooEarly || code >= 500:
		e.status = dispatch.StatusTemporary
	}
	if !e.status.Retryable() {
		return e
	}
	if d, ok := parseRetryAfter(retryAfter, now); ok {
		e.RetryAfter = d
		return dispatch.RetryAfter(e, d)
	}
	return e
}

// maxRetryAfter bounds what parseRetryAfter returns, in either form: the
// retry policy caps a hint much lower, and the bound keeps the recorded
// value a sane duration.
const maxRetryAfter = 365 * 24 * time.Hour

// parseRetryAfter reads a Retry-After header: a number of seconds (digits
// only, RFC 9110's delay-seconds, however many) or an HTTP date, at most a
// year away.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		// Only digits: ParseUint fails only beyond 64 bits, far past the cap.
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter), true
	}
	return 0, false
}

// IsStatus reports whether err is a StatusError with this code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}
