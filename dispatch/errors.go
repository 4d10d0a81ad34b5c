package dispatch

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Status is the outcome class of a call attempt. It decides whether the
// runtime retries: see Retryable. The values follow the Dispatch SDK's status
// enum so that code written against its error taxonomy keeps its meaning.
type Status int

// The statuses. Their numeric values are stable: they are stored.
const (
	StatusUnspecified Status = iota
	StatusOK
	StatusTimeout
	StatusThrottled
	StatusInvalidArgument
	StatusInvalidResponse
	StatusTemporary
	StatusPermanent
	StatusIncompatibleState
	StatusDNS
	StatusTCP
	StatusTLS
	StatusHTTP
	StatusUnauthenticated
	StatusPermissionDenied
	StatusNotFound
)

var statusNames = [...]string{
	StatusUnspecified:       "unspecified",
	StatusOK:                "ok",
	StatusTimeout:           "timeout",
	StatusThrottled:         "throttled",
	StatusInvalidArgument:   "invalid argument",
	StatusInvalidResponse:   "invalid response",
	StatusTemporary:         "temporary error",
	StatusPermanent:         "permanent error",
	StatusIncompatibleState: "incompatible state",
	StatusDNS:               "dns error",
	StatusTCP:               "tcp error",
	StatusTLS:               "tls error",
	StatusHTTP:              "http error",
	StatusUnauthenticated:   "unauthenticated",
	StatusPermissionDenied:  "permission denied",
	StatusNotFound:          "not found",
}

func (s Status) String() string {
	if s >= 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Retryable reports whether a call that ended with this status is tried
// again. The split is the Dispatch scheduler's: timeouts, throttling and
// transport failures are retried; everything else, including an error nobody
// classified, is final.
func (s Status) Retryable() bool {
	switch s {
	case StatusTimeout, StatusThrottled, StatusTemporary, StatusIncompatibleState,
		StatusDNS, StatusTCP, StatusTLS, StatusHTTP:
		return true
	}
	return false
}

// Error returns an error that carries this status, for wrapping with %w.
func (s Status) Error() string { return s.String() }

// Status lets a Status be used as an error that classifies itself.
func (s Status) Status() Status { return s }

// Errors that classify whatever wraps them: return
// fmt.Errorf("%w: upstream said no", dispatch.ErrThrottled) to make the runtime
// retry with backoff, or wrap ErrPermanent to stop retrying at once.
var (
	ErrTimeout           error = StatusTimeout
	ErrThrottled         error = StatusThrottled
	ErrInvalidArgument   error = StatusInvalidArgument
	ErrInvalidResponse   error = StatusInvalidResponse
	ErrTemporary         error = StatusTemporary
	ErrPermanent         error = StatusPermanent
	ErrIncompatibleState error = StatusIncompatibleState
	ErrDNS               error = StatusDNS
	ErrTCP               error = StatusTCP
	ErrTLS               error = StatusTLS
	ErrHTTP              error = StatusHTTP
	ErrUnauthenticated   error = StatusUnauthenticated
	ErrPermissionDenied  error = StatusPermissionDenied
	// ErrNotFound is also what a Store returns for a call or a document
	// that does not exist.
	ErrNotFound error = StatusNotFound
)

// Errors of the runtime itself.
var (
	// ErrNotRegistered is returned by Dispatch on a function that was never
	// given to a Runtime.
	ErrNotRegistered = errors.New("dispatch: function is not registered with a runtime")
	// ErrNotInCall is returned by Gather and Await outside a durable function.
	ErrNotInCall = errors.New("dispatch: Gather and Await work only inside a durable function call")
	// ErrStopped is returned when work is submitted to a stopped runtime.
	ErrStopped = errors.New("dispatch: runtime stopped")
)

// RetryAfter wraps err with a hint of when to try again, as an HTTP
// server's Retry-After header gives it. The retry policy honours it within its bounds.
// The status is the wrapped error's (throttled when err is nil).
func RetryAfter(err error, after time.Duration) error {
	if err == nil {
		err = ErrThrottled
	}
	return &retryAfterError{err: err, after: after}
}

type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// Detailer is implemented by errors that can describe themselves for the
// record of a failed attempt (an HTTP status code and the start of the
// answer, say). Detail's value is stored as JSON.
type Detailer interface {
	Detail() any
}

// errorDetail returns the JSON of the first Detailer in err's chain.
func errorDetail(err error) []byte {
	var d Detailer
	if !errors.As(err, &d) {
		return nil
	}
	b, merr := json.Marshal(d.Detail())
	if merr != nil {
		return nil
	}
	return b
}

// Snooze returns an error that puts the call back in the store to run again
// after d, without counting a failure against its retry budget: for a call
// that could not be tried (the service it calls is switched off, say).
func Snooze(d time.Duration) error { return &snoozeError{after: d} }

type snoozeError struct{ after time.Duration }

func (e *snoozeError) Error() string { return fmt.Sprintf("snoozed for %v", e.after) }

// retryAfterHint returns the hint of the outermost RetryAfter in err's chain.
func retryAfterHint(err error) (time.Duration, bool) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.after, true
	}
	return 0, false
}

