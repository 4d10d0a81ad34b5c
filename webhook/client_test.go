package webhook

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"fanout/dispatch"
)

func TestSend_Outcomes(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		wantErr    bool
		wantStatus dispatch.Status
		wantAfter  time.Duration
		excerpt    string
	}{
		{name: "OK", status: 200, wantStatus: dispatch.StatusOK},
		{name: "NoContent", status: 204, wantStatus: dispatch.StatusOK},
		{name: "Accepted", status: 202, body: "queued", wantStatus: dispatch.StatusOK, excerpt: "queued"},
		{name: "ServerError", status: 500, body: "db down", wantErr: true, wantStatus: dispatch.StatusTemporary, excerpt: "db down"},
		{name: "BadGateway", status: 502, wantErr: true, wantStatus: dispatch.StatusTemporary},
		{name: "NotImplemented", status: 501, wantErr: true, wantStatus: dispatch.StatusTemporary},
		{name: "RequestTimeout", status: 408, wantErr: true, wantStatus: dispatch.StatusTimeout},
		{name: "TooEarly", status: 425, wantErr: true, wantStatus: dispatch.StatusTemporary},
		{name: "TooManyRequests", status: 429, wantErr: true, wantStatus: dispatch.StatusThrottled},
		{name: "RetryAfterSeconds", status: 429, header: map[string]string{"Retry-After": "120"}, wantErr: true,
			wantStatus: dispatch.StatusThrottled, wantAfter: 2 * time.Minute},
		{name: "RetryAfterDate", status: 503, header: map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)},
			wantErr: true, wantStatus: dispatch.StatusTemporary, wantAfter: 90 * time.Second},
		{name: "RetryAfterGarbage", status: 503, header: map[string]string{"Retry-After": "soon"}, wantErr: true,
			wantStatus: dispatch.StatusTemporary},
		{name: "BadRequest", status: 400, body: `{"error":"schema"}`, wantErr: true, wantStatus: dispatch.StatusPermanent, excerpt: `{"error":"schema"}`},
		{name: "Unauthorized", status: 401, wantErr: true, wantStatus: dispatch.StatusPermanent},
		{name: "NotFound", status: 404, wantErr: true, wantStatus: dispatch.StatusPermanent},
		{name: "Gone", status: 410, wantErr: true, wantStatus: dispatch.StatusPermanent},
		{name: "RedirectNotFollowed", status: 302, header: map[string]string{"Location": "/elsewhere"}, wantErr: true,
			wantStatus: dispatch.StatusPermanent},
		{name: "MovedPermanentlyNotFollowed", status: 301, header: map[string]string{"Location": "/elsewhere"}, wantErr: true,
			wantStatus: dispatch.StatusPermanent},
		{name: "TemporaryRedirectNotFollowed", status: 307, header: map[string]string{"Location": "/elsewhere"}, wantErr: true,
			wantStatus: dispatch.StatusPermanent},
		{name: "PermanentRedirectNotFollowed", status: 308, header: map[string]string{"Location": "/elsewhere"}, wantErr: true,
			wantStatus: dispatch.StatusPermanent},
		{name: "NegativeRetryAfterIgnored", status: 503, header: map[string]string{"Retry-After": "-3"}, wantErr: true,
			wantStatus: dispatch.StatusTemporary},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got *http.Request
			var gotBody []byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/elsewhere" {
					t.Error("the client followed a redirect")
				}
				got = r
				gotBody, _ = io.ReadAll(r.Body)
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			c := NewClient(Config{Now: func() time.Time { return now }})
			defer c.Close()
			body := []byte(" {\"a\" : \"<&>\"}\n")
			res, err := c.Send(context.Background(), &Request{URL: srv.URL + "/hook", ID: "evt_1", Body: body})
			if (err != nil) != tc.wantErr {
				t.Fatalf("Send err=%v, want error=%v", err, tc.wantErr)
			}
			if s := dispatch.ErrorStatus(err); s != tc.wantStatus {
				t.Fatalf("status of %v = %v, want %v", err, s, tc.wantStatus)
			}
			if res == nil || res.StatusCode != tc.status || res.Excerpt != tc.excerpt {
				t.Fatalf("result %+v, want status %d excerpt %q", res, tc.status, tc.excerpt)
			}
			var se *StatusError
			if tc.wantErr && (!errors.As(err, &se) || se.RetryAfter != tc.wantAfter) {
				t.Fatalf("error %#v, want a StatusError with RetryAfter %v", err, tc.wantAfter)
			}
			if string(gotBody) != string(body) {
				t.Fatalf("destination got %q, want the exact bytes %q", gotBody, body)
			}
			if got.Header.Get("webhook-id") != "evt_1" || got.Header.Get("Content-Type") != "application/json" ||
				got.Header.Get("webhook-timestamp") != "1772366400" {
				t.Fatalf("headers %v", got.Header)
			}
		})
	}
}

