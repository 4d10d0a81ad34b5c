// Package mototest runs moto_server, Python moto's fake of the AWS APIs, for
// the tests of the AWS kinds (sink's and the app's end-to-end tests): one
// server per package run, on a free loopback port, started by the first
// test that needs it and stopped by Main (or Stop). Its IAM authentication is on, so that a wrong key is refused as AWS
// refuses it: the tests sign with a user that may do everything (Admin) or
// one that may do nothing (NoPerm). Without moto_server (pip cannot install
// it on CI), the tests skip, saying so.
package mototest

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"fanout/sink"
	"fanout/webhook"
)

// Region is the region the tests use.
const Region = "us-east-1"

// Creds is an access key of a moto IAM user.
type Creds struct{ AccessKeyID, SecretAccessKey string }

// Server is a running moto_server.
type Server struct {
	// URL is its endpoint, http://127.0.0.1:port.
	URL string
	// Admin may do everything; NoPerm is a known user with no policy.
	Admin, NoPerm Creds

	cmd *exec.Cmd
	log string
}

var (
	once    sync.Once
	srv     *Server
	skipped string
)

// Bin is where moto_server is: $MOTO_SERVER, else on PATH, else pyenv's
// shim.
func Bin() string {
	if p := os.Getenv("MOTO_SERVER"); p != "" {
		return p
	}
	if p, err := exec.LookPath("moto_server"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".pyenv", "shims", "moto_server")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Need returns the package's moto server, starting it on first use, or
// skips t loudly when there is none.
func Need(t testing.TB) *Server {
	t.Helper()
	once.Do(func() {
		var err error
		if srv, err = start(); err != nil {
			skipped = err.Error()
		}
	})
	if srv == nil {
		t.Skip("SKIPPED: no moto_server for the AWS tests: " + skipped)
	}
	return srv
}

// Main runs the package's tests and stops the server after them.
func Main(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops the package's server, if a test started one: for a TestMain
// that does more than Main.
func Stop() {
	if srv != nil {
		srv.stop()
		srv = nil
	}
}

func (s *Server) stop() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Wait()
	_ = os.Remove(s.log)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start() (*Server, error) {
	bin := Bin()
	if bin == "" {
		return nil, errors.New("moto_server not found (pip install 'moto[server]'; set MOTO_SERVER to its path)")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	log, err := os.CreateTemp("", "fanout-moto-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "MOTO_ALLOW_NONEXISTENT_REGION=false")
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	_ = log.Close()
	s := &Server{URL: "http://127.0.0.1:" + strconv.Itoa(port), cmd: cmd, log: log.Name()}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.URL + "/moto-api/")
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(s.log)
			s.stop()
			return nil, fmt.Errorf("moto_server did not answer in 60s: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.setupIAM(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// iam calls moto's IAM query API, unsigned: it checks no signature until
// authentication is turned on.
func (s *Server) iam(form url.Values, out any) error {
	form.Set("Version", "2010-05-08")
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/"+Region+"/iam/aws4_request, SignedHeaders=host, Signature=00")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("moto IAM %s: %s: %s", form.Get("Action"), resp.Status, body)
	}
	if out != nil {
		return xml.Unmarshal(body, out)
	}
	return nil
}

func (s *Server) user(name, policy string) (Creds, error) {
	if err := s.iam(url.Values{"Action": {"CreateUser"}, "UserName": {name}}, nil); err != nil {
		return Creds{}, err
	}
	if policy != "" {
		if err := s.iam(url.Values{"Action": {"PutUserPolicy"}, "UserName": {name}, "PolicyName": {"all"}, "PolicyDocument": {policy}}, nil); err != nil {
			return Creds{}, err
		}
	}
	var out struct {
		Key struct {
			ID     string `xml:"AccessKeyId"`
			Secret string `xml:"SecretAccessKey"`
		} `xml:"CreateAccessKeyResult>AccessKey"`
	}
	if err := s.iam(url.Values{"Action": {"CreateAccessKey"}, "UserName": {name}}, &out); err != nil {
		return Creds{}, err
	}
	return Creds{out.Key.ID, out.Key.Secret}, nil
}

func (s *Server) setupIAM() error {
	var err error
	if s.Admin, err = s.user("fanout-admin", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`); err != nil {
		return err
	}
	if s.NoPerm, err = s.user("fanout-noperm", ""); err != nil {
		return err
	}
	// From now on every request must be signed by a known key, and
	// allowed by its user's policies.
	resp, err := http.Post(s.URL+"/moto-api/reset-auth", "text/plain", strings.NewReader("0"))
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("moto reset-auth: %s", resp.Status)
	}
	return nil
}

// Loopback is an Env whose guard lets loopback through, as
// --allow-network 127.0.0.0/8 would.
func Loopback() sink.Env {
	return sink.GuardedEnv(webhook.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}), 5*time.Second)
}

// Strict is an Env whose guard allows no internal network.
func Strict() sink.Env {
	return sink.GuardedEnv(webhook.NewGuard(nil), 2*time.Second)
}

// Ctx is a context that ends with t, within 20 seconds.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Auth is the JSON of the config fields that reach s with c.
func (s *Server) Auth(c Creds) string {
	return fmt.Sprintf(`"region":%q,"endpoint_url":%q,"access_key_id":%q,"secret_access_key":%q`, Region, s.URL, c.AccessKeyID, c.SecretAccessKey)
}