// ErrorStatus classifies err. The rules are those of the Dispatch SDK, so an
// error means the same thing here as it did there:
//
//   - nil is StatusOK; anything with a Status() Status method is that status;
//   - context.Canceled is temporary, context.DeadlineExceeded and any error
//     whose Timeout() is true is a timeout;
//   - network errors (refused, reset, unreachable, DNS, TLS, an unexpected EOF
//     from a peer) are retryable;
//   - an error nobody classified is permanent: a plain errors.New is final.
//
// One rule differs on purpose: the SDK called an unexpected EOF inside an
// HTTP exchange an invalid response, which is final; a server that drops the
// connection mid-answer is a transport failure and is retried.
func ErrorStatus(err error) Status {
	return errorStatus(err, 0)
}

func errorStatus(err error, depth int) Status {
	if err == nil {
		return StatusOK
	}
	if depth > 16 {
		return StatusPermanent
	}
	switch err {
	case context.Canceled:
		return StatusTemporary
	case context.DeadlineExceeded:
		return StatusTimeout
	case fs.ErrInvalid:
		return StatusInvalidArgument
	case fs.ErrPermission:
		return StatusPermissionDenied
	case fs.ErrNotExist:
		return StatusNotFound
	case fs.ErrClosed, net.ErrClosed, io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe,
		io.ErrNoProgress, io.ErrShortBuffer, io.ErrShortWrite:
		return StatusTemporary
	}

	switch e := err.(type) {
	case interface{ Status() Status }:
		return e.Status()
	case syscall.Errno:
		return errnoStatus(e)
	case *fs.PathError:
		if s := errorStatus(e.Err, depth+1); s == StatusTCP {
			return StatusTemporary
		}
	case *url.Error:
		if e.Timeout() {
			return StatusTimeout
		}
		if errors.Is(e.Err, io.ErrUnexpectedEOF) || errors.Is(e.Err, io.EOF) ||
			strings.Contains(e.Err.Error(), "malformed HTTP") {
			return StatusTCP
		}
		return errorStatus(e.Err, depth+1)
	case *net.DNSError:
		if e.Timeout() {
			return StatusTimeout
		}
		return StatusDNS
	case *net.OpError:
		if e.Timeout() {
			return StatusTimeout
		}
		if s := errorStatus(e.Err, depth+1); s != StatusPermanent {
			return s
		}
		return StatusTCP
	case *tls.CertificateVerificationError, tls.RecordHeaderError, *tls.RecordHeaderError:
		return StatusTLS
	case interface{ Unwrap() []error }:
		var s Status
		for i, inner := range e.Unwrap() {
			is := errorStatus(inner, depth+1)
			if i > 0 && is != s {
				return StatusPermanent
			}
			s = is
		}
		if s == StatusUnspecified {
			return StatusPermanent
		}
		return s
	}

	if t, ok := err.(interface{ Timeout() bool }); ok && t.Timeout() {
		return StatusTimeout
	}
	if t, ok := err.(interface{ Temporary() bool }); ok && t.Temporary() {
		return StatusTemporary
	}
	if inner := errors.Unwrap(err); inner != nil {
		return errorStatus(inner, depth+1)
	}
	return StatusPermanent
}

func errnoStatus(e syscall.Errno) Status {
	switch e {
	case syscall.ETIMEDOUT:
		return StatusTimeout
	case syscall.EPERM, syscall.EACCES:
		return StatusPermissionDenied
	case syscall.EAGAIN, syscall.EINTR, syscall.EMFILE, syscall.ENFILE:
		return StatusTemporary
	case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ENETDOWN, syscall.ENETUNREACH, syscall.ENETRESET, syscall.EHOSTDOWN,
		syscall.EHOSTUNREACH, syscall.EADDRNOTAVAIL:
		return StatusTCP
	}
	return StatusPermanent
}