func TestSend_Failures(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	// Cleanups, not defers: the subtests run in parallel, after this
	// function returns. They run last first: hang is closed before Close,
	// which waits for the handler.
	t.Cleanup(hanging.Close)
	t.Cleanup(func() { close(hang) })
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		chunk := []byte(strings.Repeat("x", 32<<10))
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(endless.Close)
	// A port that refuses: listen, note the address, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	tests := []struct {
		name string
		url  string
		want dispatch.Status
	}{
		{"Hangs", hanging.URL, dispatch.StatusTimeout},
		{"Refused", refused, dispatch.StatusTCP},
		{"EndlessBody", endless.URL, dispatch.StatusTemporary},
		{"BadURL", "http://[::1", dispatch.StatusPermanent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := NewClient(Config{Timeout: 300 * time.Millisecond, MaxResponseBytes: 1 << 20})
			defer c.Close()
			start := time.Now()
			_, err := c.Send(context.Background(), &Request{URL: tc.url, ID: "x", Body: []byte(`{}`)})
			if got := dispatch.ErrorStatus(err); got != tc.want {
				t.Fatalf("Send err=%v classified %v, want %v", err, got, tc.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("Send took %v: the timeout does not bound it", took)
			}
		})
	}
}

// TestSend_BoundedRead: the answer's body is read up to MaxResponseBytes and
// no further, whatever its size, and the status line alone decides the
// outcome. The excerpt kept for the record is valid UTF-8, at most
// ExcerptBytes, even when the cut falls inside a character.
//
// The client's connections count the bytes it reads: at most the limit, the
// status line and headers, and one buffer of the client's reader beyond. Both
// ends' socket buffers are small, so that a body the client stops reading
// cannot disappear into them: the destination's write of it fails.
func TestSend_BoundedRead(t *testing.T) {
	t.Parallel()
	multibyte := strings.Repeat("é", ExcerptBytes) // 2 bytes each: the cut at 512 is a boundary
	odd := "x" + strings.Repeat("€", ExcerptBytes) // 3 bytes each after one: the cut splits a character
	const sockBuf = 32 << 10
	const readSlack = directReadBuffer + 4<<10 // one read buffer, and the status line and headers
	tests := []struct {
		name    string
		status  int
		body    string // when not endless
		endless bool
		wantErr bool
		// cut: the body is far larger than the limit and both socket
		// buffers: the destination's write must fail.
		cut bool
	}{
		{name: "EndlessOK", status: 200, endless: true, cut: true},
		{name: "EndlessServerError", status: 500, endless: true, wantErr: true, cut: true},
		{name: "HugeOK", status: 200, body: strings.Repeat("0123456789abcdef", (16<<20)/16), cut: true},
		{name: "JustOverTheLimit", status: 200, body: strings.Repeat("x", DefaultMaxResponseBytes+1)},
		{name: "MultibyteExcerpt", status: 200, body: multibyte},
		{name: "SplitCharacterExcerpt", status: 400, body: odd, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var written atomic.Int64
			done := make(chan error, 1)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				if !tc.endless {
					n, err := io.WriteString(w, tc.body)
					written.Add(int64(n))
					done <- err
					return
				}
				chunk := []byte(strings.Repeat("endless ", 4096))
				for range (1 << 30) / len(chunk) { // bounded: 1 GiB means the client read it all
					if _, err := w.Write(chunk); err != nil {
						done <- err
						return
					}
					written.Add(int64(len(chunk)))
				}
				done <- nil
			}))
			srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
				if err := c.(*net.TCPConn).SetWriteBuffer(sockBuf); err != nil {
					t.Errorf("SetWriteBuffer: %v", err)
				}
				return ctx
			}
			srv.Start()
			defer srv.Close()
			var read atomic.Int64
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				if err := c.(*net.TCPConn).SetReadBuffer(sockBuf); err != nil {
					t.Errorf("SetReadBuffer: %v", err)
				}
				return &countingConn{Conn: c, read: &read}, nil
			}
			c := NewClient(Config{Timeout: 10 * time.Second, DialContext: dial})
			defer c.Close()
			res, err := c.Send(context.Background(), &Request{URL: srv.URL, ID: "x", Body: []byte(`{}`)})
			if (err != nil) != tc.wantErr || res == nil || res.StatusCode != tc.status {
				t.Fatalf("Send = %+v, %v; want status %d and error %v", res, err, tc.status, tc.wantErr)
			}
			if len(res.Excerpt) > ExcerptBytes || !utf8.ValidString(res.Excerpt) {
				t.Errorf("excerpt of %d bytes, valid UTF-8 %v: want at most %d bytes of valid UTF-8",
					len(res.Excerpt), utf8.ValidString(res.Excerpt), ExcerptBytes)
			}
			if !tc.endless && !strings.HasPrefix(tc.body, res.Excerpt) {
				t.Errorf("excerpt %q is not the start of the body", res.Excerpt)
			}
			if n := read.Load(); n > DefaultMaxResponseBytes+readSlack {
				t.Errorf("the client read %d bytes of the answer, over the limit of %d (+ %d for the head and a buffer)",
					n, DefaultMaxResponseBytes, readSlack)
			}
			select {
			case werr := <-done:
				if tc.cut && werr == nil {
					t.Errorf("the destination wrote all %d bytes of its answer: the client read them, or they sat in the socket buffers", written.Load())
				}
				if !tc.cut && werr != nil {
					t.Errorf("the destination's answer of %d bytes failed to write: %v", len(tc.body), werr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the destination was still writing 10s after Send returned: the client kept reading")
			}
		})
	}
}

