package webhook

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/dispatch"
)

// TestSend_Headers: the destination gets its own headers (every value of a
// repeated one), the webhook headers, one Content-Type and the User-Agent,
// at the URL's path and query exactly as configured, over HTTP and HTTPS.
func TestSend_Headers(t *testing.T) {
	t.Parallel()
	// As net/http sends them: the URL's escaped path, as written when it
	// is a valid escaping, and its query as written.
	paths := []struct{ url, want string }{
		{"/in/a%2Fb//c/../%C3%A9?x=1%202&y=%2F", "/in/a%2Fb//c/../%C3%A9?x=1%202&y=%2F"},
		{"/hooks/my hook/é?q=a%20b", "/hooks/my%20hook/%C3%A9?q=a%20b"},
	}
	for _, secure := range []bool{false, true} {
		name := map[bool]string{false: "HTTP", true: "HTTPS"}[secure]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var got http.Header
			var gotBody []byte
			var gotURI string
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got, gotURI = r.Header.Clone(), r.RequestURI
				gotBody, _ = io.ReadAll(r.Body)
				w.WriteHeader(http.StatusNoContent)
			})
			srv := httptest.NewUnstartedServer(h)
			cfg := Config{UserAgent: "fanout/test"}
			if secure {
				srv.StartTLS()
				pool := x509.NewCertPool()
				pool.AddCert(srv.Certificate())
				cfg.TLS = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
				cfg.TLS.RootCAs = pool
			} else {
				srv.Start()
			}
			defer srv.Close()
			c := NewClient(cfg)
			defer c.Close()
			body := []byte(`{"n":1}`)
			for _, p := range paths[1:] {
				if _, err := c.Send(context.Background(), &Request{URL: srv.URL + p.url, ID: "x", Body: body}); err != nil || gotURI != p.want {
					t.Errorf("Send to %q: %v; the destination got %q, want %q", p.url, err, gotURI, p.want)
				}
			}
			res, err := c.Send(context.Background(), &Request{URL: srv.URL + paths[0].url, ID: "evt_9", Body: body,
				Header: http.Header{"Authorization": {"Bearer x"}, "X-Multi": {"a", "b"}}, Keys: [][]byte{[]byte("k")}})
			if err != nil || res.StatusCode != http.StatusNoContent {
				t.Fatalf("Send = %+v, %v", res, err)
			}
			for k, want := range map[string][]string{
				"Authorization": {"Bearer x"}, "X-Multi": {"a", "b"}, "Content-Type": {"application/json"},
				"User-Agent": {"fanout/test"}, "Webhook-Id": {"evt_9"},
			} {
				if !slices.Equal(got[k], want) {
					t.Errorf("header %s = %q, want %q", k, got[k], want)
				}
			}
			if got.Get("Webhook-Timestamp") == "" || !strings.HasPrefix(got.Get("Webhook-Signature"), "v1,") {
				t.Errorf("webhook headers %v", got)
			}
			if string(gotBody) != string(body) {
				t.Errorf("body %q, want %q", gotBody, body)
			}
			if gotURI != paths[0].want {
				t.Errorf("request URI %q, want %q", gotURI, paths[0].want)
			}
		})
	}
}

// TestSend_UntrustedCertificate: a destination whose certificate does not
// verify is a TLS failure, retried (it may be renewed).
func TestSend_UntrustedCertificate(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	c := NewClient(Config{Timeout: 2 * time.Second})
	defer c.Close()
	_, err := c.Send(context.Background(), &Request{URL: srv.URL, ID: "x", Body: []byte(`{}`)})
	if got := dispatch.ErrorStatus(err); got != dispatch.StatusTLS {
		t.Fatalf("Send err=%v classified %v, want %v", err, got, dispatch.StatusTLS)
	}
}

// TestSend_StaleKeepAlive: a destination that closes a kept-alive
// connection while it is idle (its idle timeout), without saying so in its
// answer: the client finds it closed before it writes the next request, and
// sends that on a new connection; the attempt succeeds. Over TLS the close
// comes as a close_notify record before the end of the stream.
func TestSend_StaleKeepAlive(t *testing.T) {
	t.Parallel()
	for _, secure := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP", true: "HTTPS"}[secure], func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cfg := Config{Timeout: 2 * time.Second}
			scheme, serverTLS := "http", (*tls.Config)(nil)
			if secure {
				// httptest's certificate, for a server of our own.
				ts := httptest.NewTLSServer(http.NotFoundHandler())
				serverTLS = ts.TLS.Clone()
				pool := x509.NewCertPool()
				pool.AddCert(ts.Certificate())
				cfg.TLS = &tls.Config{RootCAs: pool, ServerName: "example.com"}
				ts.Close()
				scheme = "https"
			}
			var requests atomic.Int32
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					if serverTLS != nil {
						conn = tls.Server(conn, serverTLS)
					}
					go func() {
						defer conn.Close()
						req, err := http.ReadRequest(bufio.NewReader(conn))
						if err != nil {
							return
						}
						_, _ = io.Copy(io.Discard, req.Body)
						requests.Add(1)
						// Keep-alive as far as the client can tell, then
						// closed for writing (a FIN, after a close_notify
						// over TLS), still reading what the client sends:
						// its next request is written, and its answer is the
						// end of the stream.
						_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						time.Sleep(10 * time.Millisecond) // its idle timeout
						_ = conn.(interface{ CloseWrite() error }).CloseWrite()
						_ = conn.SetReadDeadline(time.Now().Add(time.Second))
						_, _ = io.Copy(io.Discard, conn)
					}()
				}
			}()
			c := NewClient(cfg)
			defer c.Close()
			for i := range 3 {
				res, err := c.Send(context.Background(), &Request{URL: scheme + "://" + ln.Addr().String(), ID: "x", Body: []byte(`{}`)})
				if err != nil || res.StatusCode != 200 {
					t.Fatalf("attempt %d: Send = %+v, %v; want 200", i, res, err)
				}
				time.Sleep(50 * time.Millisecond) // the close reaches the client's side
			}
			if n := requests.Load(); n != 3 {
				t.Errorf("the destination read %d requests, want 3: none is written into a closed connection", n)
			}
		})
	}
}

