package pgtest

import (
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a database and can, on command, refuse
// them (the server is gone) or swallow their traffic (the network drops
// everything), to test what happens when the database is unreachable.
type Proxy struct {
	// URL is the database URL with the proxy in the server's place.
	URL    string
	target string
	ln     net.Listener
	mu     sync.Mutex
	mode   string
	conns  map[net.Conn]bool
}

// Proxy modes.
const (
	Forward   = "forward"   // pass traffic both ways
	Refuse    = "refuse"    // close every connection, and each new one at once
	Blackhole = "blackhole" // keep connections open, pass nothing
)

// StartProxy starts a proxy on loopback in front of the server of dbURL
// (a postgres:// URL); it stops at the end of the test.
func StartProxy(t testing.TB, dbURL string) *Proxy {
	t.Helper()
	parsed, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{target: parsed.Host, ln: ln, mode: Forward, conns: map[net.Conn]bool{}}
	parsed.Host = ln.Addr().String()
	p.URL = parsed.String()
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Set(Refuse)
	})
	return p
}

// Set switches the mode.
func (p *Proxy) Set(mode string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	if mode == Refuse {
		for c := range p.conns {
			c.Close()
		}
		p.conns = map[net.Conn]bool{}
	}
}

func (p *Proxy) current() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		p.conns[c] = true
		p.mu.Unlock()
		if mode == Refuse {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[up] = true
		p.mu.Unlock()
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies from src to dst while the proxy forwards, and drops what it
// reads while it is a black hole.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && p.current() == Forward {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
