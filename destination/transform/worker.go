package transform

import (
	"bufio"
	"context"
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
//	request:  op (1 byte), timeout in ms (4), the program's id (32), then
//	          its name, its source and the input, each as a 4-byte length
//	          and its bytes. opRun names a destination's program, which the
//	          worker keeps compiled under its id: the source is empty when
//	          the parent believes the worker has it. opCheck (the top level
//	          only) and opPreview (the top level and the handler) carry
//	          their source, and the worker keeps nothing of them.
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
	opRun     byte = 1 // run a destination's handler on the input
	opCheck   byte = 2 // run a program's top level only (Engine.Compile)
	opPreview byte = 3 // run a program once, kept nowhere (Engine.Preview)

	statusOK         byte = 0
	statusNeedSource byte = 1
	statusSyntax     byte = 2
	statusRun        byte = 3
)

// maxFrame bounds a frame either way: the input, the source and a name
// with their envelope, or an answer (at most MaxOutputBytes and a status).
const maxFrame = maxInput + MaxSourceBytes + maxName + 64

// maxName bounds a program's name (a destination's id).
const maxName = 1 << 10

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
	lowerPriority()
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
		if err := writeFrame(out, answer(programs, req)); err != nil {
			return err
		}
	}
}

// answer runs one request; programs are the destinations' programs this
// worker keeps compiled.
func answer(programs map[[32]byte]*Program, req *request) []byte {
	var p *Program
	if req.op == opRun {
		p = programs[req.id]
	}
	if p == nil {
		if req.source == "" {
			return []byte{statusNeedSource}
		}
		p = newProgram(req.name, req.source)
		if p.id != req.id {
			return encodeError(&RunError{Message: "the program's id is not its name's and source's"})
		}
		if err := compile(p); err != nil {
			return encodeError(err)
		}
		if req.op == opRun {
			if len(programs) >= workerCacheSize {
				clear(programs)
			}
			programs[req.id] = p
		}
	}
	input := req.input
	if req.op == opCheck {
		input = nil // run the top level only
	}
	s, err := run(context.Background(), p, input, req.timeout)
	if err == nil {
		err = checkOutput(s)
	}
	if err != nil {
		return encodeError(err)
	}
	return append([]byte{statusOK}, s...)
}

// request is a worker's request, decoded.
type request struct {
	op      byte
	timeout time.Duration
	id      [32]byte
	name    string
	source  string
	input   []byte
}

func encodeRequest(op byte, timeout time.Duration, id [32]byte, name, source string, input []byte) []byte {
	b := make([]byte, 0, 1+4+32+4+len(name)+4+len(source)+4+len(input))
	b = append(b, op)
	b = binary.BigEndian.AppendUint32(b, uint32(timeout.Milliseconds()))
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
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
	if r.op < opRun || r.op > opPreview {
		return nil, errBadFrame
	}
	copy(r.id[:], b[5:37])
	b = b[37:]
	name, b, ok := cut(b)
	if !ok {
		return nil, errBadFrame
	}
	src, b, ok := cut(b)
	if !ok {
		return nil, errBadFrame
	}
	input, b, ok := cut(b)
	if !ok || len(b) != 0 {
		return nil, errBadFrame
	}
	r.name, r.source, r.input = string(name), string(src), input
	if r.input == nil {
		r.input = []byte{} // not nil: run tells a check from a run by a nil input
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
	if len(body) > maxFrame {
		return fmt.Errorf("a frame of %d bytes, over %d", len(body), maxFrame)
	}
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
