package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestErrorStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want Status
	}{
		{"Nil", nil, StatusOK},
		{"Plain", errors.New("nope"), StatusPermanent},
		{"Formatted", fmt.Errorf("wrapped: %v", io.EOF), StatusPermanent},
		{"WrappedTemporary", fmt.Errorf("%w: busy", ErrTemporary), StatusTemporary},
		{"WrappedThrottled", fmt.Errorf("x: %w", fmt.Errorf("%w: 429", ErrThrottled)), StatusThrottled},
		{"WrappedPermanent", fmt.Errorf("%w: 410", ErrPermanent), StatusPermanent},
		{"Canceled", context.Canceled, StatusTemporary},
		{"DeadlineExceeded", fmt.Errorf("call: %w", context.DeadlineExceeded), StatusTimeout},
		{"EOF", io.EOF, StatusTemporary},
		{"Refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, StatusTCP},
		{"Reset", syscall.ECONNRESET, StatusTCP},
		{"ErrnoTimeout", syscall.ETIMEDOUT, StatusTimeout},
		{"DNS", &net.DNSError{Err: "no such host", Name: "nowhere.invalid", IsNotFound: true}, StatusDNS},
		{"DNSTimeout", &net.DNSError{Err: "timeout", Name: "slow.invalid", IsTimeout: true}, StatusTimeout},
		{"URLUnexpectedEOF", &url.Error{Op: "Post", URL: "http://x", Err: io.ErrUnexpectedEOF}, StatusTCP},
		{"URLRefused", &url.Error{Op: "Post", URL: "http://x", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, StatusTCP},
		{"JoinedSame", errors.Join(ErrTimeout, ErrTimeout), StatusTimeout},
		{"JoinedMixed", errors.Join(ErrTimeout, errors.New("x")), StatusPermanent},
		{"Gather", &GatherError{Total: 2, Failed: []ChildError{{Status: StatusTemporary}}}, StatusPermanent},
		{"RetryAfter", RetryAfter(fmt.Errorf("%w: 503", ErrTemporary), time.Second), StatusTemporary},
		{"RetryAfterNil", RetryAfter(nil, time.Second), StatusThrottled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ErrorStatus(tc.err); got != tc.want {
				t.Fatalf("ErrorStatus(%v)=%v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestStatus_Retryable(t *testing.T) {
	t.Parallel()
	retried := map[Status]bool{StatusTimeout: true, StatusThrottled: true, StatusTemporary: true,
		StatusIncompatibleState: true, StatusDNS: true, StatusTCP: true, StatusTLS: true, StatusHTTP: true}
	for s := StatusUnspecified; s <= StatusNotFound; s++ {
		if got := s.Retryable(); got != retried[s] {
			t.Errorf("%v.Retryable()=%v, want %v", s, got, retried[s])
		}
	}
}

func TestRetryAfterHint(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("deliver: %w", RetryAfter(ErrThrottled, 42*time.Second))
	if d, ok := retryAfterHint(err); !ok || d != 42*time.Second {
		t.Fatalf("retryAfterHint=%v,%v, want 42s", d, ok)
	}
	if _, ok := retryAfterHint(ErrThrottled); ok {
		t.Fatal("a hint where none was given")
	}
}
