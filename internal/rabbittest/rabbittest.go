// Package rabbittest runs a RabbitMQ node for the tests of the AMQP kind
// (sink/amqpsink's and the app's end-to-end tests): Debian's
// rabbitmq-server, on free loopback ports, with its own node name, files
// and epmd. It takes seconds to start, so there is one node per test
// binary, started by the first test that needs it (Need) and stopped by the
// package's TestMain (Stop). Without rabbitmq-server the tests skip, saying
// so.
package rabbittest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The node's user.
const (
	User     = "fanout"
	Password = "right-password-1"
)

// Broker is a running node.
type Broker struct {
	// Addr is the host:port of AMQP.
	Addr string
	// URL is amqp://User:Password@Addr/.
	URL string

	stop func()
}

var (
	once    sync.Once
	node    *Broker
	skipped string
)

// Need returns the test binary's node, starting it on first use, or skips
// t loudly when there is none.
func Need(t testing.TB) *Broker {
	t.Helper()
	once.Do(func() {
		var err error
		if node, err = start(); err != nil {
			skipped = err.Error()
		}
	})
	if node == nil {
		t.Skip("SKIPPED: no RabbitMQ for the AMQP tests: " + skipped)
	}
	return node
}

// Stop stops the node, if a test started one; TestMain calls it after
// m.Run.
func Stop() {
	if node != nil {
		node.stop()
		node = nil
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lookBin(name string, dirs ...string) string {
	for _, d := range dirs {
		matches, _ := filepath.Glob(filepath.Join(d, name))
		for _, p := range matches {
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p
			}
		}
	}
	p, _ := exec.LookPath(name)
	return p
}

func start() (*Broker, error) {
	// The script in /usr/lib/rabbitmq/bin runs the node as whoever starts
	// it; /usr/sbin's wrapper would switch to the rabbitmq user, which
	// cannot write the test's directory.
	server := lookBin("rabbitmq-server", "/usr/lib/rabbitmq/bin")
	epmd := lookBin("epmd", "/usr/lib/erlang/erts-*/bin")
	if server == "" || epmd == "" {
		return nil, fmt.Errorf("rabbitmq-server (and Erlang's epmd) not installed: apt-get install rabbitmq-server, as .ci/run does")
	}
	dir, err := os.MkdirTemp("", "fanout-rabbitmq-")
	if err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	stop := func() {
		for i := len(procs) - 1; i >= 0; i-- {
			p := procs[i]
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL) // its process group: the node and its helpers
			_ = p.Wait()
		}
		_ = os.RemoveAll(dir)
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			stop()
			return nil, err
		}
	}
	amqpPort, distPort, epmdPort := ports[0], ports[1], ports[2]
	run := func(cmd *exec.Cmd) error {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		log, err := os.Create(filepath.Join(dir, filepath.Base(cmd.Path)+".log"))
		if err != nil {
			return err
		}
		defer log.Close()
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
		return nil
	}
	// An epmd of its own, in the foreground, so that the node does not
	// start a daemon that outlives the tests.
	if err := run(exec.Command(epmd, "-port", strconv.Itoa(epmdPort))); err != nil {
		stop()
		return nil, err
	}
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\ndefault_user = %s\ndefault_pass = %s\n",
		amqpPort, User, Password)
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o600); err != nil {
		stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o600); err != nil {
		stop()
		return nil, err
	}
	cmd := exec.Command(server)
	cmd.Env = append(os.Environ(),
		"HOME="+dir, // the Erlang cookie
		"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
		fmt.Sprintf("RABBITMQ_NODENAME=fanout-test-%d@localhost", amqpPort),
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(amqpPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PLUGINS_EXPAND_DIR="+filepath.Join(dir, "plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbit.pid"),
		"RABBITMQ_LOGS=-",
	)
	if err := run(cmd); err != nil {
		stop()
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(amqpPort))
	b := &Broker{Addr: addr, URL: fmt.Sprintf("amqp://%s:%s@%s/", User, Password, addr), stop: stop}
	deadline := time.Now().Add(90 * time.Second)
	for {
		conn, err := amqp.Dial(b.URL)
		if err == nil {
			_ = conn.Close()
			return b, nil
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(dir, "rabbitmq-server.log"))
			stop()
			return nil, fmt.Errorf("rabbitmq-server did not accept connections in 90s: %v\n%s", err, tail(out, 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
