// Package natstest runs Debian's nats-server for the tests of the NATS
// kind (sink/natssink's and the app's end-to-end tests): one server per
// call, with JetStream on file storage in the test's own directory, on free
// loopback ports, optionally with a user and password. It replaces the
// embedded server module, which cost about a minute of every cold compile
// of the tests. Without nats-server the tests skip, saying so.
package natstest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"fanout/internal/proctest"
)

// Options are what a test may ask of its server.
type Options struct {
	// User and Password, when User is set, are the only credentials the
	// server accepts.
	User, Password string
}

// Server is one running nats-server.
type Server struct {
	// URL is nats://Addr, without credentials.
	URL string
	// Addr is the 127.0.0.1:PORT clients connect to.
	Addr string

	monitor string // http://127.0.0.1:PORT of the monitoring endpoints
	proc    *proctest.Proc
}

// startTimeout bounds how long the server may take to listen; it takes
// milliseconds on an idle machine, seconds on a loaded one.
const startTimeout = 30 * time.Second

// Binary returns the path of nats-server, or "" when it is not installed.
// Debian puts it in /usr/sbin, which a user's PATH may lack.
func Binary() string {
	if bin, err := exec.LookPath("nats-server"); err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/nats-server"); err == nil {
		return "/usr/sbin/nats-server"
	}
	return ""
}

// Start starts a server and waits until it accepts connections; the
// test's cleanup kills it. It skips t loudly when nats-server is not
// installed.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Skip("SKIPPED: nats-server is not installed (apt-get install nats-server, as .ci/run does): the NATS JetStream tests need it")
	}
	dir := t.TempDir()
	// Port -1 lets the server pick free ports itself, which no other
	// process can take between a probe and the bind; it writes them to
	// the ports file once its listeners are up.
	conf := fmt.Sprintf("listen: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\nports_file_dir: %s\njetstream {\n  store_dir: %s\n}\n",
		quote(t, dir), quote(t, filepath.Join(dir, "store")))
	if opts.User != "" {
		conf += fmt.Sprintf("authorization {\n  user: %s\n  password: %s\n}\n", quote(t, opts.User), quote(t, opts.Password))
	}
	// In a file rather than in flags, so that the password is not in the
	// process list.
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{proc: proctest.Start(t, "nats-server", exec.Command(bin, "-c", confPath))}
	s.waitReady(t, dir)
	return s
}

// quote quotes a value of the configuration file; the tests' values need
// no escapes, and one that would is refused rather than misread.
func quote(t testing.TB, v string) string {
	t.Helper()
	if strings.ContainsAny(v, "\"\\\n\r") {
		t.Fatalf("natstest: %q cannot be written to nats-server's configuration", v)
	}
	return `"` + v + `"`
}

// waitReady waits for the ports file, which the server writes once its
// listeners are up, then for its health endpoint to say it is ready,
// JetStream included. It does not probe the client port: a probe would be
// a client, and tests count them.
func (s *Server) waitReady(t testing.TB, dir string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		if s.Addr == "" {
			s.readPorts(t, dir)
		}
		if s.Addr != "" {
			if resp, err := monitorClient.Get(s.monitor + "/healthz"); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
			}
		}
		select {
		case <-s.proc.Exited():
			t.Fatalf("nats-server exited before it listened:\n%s", s.proc.Logs.Tail(30))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server not listening after %v:\n%s", startTimeout, s.proc.Logs.Tail(30))
		}
	}
}

// readPorts sets Addr, URL and the monitoring address from the ports file,
// if the server has written it (whole) yet.
func (s *Server) readPorts(t testing.TB, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.ports"))
	if len(files) == 0 {
		return
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		return
	}
	var ports struct{ Nats, Monitoring []string }
	if json.Unmarshal(b, &ports) != nil || len(ports.Nats) == 0 || len(ports.Monitoring) == 0 {
		return
	}
	s.URL, s.monitor = ports.Nats[0], ports.Monitoring[0]
	s.Addr = strings.TrimPrefix(s.URL, "nats://")
}

// monitorClient reads the monitoring endpoints directly, whatever proxy
// the environment names.
var monitorClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}

// Stop stops the server cleanly (SIGTERM) and waits until it has exited:
// its clients see the connection closed, as with a broker that is shut
// down.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.proc.Terminate(t, startTimeout)
}

// NumClients is the number of client connections the server holds now,
// from its monitoring endpoint.
func (s *Server) NumClients(t testing.TB) int {
	t.Helper()
	resp, err := monitorClient.Get(s.monitor + "/varz")
	if err != nil {
		t.Fatalf("nats-server /varz: %v", err)
	}
	defer resp.Body.Close()
	var v struct {
		Connections *int `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.Connections == nil {
		t.Fatalf("nats-server /varz: no connection count (%v)", err)
	}
	return *v.Connections
}
