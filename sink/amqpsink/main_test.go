package amqpsink

import (
	"os"
	"sync"
	"testing"

	"fanout/internal/rabbittest"
)

// broker is the RabbitMQ node the package's tests share (see rabbittest:
// one per test binary, started by the first test that needs it).
var broker struct {
	addr string // host:port of AMQP
	url  string // amqp://fanout:password@addr/
}

const (
	brokerUser     = rabbittest.User
	brokerPassword = rabbittest.Password
)

func TestMain(m *testing.M) {
	code := m.Run()
	rabbittest.Stop()
	os.Exit(code)
}

// needBroker starts the node if no test has yet, or skips the test,
// loudly, without one.
func needBroker(t testing.TB) {
	t.Helper()
	b := rabbittest.Need(t)
	brokerSet.Do(func() { broker.addr, broker.url = b.Addr, b.URL })
}

var brokerSet sync.Once
