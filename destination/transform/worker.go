package transform

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"time"
)

// A worker is fanout's own executable, started again with WorkerEnv set,
// that runs transformations for its parent, one at a time, over its
// standard input and output. It exists because goja bounds neither memory
// nor a single built-in call: in a process of its own, under a memory
// limit the kernel enforces, a program that allocates without end kills
// its worker, never fanout, and a built-in that runs on is ended by the
// parent killing the worker.
//
// The protocol is private to one build of fanout (parent and worker are
// the same executable): frames of a 4-byte big-endian length and a body.
//
//	request:  op (1 byte: opRun or opCheck), timeout in ms (4), the
//	          program's key (sha256 of its source, 32), then the source and
//	          the input, each as a 4-byte length and its bytes; the source
//	          is empty when the parent believes the worker has it.
//	response: status (1 byte), then by status: the handler's answer (JSON)
//	          for statusOK; nothing for statusNeedSource; line and column
//	          (4 each) and a message for statusSyntax; a timeout flag (1)
//	          and a message for statusRun.

// WorkerEnv is the variable that makes fanout's executable a worker
// (WorkerMain); its value is the worker's memory limit in bytes.
const WorkerEnv = "FANOUT_TRANSFORM_WORKER"

// workerHello is the first thing a worker writes: a parent that reads
// anything else (an executable that is not fanout, a test binary without
// WorkerMain in its TestMain) stops it and says so.
const workerHello = "fanout-transform-worker/1\n"

const (
	opRun   byte = 1 // run the handler on the input
	opCheck byte = 2 // run the top level only (Engine.Compile)

	statusOK         byte = 0
	statusNeedSource byte = 1
	statusSyntax     byte = 2
	statusRun        byte = 3
)

// maxFrame bounds a frame either way: the input and the source with their
// envelope, or an answer over MaxOutputBytes (which the parent refuses).
const maxFrame = MaxInputBytes + MaxSourceBytes + 64<<10

// workerCacheSize bounds the programs a worker keeps compiled; past it the
// worker starts over and asks its parent for sources again.
const workerCacheSize = 1000

