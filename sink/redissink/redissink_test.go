package redissink

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/sink"
	"fanout/webhook"
)

func loopback() sink.Env {
	return sink.GuardedEnv(webhook.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}), 5*time.Second)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// redisServer is a redis-server of the test's own, on a loopback port, its
// files in t.TempDir().
type redisServer struct {
	addr string
	cmd  *exec.Cmd
}

// startRedis starts Debian's redis-server with extra config directives, or
// skips (loudly) when it is not installed.
func startRedis(t testing.TB, extra ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED: redis-server is not installed (apt-get install redis-server, as .ci/run does): the Redis Streams tests need it")
	}
	dir := t.TempDir()
	port := freePort(t)
	args := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "",
		"--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log")}
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &redisServer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd}
	t.Cleanup(r.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.addr, time.Second)
		if err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			_ = c.Close()
			if strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-") { // PONG, or NOAUTH
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server not answering on %s after 10s", r.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *redisServer) stop() {
	if r.cmd.Process != nil && r.cmd.ProcessState == nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}

func ctx10(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func open(t testing.TB, cfg string) sink.Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(ctx10(t), loopback())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func msg(id string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: "cust-9",
		Headers: map[string]string{"X-Team": "billing"}}
}

func client(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestSend_EntryOutAndDuplicateDropped(t *testing.T) {
	srv := startRedis(t)
	s := open(t, fmt.Sprintf(`{"url":"redis://%s/0","stream":"events"}`, srv.addr))
	ctx := ctx10(t)
	for _, id := range []string{"dlv_1", "dlv_1", "dlv_2"} {
		if err := s.Send(ctx, msg(id)); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := client(t, srv.addr).XRange(ctx, "events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("%d entries, want 2 (the resend dropped): %v", len(entries), entries)
	}
	want := map[string]any{
		FieldID: "dlv_1", FieldEventID: "evt_dlv_1", FieldType: "order.paid", FieldTenant: "acme", FieldKey: "cust-9",
		FieldContentType: "application/json", FieldHeaders: `{"X-Team":"billing"}`, FieldBody: `{"type":"order.paid","n":1}`,
	}
	for k, v := range want {
		if got := entries[0].Values[k]; got != v {
			t.Errorf("field %s = %v, want %v", k, got, v)
		}
	}
	if entries[1].Values[FieldID] != "dlv_2" {
		t.Errorf("second entry %v", entries[1].Values)
	}
}

func TestSend_MaxLenAndNoDedup(t *testing.T) {
	srv := startRedis(t)
	s := open(t, fmt.Sprintf(`{"url":"redis://%s","stream":"capped","maxlen":3,"exact":true,"dedup_window":"0s"}`, srv.addr))
	ctx := ctx10(t)
	for i := range 5 {
		if err := s.Send(ctx, msg("same")); err != nil {
			t.Fatal(err, i)
		}
	}
	n, err := client(t, srv.addr).XLen(ctx, "capped").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("stream length %d, want 3 (maxlen, every resend added)", n)
	}
	keys, _ := client(t, srv.addr).Keys(ctx, "capped:*").Result()
	if len(keys) != 0 {
		t.Fatalf("dedup off still wrote markers: %v", keys)
	}
}

func TestSend_Retryable(t *testing.T) {
	t.Run("server stopped", func(t *testing.T) {
		srv := startRedis(t)
		s := open(t, fmt.Sprintf(`{"url":"redis://%s","stream":"e"}`, srv.addr))
		if err := s.Send(ctx10(t), msg("a")); err != nil {
			t.Fatal(err)
		}
		srv.stop()
		err := s.Send(ctx10(t), msg("b"))
		if sink.OutcomeOf(err) != sink.Retryable {
			t.Fatalf("%v, want retryable", err)
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		c, _ := Parse(json.RawMessage(fmt.Sprintf(`{"url":"redis://127.0.0.1:%d","stream":"e"}`, freePort(t))))
		_, err := c.Open(ctx10(t), loopback())
		if sink.OutcomeOf(err) != sink.Retryable {
			t.Fatalf("%v, want retryable", err)
		}
	})
	t.Run("out of memory", func(t *testing.T) {
		srv := startRedis(t, "--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
		s := open(t, fmt.Sprintf(`{"url":"redis://%s","stream":"e"}`, srv.addr))
		big := msg("x")
		big.Body = make([]byte, 256<<10)
		var err error
		for i := 0; i < 20 && err == nil; i++ {
			big.DeliveryID = fmt.Sprint("big", i)
			err = s.Send(ctx10(t), big)
		}
		if sink.OutcomeOf(err) != sink.Retryable || !strings.Contains(err.Error(), "OOM") {
			t.Fatalf("%v, want a retryable OOM", err)
		}
	})
}

func TestSend_PermanentAndRedacted(t *testing.T) {
	srv := startRedis(t, "--user", "alice", "on", ">right-password-1", "~*", "&*", "+@all", "--user", "default", "off")
	for name, cfg := range map[string]string{
		"url":      fmt.Sprintf(`{"url":"redis://alice:wrong-password-1@%s","stream":"e"}`, srv.addr),
		"password": fmt.Sprintf(`{"url":"redis://alice@%s","password":"wrong-password-1","stream":"e"}`, srv.addr),
	} {
		c, err := Parse(json.RawMessage(cfg))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(ctx10(t), loopback())
		if sink.OutcomeOf(err) != sink.Permanent {
			t.Errorf("%s: %v, want permanent", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "wrong-password") {
			t.Errorf("%s: the error shows the password: %v", name, err)
		}
	}
	s := open(t, fmt.Sprintf(`{"url":"redis://alice:right-password-1@%s","stream":"e"}`, srv.addr))
	if err := s.Send(ctx10(t), msg("a")); err != nil {
		t.Fatal(err)
	}
	// A key of another type: the same command fails again.
	c := redis.NewClient(&redis.Options{Addr: srv.addr, Username: "alice", Password: "right-password-1"})
	defer c.Close()
	if err := c.Set(ctx10(t), "str", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, fmt.Sprintf(`{"url":"redis://alice:right-password-1@%s","stream":"str"}`, srv.addr))
	if err := s2.Send(ctx10(t), msg("b")); sink.OutcomeOf(err) != sink.Permanent {
		t.Fatalf("XADD to a string: %v, want permanent", err)
	}
}

func TestGuard(t *testing.T) {
	srv := startRedis(t)
	strict := sink.GuardedEnv(webhook.NewGuard(nil), 2*time.Second)
	for _, u := range []string{"redis://169.254.169.254:6379", "redis://:pw-pw-pw-pw@192.168.1.1:6379", "rediss://10.0.0.1:6380", "redis://" + srv.addr} {
		c, err := Parse(json.RawMessage(`{"url":"` + u + `","stream":"e"}`))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(ctx10(t), strict)
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", u, err)
		}
		if err != nil && strings.Contains(err.Error(), "pw-pw-pw-pw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		cfg   string
		field string
	}{
		{`{"url":"redis://h:6379/2","stream":"s"}`, ""},
		{`{"url":"rediss://u:p@h","stream":"s","maxlen":10,"exact":true,"dedup_window":"10m"}`, ""},
		{`{"url":"redis://h","stream":"s","dedup_window":"0s"}`, ""},
		{`{"stream":"s"}`, "url"},
		{`{"url":"unix:///tmp/redis.sock","stream":"s"}`, "url"},
		{`{"url":"http://h","stream":"s"}`, "url"},
		{`{"url":"redis://h/x","stream":"s"}`, "url"},
		{`{"url":"redis://h?bogus=1","stream":"s"}`, "url"},
		{`{"url":"redis://h"}`, "stream"},
		{`{"url":"redis://h","stream":"s","maxlen":-1}`, "maxlen"},
		{`{"url":"redis://h","stream":"s","exact":true}`, "exact"},
		{`{"url":"redis://h","stream":"s","dedup_window":"soon"}`, "dedup_window"},
		{`{"url":"redis://h","stream":"s","dedup_window":"10ms"}`, "dedup_window"},
		{`{"url":"redis://h","stream":"s","maxlen":"10"}`, "maxlen"},
		{`{"url":"redis://h","stream":"s","nope":true}`, "nope"},
	}
	for _, tt := range tests {
		_, err := Parse(json.RawMessage(tt.cfg))
		if tt.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.cfg, err)
			}
			continue
		}
		ce, ok := err.(*sink.ConfigError)
		if !ok || ce.Field != tt.field {
			t.Errorf("%s: %v, want an error on %q", tt.cfg, err, tt.field)
		}
	}
}