// countingConn counts the bytes read from a connection into read.
type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// TestSend_DNSFailure: a destination whose name does not resolve is a DNS
// error, which is retried (the name may come back). The client resolves
// through a DNS server on loopback in the test, so that no lookup leaves the
// machine: one that answers NXDOMAIN, and a port where none listens.
func TestSend_DNSFailure(t *testing.T) {
	t.Parallel()
	nxdomain := fakeDNS(t)
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := ln.LocalAddr().String()
	ln.Close()
	for _, tc := range []struct{ name, server string }{{"NoSuchHost", nxdomain}, {"NoServer", nobody}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dialer := &net.Dialer{Timeout: 2 * time.Second, Resolver: &net.Resolver{
				PreferGo: true,
				Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "udp", tc.server)
				},
			}}
			c := NewClient(Config{Timeout: 2 * time.Second, DialContext: dialer.DialContext})
			defer c.Close()
			_, err := c.Send(context.Background(), &Request{URL: "http://fanout-test.invalid/hook", ID: "x", Body: []byte(`{}`)})
			var dnsErr *net.DNSError
			if !errors.As(err, &dnsErr) {
				t.Fatalf("Send err=%v, want a DNS error", err)
			}
			if got := dispatch.ErrorStatus(err); got != dispatch.StatusDNS || !got.Retryable() {
				t.Fatalf("Send err=%v classified %v, want %v (retried)", err, got, dispatch.StatusDNS)
			}
		})
	}
}