// WorkerMain makes this process a worker and never returns, when it was
// started as one (WorkerEnv is set); otherwise it returns at once. main
// calls it first, and so must the TestMain of every package whose tests
// run transformations through worker processes (the test binary is then
// the executable that is started again).
func WorkerMain() {
	v, ok := os.LookupEnv(WorkerEnv)
	if !ok {
		return
	}
	limit, _ := strconv.ParseInt(v, 10, 64)
	if err := limitMemory(limit); err != nil {
		fmt.Fprintf(os.Stderr, "transform worker: %v\n", err)
		os.Exit(3)
	}
	// It serves until its parent closes its input (or dies).
	if err := serveWorker(os.Stdin, os.Stdout); !errors.Is(err, io.EOF) {
		fmt.Fprintf(os.Stderr, "transform worker: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// limitMemory sets the soft limit Go's collector works to, below the hard
// limit of the platform's setHardMemoryLimit: the heap is collected hard
// before the kernel refuses it more.
func limitMemory(limit int64) error {
	if limit <= 0 {
		return nil
	}
	debug.SetMemoryLimit(limit / 10 * 9)
	return setHardMemoryLimit(limit)
}

// serveWorker answers requests from r on w until r ends (io.EOF) or fails.
func serveWorker(r io.Reader, w io.Writer) error {
	in, out := bufio.NewReaderSize(r, 64<<10), bufio.NewWriterSize(w, 64<<10)
	if _, err := out.WriteString(workerHello); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return err
	}
	programs := map[[32]byte]*Program{}
	for {
		body, err := readFrame(in)
		if err != nil {
			return err
		}
		req, err := decodeRequest(body)
		if err != nil {
			return err
		}
		p := programs[req.key]
		if p == nil && req.source != "" {
			if sha256.Sum256([]byte(req.source)) != req.key {
				return errors.New("a program whose key is not its source's")
			}
			p, err = Parse(req.source)
			if err != nil {
				if err := writeFrame(out, encodeError(err)); err != nil {
					return err
				}
				continue
			}
			if len(programs) >= workerCacheSize {
				clear(programs)
			}
			programs[req.key] = p
		}
		if p == nil {
			if err := writeFrame(out, []byte{statusNeedSource}); err != nil {
				return err
			}
			continue
		}
		var answer []byte
		switch req.op {
		case opCheck:
			_, err = run(context.Background(), p, nil, req.timeout)
			if err == nil {
				answer = []byte{statusOK}
			}
		default:
			var s string
			s, err = run(context.Background(), p, req.input, req.timeout)
			if err == nil {
				err = checkOutput(s)
			}
			if err == nil {
				answer = append([]byte{statusOK}, s...)
			}
		}
		if err != nil {
			answer = encodeError(err)
		}
		if err := writeFrame(out, answer); err != nil {
			return err
		}
	}
}

// request is a worker's request, decoded.
type request struct {
	op      byte
	timeout time.Duration
	key     [32]byte
	source  string
	input   []byte
}

func encodeRequest(op byte, timeout time.Duration, key [32]byte, source string, input []byte) []byte {
	b := make([]byte, 0, 1+4+32+4+len(source)+4+len(input))
	b = append(b, op)
	b = binary.BigEndian.AppendUint32(b, uint32(timeout.Milliseconds()))
	b = append(b, key[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(source)))
	b = append(b, source...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(input)))
	return append(b, input...)
}

var errBadFrame = errors.New("a malformed frame")

func decodeRequest(b []byte) (*request, error) {
	if len(b) < 1+4+32+4 {
		return nil, errBadFrame
	}
	r := &request{op: b[0], timeout: time.Duration(binary.BigEndian.Uint32(b[1:5])) * time.Millisecond}
	copy(r.key[:], b[5:37])
	b = b[37:]
	src, b, ok := cut(b)
	if !ok {
		return nil, errBadFrame
	}
	input, b, ok := cut(b)
	if !ok || len(b) != 0 {
		return nil, errBadFrame
	}
	r.source, r.input = string(src), input
	if r.op == opRun && r.input == nil {
		r.input = []byte{} // a run always has an input (run tells them apart by nil)
	}
	return r, nil
}

// cut reads a 4-byte length and that many bytes from b.
func cut(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(n) > uint64(len(b)) {
		return nil, nil, false
	}
	return b[:n], b[n:], true
}

// encodeError is the answer of a run or a check that failed.
func encodeError(err error) []byte {
	var se *SyntaxError
	if errors.As(err, &se) {
		b := []byte{statusSyntax}
		b = binary.BigEndian.AppendUint32(b, uint32(max(se.Line, 0)))
		b = binary.BigEndian.AppendUint32(b, uint32(max(se.Column, 0)))
		return append(b, se.Message...)
	}
	var re *RunError
	if !errors.As(err, &re) {
		re = &RunError{Message: trim(err.Error())}
	}
	timeout := byte(0)
	if re.Timeout {
		timeout = 1
	}
	return append([]byte{statusRun, timeout}, re.Message...)
}

// decodeAnswer is the answer of a worker: the handler's JSON, or the
// error it reported; needSource when it asks for the program's source.
func decodeAnswer(b []byte) (out []byte, needSource bool, err error) {
	if len(b) == 0 {
		return nil, false, errBadFrame
	}
	switch b[0] {
	case statusOK:
		return b[1:], false, nil
	case statusNeedSource:
		return nil, true, nil
	case statusSyntax:
		if len(b) < 9 {
			return nil, false, errBadFrame
		}
		return nil, false, &SyntaxError{Line: int(binary.BigEndian.Uint32(b[1:5])), Column: int(binary.BigEndian.Uint32(b[5:9])),
			Message: string(b[9:])}
	case statusRun:
		if len(b) < 2 {
			return nil, false, errBadFrame
		}
		return nil, false, &RunError{Timeout: b[1] == 1, Message: string(b[2:])}
	}
	return nil, false, errBadFrame
}

func writeFrame(w *bufio.Writer, body []byte) error {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(body)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		return err
	}
	return w.Flush()
}

func readFrame(r *bufio.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxFrame {
		return nil, fmt.Errorf("a frame of %d bytes, over %d", size, maxFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}
