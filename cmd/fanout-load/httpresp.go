package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// This file reads HTTP/1.1 responses for the raw client (rawclient.go): the
// status code, whether the server closes the connection after it, and the
// body's length, which it discards. It knows just enough of RFC 9112 for
// what a Go server (fanout, the baseline, the sinks) answers: a status line,
// Content-Length or chunked bodies, Connection: close, HTTP/1.0, and 1xx
// answers before the real one. It allocates nothing.

// response is what the client keeps of an answer.
type response struct {
	status  int
	close   bool  // the server closes the connection after this answer
	bodyLen int64 // bytes of body read and discarded (decoded, for chunked)
}

var (
	errMalformed   = errors.New("malformed HTTP response")
	errUnsupported = errors.New("unsupported HTTP response")
)

// maxHeaderLines bounds the header fields of one answer.
const maxHeaderLines = 128

// readResponse reads one response from br and discards its body, so that br
// is at the start of the next response. A line longer than br's buffer is an
// error. Any error leaves the connection unusable.
func readResponse(br *bufio.Reader) (response, error) {
	for {
		r, err := readOneResponse(br)
		if err != nil {
			return r, err
		}
		if r.status >= 100 && r.status < 200 {
			if r.status == 101 {
				return r, fmt.Errorf("%w: 101 Switching Protocols", errUnsupported)
			}
			continue // an interim answer (100 Continue, 103 Early Hints): the real one follows
		}
		return r, nil
	}
}

func readOneResponse(br *bufio.Reader) (response, error) {
	var r response
	line, err := readLine(br)
	if err != nil {
		return r, err
	}
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return r, fmt.Errorf("%w: status line %q", errMalformed, clip(line))
	}
	var http10 bool
	switch line[7] {
	case '0':
		http10 = true
	case '1':
	default:
		return r, fmt.Errorf("%w: version %q", errUnsupported, line[:8])
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return r, fmt.Errorf("%w: status code %q", errMalformed, line[9:12])
		}
		r.status = r.status*10 + int(c-'0')
	}
	if r.status < 100 || (len(line) > 12 && line[12] != ' ') {
		return r, fmt.Errorf("%w: status line %q", errMalformed, clip(line))
	}

	contentLength := int64(-1)
	chunked, keepAlive := false, false
	for n := 0; ; n++ {
		if n == maxHeaderLines {
			return r, fmt.Errorf("%w: more than %d header lines", errMalformed, maxHeaderLines)
		}
		line, err := readLine(br)
		if err != nil {
			return r, noEOF(err)
		}
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			return r, fmt.Errorf("%w: header line %q", errMalformed, clip(line))
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if bytes.IndexByte(name, ' ') >= 0 || bytes.IndexByte(name, '\t') >= 0 {
			return r, fmt.Errorf("%w: header name %q", errMalformed, clip(name))
		}
		switch {
		case asciiEqualFold(name, "content-length"):
			n, ok := parseContentLength(value)
			if !ok || (contentLength >= 0 && n != contentLength) {
				return r, fmt.Errorf("%w: Content-Length %q", errMalformed, clip(value))
			}
			contentLength = n
		case asciiEqualFold(name, "transfer-encoding"):
			if !asciiEqualFold(value, "chunked") || chunked {
				return r, fmt.Errorf("%w: Transfer-Encoding %q", errUnsupported, clip(value))
			}
			chunked = true
		case asciiEqualFold(name, "connection"):
			if hasToken(value, "close") {
				r.close = true
			}
			if hasToken(value, "keep-alive") {
				keepAlive = true
			}
		}
	}
	if http10 && !keepAlive {
		r.close = true
	}
	if http10 && chunked {
		// HTTP/1.0 has no transfer codings: the length is unreliable.
		return r, fmt.Errorf("%w: Transfer-Encoding in an HTTP/1.0 answer", errUnsupported)
	}

	switch {
	case r.status < 200 || r.status == 204 || r.status == 304:
		return r, nil // no body, whatever the headers say
	case chunked:
		r.bodyLen, err = discardChunked(br)
		return r, err
	case contentLength >= 0:
		d, err := br.Discard(int(min(contentLength, 1<<40)))
		r.bodyLen = int64(d)
		return r, noEOF(err)
	default:
		// The body runs to the end of the connection.
		r.close = true
		n, err := io.Copy(io.Discard, br)
		r.bodyLen = n
		return r, err
	}
}

// readLine returns the next line without its CRLF (or bare LF). The slice is
// valid until the next read of br.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line longer than %d bytes", errUnsupported, br.Size())
		}
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, nil
}

// discardChunked reads a chunked body and its trailers, returning the
// decoded length.
func discardChunked(br *bufio.Reader) (int64, error) {
	var total int64
	for {
		line, err := readLine(br)
		if err != nil {
			return total, noEOF(err)
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // a chunk extension
		}
		line = trimOWS(line)
		if len(line) == 0 || len(line) > 15 {
			return total, fmt.Errorf("%w: chunk size %q", errMalformed, clip(line))
		}
		var size int64
		for _, c := range line {
			var v byte
			switch {
			case c >= '0' && c <= '9':
				v = c - '0'
			case c >= 'a' && c <= 'f':
				v = c - 'a' + 10
			case c >= 'A' && c <= 'F':
				v = c - 'A' + 10
			default:
				return total, fmt.Errorf("%w: chunk size %q", errMalformed, clip(line))
			}
			size = size<<4 | int64(v)
		}
		if size == 0 {
			break
		}
		d, err := br.Discard(int(size))
		total += int64(d)
		if err != nil {
			return total, noEOF(err)
		}
		if line, err := readLine(br); err != nil || len(line) != 0 {
			if err == nil {
				err = fmt.Errorf("%w: no CRLF after a chunk", errMalformed)
			}
			return total, noEOF(err)
		}
	}
	for n := 0; ; n++ { // trailers
		if n == maxHeaderLines {
			return total, fmt.Errorf("%w: more than %d trailer lines", errMalformed, maxHeaderLines)
		}
		line, err := readLine(br)
		if err != nil {
			return total, noEOF(err)
		}
		if len(line) == 0 {
			return total, nil
		}
	}
}

// parseContentLength accepts 1 to 18 decimal digits.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// hasToken reports whether a comma-separated header value holds token,
// compared without regard to ASCII case.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		part := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			part, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if asciiEqualFold(trimOWS(part), token) {
			return true
		}
	}
	return false
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// noEOF turns an EOF in the middle of an answer into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// clip shortens what an error quotes.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