// fakeDNS serves, on a loopback UDP port, a DNS server that answers every
// query NXDOMAIN: the query itself with the response, recursion-available
// and name-error bits set.
func fakeDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if n < 12 {
				continue
			}
			msg := append([]byte(nil), buf[:n]...)
			msg[2] |= 0x80                  // QR: a response
			msg[3] = msg[3]&0x70 | 0x80 | 3 // RA, RCODE 3: no such name
			_, _ = pc.WriteTo(msg, addr)
		}
	}()
	return pc.LocalAddr().String()
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"30", 30 * time.Second, true},
		{" 5 ", 5 * time.Second, true},
		{"-1", 0, false},
		{"", 0, false},
		{"tomorrow", 0, false},
		{now.Add(time.Hour).Format(http.TimeFormat), time.Hour, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"99999999999999", 365 * 24 * time.Hour, true},
		// Beyond int64 it is still a number of seconds, cut to a year (it
		// used to be no delay at all).
		{"99999999999999999999", 365 * 24 * time.Hour, true},
		{"007", 7 * time.Second, true},
		// Not delay-seconds (1*DIGIT), nor a date (it used to read as 5s).
		{"+5", 0, false},
		{"-0", 0, false},
		// A date far away is cut to a year too (it used to come back as
		// the largest Duration, 292 years).
		{"Fri, 31 Dec 9999 23:59:59 GMT", 365 * 24 * time.Hour, true},
	}
	for _, tc := range tests {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q)=%v,%v, want %v,%v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzParseRetryAfter checks parseRetryAfter against retryAfterRef, an
// independent reading of RFC 9110's Retry-After: where the reference reads a
// delay, parseRetryAfter must read the same one. Where the reference refuses
// the value, parseRetryAfter must refuse it too, unless Go's HTTP date parser
// (http.ParseTime), which is lenient (names in any case, a one-digit hour,
// fractions of a second), reads a date in it: the delay must then be that
// date's, within a year.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"120", "Wed, 21 Oct 2015 07:28:00 GMT", "", "-5", "1e9", "Sun, 06 Nov 1994 08:49:37 GMT",
		"Sun, 01 Mar 2026 12:00:01 GMT", "Sunday, 01-Mar-26 12:30:00 GMT", "Sun Mar  1 13:00:00 2026", "Sun Mar 15 13:00:00 2026",
		"Mon, 01 Mar 2027 12:00:01 GMT", "31536000", "31536001", "00000000000000000000000000000007", "99999999999999999999",
		// Lenient forms that http.ParseTime reads.
		"sun, 01 mar 2026 12:00:30 GMT", "Sun, 01 Mar 2026 12:00:30.5 GMT", "Sun Mar 1 12:00:30 2026", "Sun, 01 Mar 2026 2:00:30 GMT"} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseRetryAfter(v, now)
		want, wantOK := retryAfterRef(v, now)
		switch {
		case wantOK:
			if !ok || d != want {
				t.Fatalf("parseRetryAfter(%q) = %v, %v; want %v, true", v, d, ok, want)
			}
		case ok:
			date, err := http.ParseTime(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("parseRetryAfter(%q) = %v, true; want no delay: it is neither seconds nor a date", v, d)
			}
			if want := min(max(date.Sub(now), 0), refYear); d != want {
				t.Fatalf("parseRetryAfter(%q) = %v; the date it names is %v away, so want %v", v, d, date.Sub(now), want)
			}
		case d != 0:
			t.Fatalf("parseRetryAfter(%q) = %v, false; want 0 with false", v, d)
		}
	})
}

// refYear is the farthest delay parseRetryAfter reports (its doc comment).
const refYear = 365 * 24 * time.Hour

