package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    response
		wantErr error // nil: success; errAny: any error
		rest    string
	}{
		{name: "content-length",
			in:   "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"id\":1}\nNEXT",
			want: response{status: 202, bodyLen: 9}, rest: "NEXT"},
		{name: "no reason phrase",
			in:   "HTTP/1.1 204\r\n\r\n",
			want: response{status: 204}},
		{name: "bare LF line ends",
			in:   "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
			want: response{status: 200, bodyLen: 2}},
		{name: "header names in any case, values trimmed",
			in:   "HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: \t3 \r\nCONNECTION:  Close\r\n\r\nabc",
			want: response{status: 200, bodyLen: 3, close: true}},
		{name: "connection close among tokens",
			in:   "HTTP/1.1 503 Service Unavailable\r\nConnection: upgrade, close\r\nContent-Length: 0\r\n\r\n",
			want: response{status: 503, close: true}},
		{name: "chunked, extensions and trailers",
			in:   "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT",
			want: response{status: 202, bodyLen: 14}, rest: "NEXT"},
		{name: "chunked, upper-case hex",
			in:   "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n1F\r\n" + strings.Repeat("x", 31) + "\r\n0\r\n\r\n",
			want: response{status: 200, bodyLen: 31}},
		{name: "204 has no body whatever it says",
			in:   "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nNEXT",
			want: response{status: 204}, rest: "NEXT"},
		{name: "304 has no body",
			in:   "HTTP/1.1 304 Not Modified\r\n\r\nNEXT",
			want: response{status: 304}, rest: "NEXT"},
		{name: "interim answers are skipped",
			in:   "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
			want: response{status: 201, bodyLen: 1}},
		{name: "HTTP/1.0 closes by default",
			in:   "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
			want: response{status: 200, bodyLen: 1, close: true}},
		{name: "HTTP/1.0 keep-alive",
			in:   "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
			want: response{status: 200, bodyLen: 1}},
		{name: "no length: the body runs to the end",
			in:   "HTTP/1.1 200 OK\r\n\r\nall of it",
			want: response{status: 200, bodyLen: 9, close: true}},
		{name: "the same Content-Length twice",
			in:   "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
			want: response{status: 200, bodyLen: 1}},

		{name: "closed before an answer", in: "", wantErr: io.EOF},
		{name: "status line cut", in: "HTTP/1.1 20", wantErr: io.ErrUnexpectedEOF},
		{name: "headers cut", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", wantErr: io.ErrUnexpectedEOF},
		{name: "body cut", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", wantErr: io.ErrUnexpectedEOF},
		{name: "chunk cut", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", wantErr: io.ErrUnexpectedEOF},
		{name: "not HTTP", in: "SSH-2.0-OpenSSH\r\n\r\n", wantErr: errMalformed},
		{name: "HTTP/2 status line", in: "HTTP/2 200 OK\r\n\r\n", wantErr: errMalformed},
		{name: "HTTP/1.2", in: "HTTP/1.2 200 OK\r\n\r\n", wantErr: errUnsupported},
		{name: "two-digit status", in: "HTTP/1.1 20 OK\r\n\r\n", wantErr: errMalformed},
		{name: "status below 100", in: "HTTP/1.1 099 Odd\r\n\r\n", wantErr: errMalformed},
		{name: "four-digit status", in: "HTTP/1.1 2000 OK\r\n\r\n", wantErr: errMalformed},
		{name: "101", in: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", wantErr: errUnsupported},
		{name: "negative length", in: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", wantErr: errMalformed},
		{name: "two lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", wantErr: errMalformed},
		{name: "length with a sign", in: "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", wantErr: errMalformed},
		{name: "HTTP/1.0 chunked", in: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", wantErr: errUnsupported},
		{name: "gzip transfer coding", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", wantErr: errUnsupported},
		{name: "header without a colon", in: "HTTP/1.1 200 OK\r\nContent-Length 1\r\n\r\nx", wantErr: errMalformed},
		{name: "folded header", in: "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", wantErr: errMalformed},
		{name: "space before the colon", in: "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx", wantErr: errMalformed},
		{name: "bad chunk size", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", wantErr: errMalformed},
		{name: "chunk without CRLF", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n", wantErr: errMalformed},
		{name: "line too long", in: "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 5000) + "\r\n\r\n", wantErr: errUnsupported},
		{name: "too many headers", in: "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: y\r\n", maxHeaderLines+1) + "\r\n", wantErr: errMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in), 4096)
			got, err := readResponse(br)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tt.rest {
				t.Errorf("left %q unread, want %q", rest, tt.rest)
			}
		})
	}
}

// TestReadResponse_Sequence reads answers back to back from one reader, as
// on a keep-alive connection.
func TestReadResponse_Sequence(t *testing.T) {
	in := "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}" +
		"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" +
		"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 3\r\n\r\nno\n"
	br := bufio.NewReader(strings.NewReader(in))
	for i, want := range []int{202, 202, 503} {
		r, err := readResponse(br)
		if err != nil || r.status != want {
			t.Fatalf("answer %d: %+v, %v; want %d", i, r, err, want)
		}
	}
	if _, err := readResponse(br); err != io.EOF {
		t.Fatalf("after the last answer: %v, want EOF", err)
	}
}

// TestReadResponse_AllocatesNothing: the point of the raw client.
func TestReadResponse_AllocatesNothing(t *testing.T) {
	one := "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nDate: Sat, 29 Nov 2026 12:00:00 GMT\r\nContent-Length: 48\r\n\r\n{\"id\":\"01a21f4d-fc58-7a16-94d8-32106577de72\"}\n\n\n\n"
	r := strings.NewReader(one)
	br := bufio.NewReader(r)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(one)
		br.Reset(r)
		if _, err := readResponse(br); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per answer, want 0", allocs)
	}
}

// FuzzReadResponse: no input makes the reader panic or read past what it
// was given, and an answer it accepts is one net/http reads alike (the same
// status, the same body length) whenever net/http accepts it too. Seeds are
// in testdata/fuzz/FuzzReadResponse.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 202 Accepted\r\nContent-Length: 9\r\n\r\n{\"id\":1}\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		br := bufio.NewReaderSize(src, 512)
		got, err := readResponse(br)
		if err != nil {
			return
		}
		if got.status < 200 || got.status > 999 || got.bodyLen < 0 || got.bodyLen > int64(len(in)) {
			t.Fatalf("accepted %+v from %d bytes", got, len(in))
		}
		consumed := len(in) - src.Len() - br.Buffered()
		if consumed < 0 || consumed > len(in) {
			t.Fatalf("consumed %d of %d bytes", consumed, len(in))
		}
		// net/http, on the same bytes, skipping interim answers as its
		// Transport does.
		nbr := bufio.NewReaderSize(bytes.NewReader(in), 512)
		resp, err := http.ReadResponse(nbr, nil)
		for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != 101 {
			resp, err = http.ReadResponse(nbr, nil)
		}
		if err != nil {
			return
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return
		}
		if resp.StatusCode != got.status {
			t.Fatalf("status %d, net/http says %d", got.status, resp.StatusCode)
		}
		if n != got.bodyLen {
			t.Fatalf("body of %d bytes, net/http says %d", got.bodyLen, n)
		}
	})
}
