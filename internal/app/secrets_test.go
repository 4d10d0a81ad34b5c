package app

import (
	"bytes"
	"fanout/internal/service"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// lockedBuffer is a bytes.Buffer that a logger and a test may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// withoutURLs is a decoded JSON answer without its "url" fields: a
// destination's URL as configured, which the API shows to whoever may
// read the destination; everything else (errors, reasons) is checked.
func withoutURLs(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			if k != "url" {
				out[k] = withoutURLs(x)
			}
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = withoutURLs(x)
		}
		return out
	}
	return v
}

// TestRun_SecretsStayOut plants secrets where destination URLs carry them
// (a query value, a token-like path segment, userinfo; a proxy's password)
// and makes every delivery fail, directly and through a proxy (where
// net/http's error names the whole URL), so that the URL is written into
// errors, logs, spans and operational events. None of those may hold a
// secret: they name the URL redacted. The destination's own GET still
// shows the URL as configured, to whoever may read the destination.
func TestRun_SecretsStayOut(t *testing.T) {
	t.Parallel()
	notices := newReceiver(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close() // a port nothing listens on: connections are refused

	secrets := []string{"SECRETKEY123", "T0123456789ABCDEFGHIJ", "PATHSECRET0123456789", "QUERYSECRET99", "pa55word", "pr0xypass"}
	proxied := "http://secret-host.fanout-test/hooks/T0123456789ABCDEFGHIJ/B0000?api_key=SECRETKEY123"
	direct := "http://" + closedAddr + "/x/PATHSECRET0123456789?token=QUERYSECRET99"

	logs := &lockedBuffer{}
	exp := tracetest.NewInMemoryExporter()
	a := startAppWith(t, appOptions{
		args: []string{"--data", t.TempDir(), "--allow-network", "127.0.0.0/8", "--retry-initial", "10ms", "--retry-max", "20ms",
			"--retry-max-attempts", "2", "--notice-window", "50ms", "--otlp-endpoint", "http://127.0.0.1:9"},
		// A proxy that is not there, with a password: deliveries to the
		// proxied destination fail in net/http, naming the request URL.
		env:      map[string]string{"HTTP_PROXY": "http://proxyuser:pr0xypass@" + closedAddr},
		resolver: fakeResolver{"secret-host.fanout-test": {netip.MustParseAddr("93.184.216.34")}},
		exporter: exp,
		logs:     logs,
	})
	base := a.URL

	var answers strings.Builder
	record := func(method, path string, body any, header ...string) int {
		var out any
		code := call(t, method, base+path, body, &out, header...)
		fmt.Fprintf(&answers, "%s %s: %d %v\n", method, path, code, withoutURLs(out))
		return code
	}
	// Userinfo is refused at create; the refusal must not repeat it.
	if code := record("POST", "/v1/destinations", map[string]any{"url": "http://user:pa55word@example.com/hook"}); code != 400 {
		t.Fatalf("a destination with credentials in its URL: %d, want 400", code)
	}
	var dNotice, dProxied, dDirect struct{ ID string }
	for _, c := range []struct {
		url    string
		filter []string
		out    *struct{ ID string }
	}{{notices.URL + "/notices", []string{"fanout.*"}, &dNotice}, {proxied, []string{"order.*"}, &dProxied}, {direct, []string{"order.*"}, &dDirect}} {
		if code := call(t, "POST", base+"/v1/destinations", map[string]any{"url": c.url, "filter": c.filter}, c.out); code != 201 {
			t.Fatalf("create %s: %d", c.url, code)
		}
	}
	var ev struct{ ID string }
	if code := call(t, "POST", base+"/v1/event", `{"type":"order.paid"}`, &ev); code != 202 {
		t.Fatalf("ingest: %d", code)
	}
	eventually(t, "both deliveries dead-lettered and announced", 15*time.Second, func() bool {
		n := 0
		for _, body := range notices.bodies() {
			if strings.Contains(body, "fanout.deliveries.failed") {
				n++
			}
		}
		return n >= 2
	})

	var dead struct{ Deliveries []service.DeliveryView }
	record("GET", "/v1/deliveries?state=failed", nil)
	call(t, "GET", base+"/v1/deliveries?state=failed", nil, &dead)
	for _, d := range dead.Deliveries {
		record("GET", "/v1/deliveries/"+d.ID, nil)
	}
	record("GET", "/v1/events/"+ev.ID, nil)
	record("GET", "/v1/stats", nil)

	var spans strings.Builder
	for _, s := range exp.GetSpans() {
		fmt.Fprintf(&spans, "%s %v %v %v\n", s.Name, s.Attributes, s.Events, s.Status)
	}
	outputs := map[string]string{
		"logs":               logs.String(),
		"API answers":        answers.String(),
		"spans":              spans.String(),
		"operational events": strings.Join(notices.bodies(), "\n"),
	}
	for name, out := range outputs {
		for _, s := range secrets {
			if i := strings.Index(out, s); i >= 0 {
				t.Errorf("the %s hold the secret %q: …%s…", name, s, out[max(0, i-150):min(len(out), i+50)])
			}
		}
	}
	// Not vacuous: the failures are there, naming the URLs redacted.
	if len(dead.Deliveries) != 2 {
		t.Fatalf("%d dead letters, want the proxied and the direct one", len(dead.Deliveries))
	}
	for name, want := range map[string]string{"API answers": "secret-host.fanout-test/hooks/…/B0000?api_key=…",
		"operational events": "/x/…?token=…", "spans": "api_key=…"} {
		if !strings.Contains(outputs[name], want) {
			t.Errorf("the %s do not name a destination redacted (%q):\n%.2000s", name, want, outputs[name])
		}
	}
	// The configuration itself is shown to whoever may read it.
	var got struct{ URL string }
	call(t, "GET", base+"/v1/destinations/"+dProxied.ID, nil, &got)
	if got.URL != proxied {
		t.Errorf("GET the destination: url %q, want it as configured", got.URL)
	}
}