// retryAfterRef reads a Retry-After value as RFC 9110 (10.2.3) defines it,
// delay-seconds (1*DIGIT) or an HTTP-date (5.6.7: IMF-fixdate, or the
// obsolete rfc850-date and asctime-date), around white space; the delay is
// cut to refYear, and a date in the past is no delay. Two choices follow Go's
// time package rather than the RFC, in corners no destination reaches: a
// two-digit year 69-99 is 19xx (the RFC would read 2069-2076 as future years
// until 2026+), and a leap second (:60) is no time.
func retryAfterRef(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		var secs int64
		for _, c := range v {
			secs = min(secs*10+int64(c-'0'), int64(refYear/time.Second)+1) // saturates above a year
		}
		return min(time.Duration(secs)*time.Second, refYear), true
	}
	t, ok := httpDateRef(v)
	if !ok {
		return 0, false
	}
	return min(max(t.Sub(now), 0), refYear), true
}

// httpDateRef reads the three forms of an HTTP-date, by their fixed layout:
//
//	IMF-fixdate    Sun, 06 Nov 1994 08:49:37 GMT
//	rfc850-date    Sunday, 06-Nov-94 08:49:37 GMT
//	asctime-date   Sun Nov  6 08:49:37 1994
func httpDateRef(v string) (time.Time, bool) {
	days := []string{"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
	months := []string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
	digits := func(s string, spaceFirst bool) (int, bool) {
		if spaceFirst && len(s) == 2 && s[0] == ' ' {
			s = s[1:]
		}
		n := 0
		for _, c := range []byte(s) {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, s != ""
	}
	month := func(s string) (time.Month, bool) {
		for i, m := range months {
			if s == m {
				return time.Month(i + 1), true
			}
		}
		return 0, false
	}
	shortDay := func(s string) bool {
		for _, d := range days {
			if s == d[:3] {
				return true
			}
		}
		return false
	}
	longDay := func(s string) bool { return slices.Contains(days, s) }

	// The fields of the date, by form: where each sits in v.
	var day, mon, year, clock string
	var dayOK bool
	switch {
	case len(v) == 29 && v[3:5] == ", " && v[7] == ' ' && v[11] == ' ' && v[16] == ' ' && v[25:] == " GMT":
		dayOK, day, mon, year, clock = shortDay(v[:3]), v[5:7], v[8:11], v[12:16], v[17:25]
	case len(v) == 24 && v[3] == ' ' && v[7] == ' ' && v[10] == ' ' && v[19] == ' ':
		dayOK, mon, day, clock, year = shortDay(v[:3]), v[4:7], v[8:10], v[11:19], v[20:]
	default:
		name, rest, found := strings.Cut(v, ", ")
		if !found || len(rest) != 22 || rest[2] != '-' || rest[6] != '-' || rest[9] != ' ' || rest[18:] != " GMT" {
			return time.Time{}, false
		}
		dayOK, day, mon, year, clock = longDay(name), rest[0:2], rest[3:6], rest[7:9], rest[10:18]
	}
	d, ok1 := digits(day, len(v) == 24) // asctime pads the day with a space
	m, ok2 := month(mon)
	y, ok3 := digits(year, false)
	if len(year) == 2 {
		if y >= 69 {
			y += 1900
		} else {
			y += 2000
		}
	}
	if len(clock) != 8 || clock[2] != ':' || clock[5] != ':' {
		return time.Time{}, false
	}
	hh, ok4 := digits(clock[0:2], false)
	mm, ok5 := digits(clock[3:5], false)
	ss, ok6 := digits(clock[6:8], false)
	if !dayOK || !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || hh > 23 || mm > 59 || ss > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, m, d, hh, mm, ss, 0, time.UTC)
	if t.Day() != d || t.Month() != m { // 31 Feb, day 0
		return time.Time{}, false
	}
	return t, true
}
