package webhook

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any leaves a goroutine behind: every
// test closes the servers, listeners and clients it starts. The exceptions
// are the two cleaners of fasthttp's client, which a Client's direct
// deliveries start and Close cannot stop (fasthttp has no way to): each
// sleeps (the Client's for 10s, each HostClient's for MaxIdleConnDuration,
// 90s) and ends on its own once its host has no connection left, which
// Close ensures. The root package's TestMain ignores the same two.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*Client).mCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"))
}
