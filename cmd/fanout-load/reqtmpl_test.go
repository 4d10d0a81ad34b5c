package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
)

func TestBuildRequest(t *testing.T) {
	const runID = "0a1b2c3d"
	tests := []struct {
		name    string
		path    string
		headers []header
		size, n int
		batch   bool
	}{
		{name: "one event", path: "/v1/event", size: 200, n: 1},
		{name: "an event smaller than the smallest", path: "/v1/event", size: 10, n: 1},
		{name: "a batch", path: "/v1/batch", size: 300, n: 10, batch: true},
		{name: "a batch of one", path: "/v1/batch", size: 200, n: 1, batch: true},
		{name: "a token", path: "/v1/event", size: 4096, n: 1, headers: []header{{"Authorization", "Bearer 0123456789abcdef"}}},
		{name: "a delivery", path: "/d/3", size: 200, n: 1, headers: []header{
			{"User-Agent", "fanout/dev"}, {"Webhook-Id", headerSeq}, {"Webhook-Signature", "v1,abc="},
			{"Webhook-Timestamp", headerTS}, {"Accept-Encoding", "gzip"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := buildRequest("127.0.0.1:8000", tt.path, tt.headers, runID, tt.size, tt.n, tt.batch)
			const first, ns = 123456789, 1795981107123456789
			r.fill(first, ns)
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(r.buf)))
			if err != nil {
				t.Fatalf("not an HTTP request: %v\n%s", err, r.buf)
			}
			body, err := io.ReadAll(req.Body)
			if err != nil {
				t.Fatal(err)
			}
			if req.Method != "POST" || req.URL.Path != tt.path || req.Host != "127.0.0.1:8000" ||
				req.Header.Get("Content-Type") != "application/json" {
				t.Errorf("request %s %s host %s, type %q", req.Method, req.URL.Path, req.Host, req.Header.Get("Content-Type"))
			}
			if !bytes.Equal(body, r.body()) || req.ContentLength != int64(len(body)) {
				t.Errorf("body of %d bytes (Content-Length %d), want %d", len(body), req.ContentLength, len(r.body()))
			}
			var events []map[string]any
			if tt.batch {
				err = json.Unmarshal(body, &events)
			} else {
				var e map[string]any
				err = json.Unmarshal(body, &e)
				events = append(events, e)
			}
			if err != nil || len(events) != tt.n {
				t.Fatalf("body is not %d JSON events: %v\n%s", tt.n, err, body)
			}
			size := eventBytes(runID, tt.size)
			if want := tt.n*size + tt.n - 1; tt.batch && len(body) != want+2 || !tt.batch && len(body) != want {
				t.Errorf("body of %d bytes for %d events of %d", len(body), tt.n, size)
			}
			if tt.size >= eventShell+len(runID) && size != tt.size {
				t.Errorf("event of %d bytes, want --size %d", size, tt.size)
			}
			for i, e := range events {
				if want := loadID(runID, int64(first+i)); e["load_id"] != want {
					t.Errorf("event %d: load_id %v, want %s", i, e["load_id"], want)
				}
				if e["sent_ns"] != float64(ns) || e["type"] != "load.test" {
					t.Errorf("event %d: %v", i, e)
				}
			}
			for _, h := range tt.headers {
				got := req.Header.Get(h.name)
				switch h.value {
				case headerSeq:
					if want := headerSeqPrefix + "000123456789"; got != want {
						t.Errorf("%s: %q, want %q", h.name, got, want)
					}
				case headerTS:
					if want := strconv.FormatInt(int64(ns)/1e9, 10); got != want {
						t.Errorf("%s: %q, want %q", h.name, got, want)
					}
				default:
					if got != h.value {
						t.Errorf("%s: %q, want %q", h.name, got, h.value)
					}
				}
			}
		})
	}
}

// TestRequestFill_AllocatesNothing: only digits change from one send to
// the next.
func TestRequestFill_AllocatesNothing(t *testing.T) {
	r := buildRequest("h:1", "/v1/batch", []header{{"Webhook-Timestamp", headerTS}}, "0a1b2c3d", 200, 100, true)
	seq := int64(0)
	allocs := testing.AllocsPerRun(100, func() {
		seq += 100
		r.fill(seq, 1795981107123456789+seq*1e9)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per fill, want 0", allocs)
	}
}

func TestParseEvent(t *testing.T) {
	r := buildRequest("h:1", "/d/0", nil, "0a1b2c3d", 200, 1, false)
	r.fill(42, 1795981107123456789)
	tests := []struct {
		name   string
		in     string
		id     string
		sentNS int64
		ok     bool
	}{
		{name: "the load's own", in: string(r.body()), id: "0a1b2c3d-000000000042", sentNS: 1795981107123456789, ok: true},
		{name: "last field", in: `{"load_id":"a-1","sent_ns":7}`, id: "a-1", sentNS: 7, ok: true},
		{name: "fields reordered", in: `{"sent_ns":7,"load_id":"a-1"}`},
		{name: "white space", in: `{ "load_id":"a-1","sent_ns":7}`},
		{name: "escaped id", in: `{"load_id":"a\"1","sent_ns":7}`},
		{name: "empty id", in: `{"load_id":"","sent_ns":7}`},
		{name: "no time", in: `{"load_id":"a-1","sent_ns":}`},
		{name: "time as a string", in: `{"load_id":"a-1","sent_ns":"7"}`},
		{name: "time cut", in: `{"load_id":"a-1","sent_ns":7`},
		{name: "time too long", in: `{"load_id":"a-1","sent_ns":12345678901234567890}`},
		{name: "not JSON", in: `load_id=a-1`},
		{name: "empty", in: ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ns, ok := parseEvent([]byte(tt.in))
			if ok != tt.ok || string(id) != tt.id || ns != tt.sentNS {
				t.Errorf("parseEvent(%s) = %q, %d, %v; want %q, %d, %v", tt.in, id, ns, ok, tt.id, tt.sentNS, tt.ok)
			}
		})
	}
}

func TestPutDigits(t *testing.T) {
	tests := []struct {
		v     int64
		width int
		want  string
	}{
		{0, 3, "000"},
		{7, 3, "007"},
		{999, 3, "999"},
		{1234, 3, "234"}, // the low digits of a number too long
		{1795981107123456789, 19, "1795981107123456789"},
	}
	for _, tt := range tests {
		b := make([]byte, tt.width)
		putDigits(b, tt.v)
		if string(b) != tt.want {
			t.Errorf("putDigits(%d, %d) = %q, want %q", tt.v, tt.width, b, tt.want)
		}
	}
}

func TestSplitBase(t *testing.T) {
	tests := []struct {
		base, hostport, path string
		err                  bool
	}{
		{base: "http://127.0.0.1:8000", hostport: "127.0.0.1:8000"},
		{base: "http://localhost", hostport: "localhost:80"},
		{base: "http://[::1]:9/prefix/", hostport: "[::1]:9", path: "/prefix"},
		{base: "https://example.com", err: true},
		{base: "::", err: true},
	}
	for _, tt := range tests {
		hp, p, err := splitBase(tt.base)
		if (err != nil) != tt.err || hp != tt.hostport || p != tt.path {
			t.Errorf("splitBase(%q) = %q, %q, %v", tt.base, hp, p, err)
		}
	}
}