// TestSend_Cancelled: cancelling a delivery (the runtime does, for calls
// still running past its shutdown deadline) ends it at once, not at the
// attempt's timeout.
func TestSend_Cancelled(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body) // so that the server sees the client leave
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := NewClient(Config{Timeout: 30 * time.Second})
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Send(ctx, &Request{URL: srv.URL, ID: "x", Body: []byte(`{}`)})
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Send returned %v after its cancellation", took)
	}
	if got := dispatch.ErrorStatus(err); !got.Retryable() {
		t.Fatalf("Send err=%v classified %v, want a retryable status", err, got)
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("the destination got %d requests, want 1: a cancelled delivery is not sent again", n)
	}
}

// TestSend_HugeHeaders: an answer whose headers do not fit the read buffer
// is an HTTP error that says so, retried.
func TestSend_HugeHeaders(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("x", directReadBuffer))
		w.WriteHeader(200)
	}))
	defer srv.Close()
	c := NewClient(Config{Timeout: 2 * time.Second})
	defer c.Close()
	_, err := c.Send(context.Background(), &Request{URL: srv.URL, ID: "x", Body: []byte(`{}`)})
	if got := dispatch.ErrorStatus(err); got != dispatch.StatusHTTP || !strings.Contains(err.Error(), "headers exceed") {
		t.Fatalf("Send err=%v classified %v, want %v naming the headers", err, got, dispatch.StatusHTTP)
	}
}

// TestSend_IdlePoolClosed: a destination closes every idle connection of
// the pool (its idle timeout, far shorter than the client's); the next
// deliveries find them closed one after the other, none is written into
// one, and each is delivered once.
func TestSend_IdlePoolClosed(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(50 * time.Millisecond) // so that the first six need six connections
		w.WriteHeader(200)
	}))
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Start()
	defer srv.Close()
	c := NewClient(Config{Timeout: 2 * time.Second})
	defer c.Close()
	send := func() error {
		_, err := c.Send(context.Background(), &Request{URL: srv.URL, ID: "x", Body: []byte(`{}`)})
		return err
	}
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			if err := send(); err != nil {
				t.Errorf("Send: %v", err)
			}
		})
	}
	wg.Wait()
	time.Sleep(400 * time.Millisecond) // the destination closes the six idle connections
	for i := range 3 {
		if err := send(); err != nil {
			t.Errorf("delivery %d after the idle close: %v", i, err)
		}
	}
	if n := requests.Load(); n != 9 {
		t.Errorf("the destination got %d requests, want 9", n)
	}
}

// TestSend_WaitsForConnection: with every connection to a destination busy,
// a delivery waits for one, and gets a new one when the busy one closes
// (the destination answered "Connection: close").
func TestSend_WaitsForConnection(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(50 * time.Millisecond)
		w.Header().Set("Connection", "close")
		w.WriteHeader(200)
	}))
	defer srv.Close()
	c := NewClient(Config{Timeout: 5 * time.Second, MaxConnsPerHost: 1})
	defer c.Close()
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if _, err := c.Send(context.Background(), &Request{URL: srv.URL, ID: "x", Body: []byte(`{}`)}); err != nil {
				t.Errorf("Send: %v", err)
			}
		})
	}
	wg.Wait()
}

// TestSend_RetryAfterAnyCase: header names are case-insensitive; a
// destination that writes retry-after in lower case is heard.
func TestSend_RetryAfterAnyCase(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"retry-after", "RETRY-AFTER", "Retry-After"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
				if req, err := http.ReadRequest(bufio.NewReader(conn)); err == nil {
					_, _ = io.Copy(io.Discard, req.Body)
					_, _ = io.WriteString(conn, "HTTP/1.1 429 Too Many Requests\r\n"+name+": 120\r\ncontent-length: 0\r\n\r\n")
				}
			}()
			c := NewClient(Config{Timeout: 2 * time.Second})
			defer c.Close()
			_, err = c.Send(context.Background(), &Request{URL: "http://" + ln.Addr().String(), ID: "x", Body: []byte(`{}`)})
			var se *StatusError
			if !errors.As(err, &se) || se.Code != 429 || se.RetryAfter != 2*time.Minute {
				t.Fatalf("Send err=%v, want a 429 with Retry-After 2m", err)
			}
		})
	}
}
