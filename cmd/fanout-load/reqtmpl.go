package main

import (
	"strconv"
	"strings"
)

// The load's events have a fixed shape and a fixed size, so that a request
// can be built once and only its variable parts rewritten in place before
// each send:
//
//	{"load_id":"<run id>-<12-digit sequence number>","sent_ns":<19-digit Unix ns>,"type":"load.test","pad":"xxx..."}
//
// The sinks read load_id (to count deliveries) and sent_ns (for the
// ingest-to-delivery latency).

const (
	seqDigits  = 12 // up to 10^12 events in a run
	nsDigits   = 19 // Unix nanoseconds until the year 2286
	tsDigits   = 10 // Unix seconds until the year 2286
	eventShell = len(`{"load_id":"-","sent_ns":,"type":"load.test","pad":""}`) + seqDigits + nsDigits
)

// eventBytes is the size of one event of the load: --size exactly, unless
// that is smaller than the smallest event.
func eventBytes(runID string, size int) int {
	return max(size, eventShell+len(runID))
}

// request is a pre-built HTTP request: its head and its body in one buffer,
// with the offsets of what changes from one send to the next.
type request struct {
	buf      []byte
	bodyAt   int   // where the body starts in buf
	seqAt    []int // of each event's sequence number
	nsAt     []int // of each event's sent_ns
	hdrSeqAt int   // of a sequence number in the head (webhook-id), or -1
	hdrTSAt  int   // of a Unix time in seconds in the head (webhook-timestamp), or -1
	lastTS   int64
}

// header is one header field of a request head.
type header struct{ name, value string }

// buildRequest builds a POST of n events to path on host; batch wraps them in
// a JSON array. The head carries the given headers after Host,
// Content-Length and Content-Type; a header whose value is headerSeq or
// headerTS gets a slot rewritten at every send.
func buildRequest(host, path string, headers []header, runID string, size, n int, batch bool) *request {
	evSize := eventBytes(runID, size)
	pad := strings.Repeat("x", evSize-eventShell-len(runID))
	bodyLen := n*evSize + n - 1 // the commas
	if batch {
		bodyLen += 2
	}
	r := &request{hdrSeqAt: -1, hdrTSAt: -1}
	var b []byte
	b = append(b, "POST "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(bodyLen), 10)
	b = append(b, "\r\nContent-Type: application/json\r\n"...)
	for _, h := range headers {
		b = append(b, h.name...)
		b = append(b, ": "...)
		switch h.value {
		case headerSeq:
			r.hdrSeqAt = len(b) + len(headerSeqPrefix)
			b = append(b, headerSeqPrefix...)
			b = append(b, strings.Repeat("0", seqDigits)...)
		case headerTS:
			r.hdrTSAt = len(b)
			b = append(b, strings.Repeat("0", tsDigits)...)
		default:
			b = append(b, h.value...)
		}
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	r.bodyAt = len(b)
	if batch {
		b = append(b, '[')
	}
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"load_id":"`...)
		b = append(b, runID...)
		b = append(b, '-')
		r.seqAt = append(r.seqAt, len(b))
		b = append(b, strings.Repeat("0", seqDigits)...)
		b = append(b, `","sent_ns":`...)
		r.nsAt = append(r.nsAt, len(b))
		b = append(b, strings.Repeat("0", nsDigits)...)
		b = append(b, `,"type":"load.test","pad":"`...)
		b = append(b, pad...)
		b = append(b, `"}`...)
	}
	if batch {
		b = append(b, ']')
	}
	r.buf = b
	return r
}

// headerSeq and headerTS are placeholders for buildRequest's headers.
const (
	headerSeq = "\x00seq"
	headerTS  = "\x00ts"
	// headerSeqPrefix makes a webhook-id of the shape of fanout's UUIDv7s
	// (36 characters) around a sequence number.
	headerSeqPrefix = "00000000-0000-7000-8000-"
)

// fill numbers the events first, first+1, ... and stamps them sentNS.
func (r *request) fill(first, sentNS int64) {
	for i, at := range r.seqAt {
		putDigits(r.buf[at:at+seqDigits], first+int64(i))
	}
	for _, at := range r.nsAt {
		putDigits(r.buf[at:at+nsDigits], sentNS)
	}
	if r.hdrSeqAt >= 0 {
		putDigits(r.buf[r.hdrSeqAt:r.hdrSeqAt+seqDigits], first)
	}
	if r.hdrTSAt >= 0 {
		if ts := sentNS / 1e9; ts != r.lastTS {
			putDigits(r.buf[r.hdrTSAt:r.hdrTSAt+tsDigits], ts)
			r.lastTS = ts
		}
	}
}

// body is the request's body.
func (r *request) body() []byte { return r.buf[r.bodyAt:] }

// putDigits writes v in decimal into dst, zero-padded on the left to all of
// dst (the low digits only, if v has more).
func putDigits(dst []byte, v int64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
}

// loadID is the load_id of event seq, as the sinks see it.
func loadID(runID string, seq int64) string {
	b := make([]byte, 0, len(runID)+1+seqDigits)
	b = append(b, runID...)
	b = append(b, '-')
	b = append(b, make([]byte, seqDigits)...)
	putDigits(b[len(runID)+1:], seq)
	return string(b)
}

// parseEvent reads load_id and sent_ns from an event of the load without a
// JSON decoder: they are the first two fields, as buildRequest writes them.
// ok is false for anything else (the caller may then try a decoder).
func parseEvent(b []byte) (id []byte, sentNS int64, ok bool) {
	const idKey, nsKey = `{"load_id":"`, `","sent_ns":`
	if len(b) < len(idKey) || string(b[:len(idKey)]) != idKey {
		return nil, 0, false
	}
	rest := b[len(idKey):]
	end := -1
	for i, c := range rest {
		if c == '"' || c == '\\' {
			if c == '"' {
				end = i
			}
			break
		}
	}
	if end <= 0 {
		return nil, 0, false
	}
	id, rest = rest[:end], rest[end:]
	if len(rest) < len(nsKey) || string(rest[:len(nsKey)]) != nsKey {
		return nil, 0, false
	}
	rest = rest[len(nsKey):]
	n := 0
	for n < len(rest) && n < 19 && rest[n] >= '0' && rest[n] <= '9' {
		sentNS = sentNS*10 + int64(rest[n]-'0')
		n++
	}
	if n == 0 || n == len(rest) || (rest[n] != ',' && rest[n] != '}') {
		return nil, 0, false
	}
	return id, sentNS, true
}
