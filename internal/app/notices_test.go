package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"fanout/destination"
	"fanout/dispatch"
	"fanout/internal/service"
)

// opEvent is an operational event as a destination receives it.
type opEvent struct {
	Type      string          `json:"type"`
	ID        string          `json:"id"`
	Time      time.Time       `json:"time"`
	Data      json.RawMessage `json:"data"`
	webhookID string
	raw       []byte
}

func (e opEvent) about() string {
	var d struct {
		DestinationID string `json:"destination_id"`
	}
	_ = json.Unmarshal(e.Data, &d)
	return d.DestinationID
}

// opSink is a destination that records what it gets: the operational
// events apart, in order; it answers status (204 unless set).
type opSink struct {
	*httptest.Server
	mu     sync.Mutex
	events []opEvent
	others int
	status atomic.Int32
}

func newOpSink(t *testing.T) *opSink {
	s := &opSink{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var e opEvent
		_ = json.Unmarshal(body, &e)
		s.mu.Lock()
		if strings.HasPrefix(e.Type, "fanout.") {
			e.webhookID, e.raw = r.Header.Get("webhook-id"), body
			s.events = append(s.events, e)
		} else {
			s.others++
		}
		s.mu.Unlock()
		if code := s.status.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.Close)
	return s
}

// got returns the operational events received, one per id (a delivery
// repeated after a crash or a timeout has the same one).
func (s *opSink) got() []opEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []opEvent
	seen := map[string]bool{}
	for _, e := range s.events {
		if !seen[e.ID] {
			seen[e.ID] = true
			out = append(out, e)
		}
	}
	return out
}

func (s *opSink) otherEvents() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.others
}

func createDestination(t *testing.T, base string, body string) string {
	t.Helper()
	var d struct{ ID string }
	if code := call(t, "POST", base+"/v1/destinations", body, &d); code != http.StatusCreated {
		t.Fatalf("POST /v1/destinations %s: %d", body, code)
	}
	return d.ID
}

func types(events []opEvent) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.Type+"("+e.about()+")")
	}
	return out
}

// TestNotices_DestinationDownAndBack: a destination that fails trips the
// breaker and is paused; once it answers again, the first delivery after
// the cooldown ends the pause. A destination that asks for fanout.* hears
// of both, exactly once each; the destination they are about hears of
// neither although its filter asks for fanout.*, and one that takes every
// event ("*", or no filter) gets none.
func TestNotices_DestinationDownAndBack(t *testing.T) {
	t.Parallel()
	a := startApp(t, []string{"--data", t.TempDir(), "--breaker-failures", "3", "--breaker-window", "0",
		"--breaker-cooldown", "300ms", "--retry-initial", "20ms", "--retry-max", "50ms"}, nil, nil)
	alerts, flaky, everything, star := newOpSink(t), newOpSink(t), newOpSink(t), newOpSink(t)
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["fanout.*"]}`, alerts.URL))
	flakyID := createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["order.*","fanout.*"]}`, flaky.URL))
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q}`, everything.URL))
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["*"]}`, star.URL))

	flaky.status.Store(http.StatusServiceUnavailable)
	for i := range 5 {
		if code, _ := postWith(t, a.URL+"/v1/event", fmt.Sprintf(`{"type":"order.paid","n":%d}`, i)); code != 202 {
			t.Fatalf("POST: %d", code)
		}
	}
	eventually(t, "the pause announced", 10*time.Second, func() bool { return len(alerts.got()) == 1 })
	paused := alerts.got()[0]
	var data struct {
		DestinationID string     `json:"destination_id"`
		URL           string     `json:"destination_url"`
		Trigger       string     `json:"trigger"`
		Reason        string     `json:"reason"`
		PausedUntil   *time.Time `json:"paused_until"`
	}
	if err := json.Unmarshal(paused.Data, &data); err != nil {
		t.Fatal(err)
	}
	if paused.Type != service.NoticePaused || data.DestinationID != flakyID || data.URL != flaky.URL || data.Trigger != "automatic" ||
		!strings.Contains(data.Reason, "circuit breaker") || data.PausedUntil == nil || paused.ID != "fanout:"+flakyID+":1:paused" {
		t.Fatalf("paused event %s", paused.raw)
	}

	flaky.status.Store(0)
	eventually(t, "the recovery announced", 10*time.Second, func() bool { return len(alerts.got()) == 2 })
	recovered := alerts.got()[1]
	var rd struct {
		PreviousState string  `json:"previous_state"`
		DownSeconds   float64 `json:"down_seconds"`
	}
	_ = json.Unmarshal(recovered.Data, &rd)
	if recovered.Type != service.NoticeRecovered || recovered.about() != flakyID || rd.PreviousState != "paused" || rd.DownSeconds <= 0 ||
		recovered.ID != "fanout:"+flakyID+":2:ok" {
		t.Fatalf("recovered event %s", recovered.raw)
	}
	eventually(t, "the events delivered", 10*time.Second, func() bool { return flaky.otherEvents() >= 5 })
	d, _ := a.dests.Get(flakyID)
	if d.CircuitOpenUntil != nil || d.Reason != "" {
		t.Errorf("the breaker's pause is still recorded after the recovery: %v %q", d.CircuitOpenUntil, d.Reason)
	}
	time.Sleep(300 * time.Millisecond) // nothing more comes
	if got := types(alerts.got()); len(got) != 2 {
		t.Errorf("alerts got %v, want the pause and the recovery", got)
	}
	for name, s := range map[string]*opSink{"the destination they are about": flaky, "a destination without filter": everything,
		`a destination with filter "*"`: star} {
		if got := s.got(); len(got) != 0 {
			t.Errorf("%s got operational events %v", name, types(got))
		}
	}
}

// TestNotices_ByHand: pauses and disables made through the API are
// announced too (trigger "manual"), and so are the resume and the
// re-enabling; each change has the next sequence number in its id.
func TestNotices_ByHand(t *testing.T) {
	t.Parallel()
	a := startApp(t, []string{"--data", t.TempDir()}, nil, nil)
	alerts := newOpSink(t)
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["fanout.destination.*"]}`, alerts.URL))
	id := createDestination(t, a.URL, `{"url":"https://example.com/hook","description":"orders"}`)
	want := []string{}
	for i, step := range []struct{ body, typ, state string }{
		{`{"paused":true}`, service.NoticePaused, "paused"},
		{`{"paused":false}`, service.NoticeRecovered, "ok"},
		{`{"enabled":false}`, service.NoticeDisabled, "disabled"},
		{`{"enabled":true}`, service.NoticeRecovered, "ok"},
	} {
		if code := call(t, "PATCH", a.URL+"/v1/destinations/"+id, step.body, nil); code != 200 {
			t.Fatalf("PATCH %s: %d", step.body, code)
		}
		want = append(want, fmt.Sprintf("fanout:%s:%d:%s", id, i+1, step.state))
		eventually(t, step.typ+" announced", 10*time.Second, func() bool { return len(alerts.got()) == i+1 })
		e := alerts.got()[i]
		if e.Type != step.typ || e.ID != want[i] {
			t.Fatalf("step %d (%s): got %s %s, want %s %s", i, step.body, e.Type, e.ID, step.typ, want[i])
		}
		if step.state != "ok" && !strings.Contains(string(e.Data), `"trigger":"manual"`) {
			t.Errorf("%s: %s", step.typ, e.raw)
		}
		if !strings.Contains(string(e.Data), `"destination_description":"orders"`) {
			t.Errorf("%s lacks the destination's description: %s", step.typ, e.raw)
		}
	}
	// A deleted destination's record goes with it; nothing is announced.
	if code := call(t, "DELETE", a.URL+"/v1/destinations/"+id, nil, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d", code)
	}
	eventually(t, "the record deleted", 5*time.Second, func() bool {
		_, err := a.store.DocGet(context.Background(), service.NoticeDocKind, id)
		return errors.Is(err, dispatch.ErrNotFound)
	})
	if got := alerts.got(); len(got) != 4 {
		t.Errorf("got %v", types(got))
	}
}

// TestNotices_FailedStorm: a destination that refuses every event (a 400:
// no retry) dead-letters a storm of deliveries, which is announced in a
// bounded number of events, one per notice window, whose counts add up.
func TestNotices_FailedStorm(t *testing.T) {
	t.Parallel()
	a := startApp(t, []string{"--data", t.TempDir(), "--notice-window", "1s", "--max-batch-events", "1000",
		"--breaker-failures", "0"}, nil, nil)
	alerts, bad := newOpSink(t), newOpSink(t)
	bad.status.Store(http.StatusBadRequest)
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["fanout.deliveries.failed"]}`, alerts.URL))
	badID := createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["order.*"]}`, bad.URL))
	const n = 600
	var events []string
	for i := range n {
		events = append(events, fmt.Sprintf(`{"type":"order.paid","n":%d}`, i))
	}
	start := time.Now()
	for i := 0; i < n; i += 200 {
		if code, _ := postWith(t, a.URL+"/v1/batch", "["+strings.Join(events[i:i+200], ",")+"]"); code != 202 {
			t.Fatalf("batch: %d", code)
		}
	}
	total := func() int {
		sum := 0
		for _, e := range alerts.got() {
			var d service.FailedNotice
			_ = json.Unmarshal(e.Data, &d)
			sum += d.Count
		}
		return sum
	}
	eventually(t, "every failure announced", 20*time.Second, func() bool { return total() == n })
	windows := int(time.Since(start)/time.Second) + 2
	got := alerts.got()
	if len(got) > windows {
		t.Errorf("%d failure summaries in %d windows of 1s: want at most one a window", len(got), windows)
	}
	starts := map[time.Time]bool{}
	for _, e := range got {
		var d service.FailedNotice
		if err := json.Unmarshal(e.Data, &d); err != nil {
			t.Fatal(err)
		}
		if e.Type != service.NoticeFailed || d.DestinationID != badID || d.Count < 1 || len(d.First) == 0 || len(d.First) > service.NoticeFirstIDs ||
			len(d.First) > d.Count || d.WindowEnd.Sub(d.WindowStart) != time.Second || starts[d.WindowStart] ||
			!strings.Contains(d.LastError, "400") || !strings.HasPrefix(e.ID, "fanout:"+badID+":failed:") {
			t.Errorf("summary %s", e.raw)
		}
		starts[d.WindowStart] = true // one summary a window
		for _, f := range d.First {
			if !strings.HasPrefix(f.ID, f.EventID+".") || f.Status != 400 || f.Attempts != 1 {
				t.Errorf("first delivery %+v", f)
			}
		}
	}
	t.Logf("%d dead letters in %d summaries", n, len(got))
	var m float64
	for _, mf := range mustGather(t, a.svc.Metrics) {
		if mf.GetName() == "fanout_operational_events_total" {
			for _, metric := range mf.GetMetric() {
				if metric.GetLabel()[0].GetValue() == service.NoticeFailed {
					m = metric.GetCounter().GetValue()
				}
			}
		}
	}
	if int(m) != len(got) {
		t.Errorf("fanout_operational_events_total{type=%q} %v, want %d", service.NoticeFailed, m, len(got))
	}
}

// failOnce is a notice store whose first DocCreate fails after all (a
// crash between announcing a change and recording it, as the next look
// sees it).
type failOnce struct {
	service.NoticeStore
	failed atomic.Bool
}

func (s *failOnce) DocCreate(ctx context.Context, doc *dispatch.Doc) error {
	if s.failed.CompareAndSwap(false, true) {
		return errors.New("lost")
	}
	return s.NoticeStore.DocCreate(ctx, doc)
}

// TestNotices_Deterministic: an announcement whose record was lost is made
// again on the next look, with the same id: fanout stores it once, and the
// destination that wants it gets it once.
func TestNotices_Deterministic(t *testing.T) {
	t.Parallel()
	a := startApp(t, []string{"--data", t.TempDir()}, nil, nil)
	ctx := context.Background()
	a.svc.Notices.Stop(ctx) // this test looks itself
	alerts := newOpSink(t)
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["fanout.*"]}`, alerts.URL))
	id := createDestination(t, a.URL, `{"url":"https://example.com/hook"}`)
	if code := call(t, "PATCH", a.URL+"/v1/destinations/"+id, `{"paused":true}`, nil); code != 200 {
		t.Fatalf("PATCH: %d", code)
	}
	store := &failOnce{NoticeStore: a.store}
	n := service.NewNotifier(a.svc, store, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)))
	n.Tick(ctx, false) // announced, not recorded
	if !store.failed.Load() {
		t.Fatal("nothing was announced")
	}
	n.Tick(ctx, false) // announced again, the same id; recorded
	n.Tick(ctx, false) // nothing new
	eventually(t, "the pause delivered", 10*time.Second, func() bool { return len(alerts.got()) == 1 })
	time.Sleep(200 * time.Millisecond)
	alerts.mu.Lock()
	deliveries := len(alerts.events)
	alerts.mu.Unlock()
	if deliveries != 1 {
		t.Fatalf("the pause was delivered %d times, want once", deliveries)
	}
	doc, err := a.store.DocGet(ctx, service.NoticeDocKind, id)
	if err != nil || !strings.Contains(string(doc.Data), `"seq":1`) || !strings.Contains(string(doc.Data), `"state":"paused"`) {
		t.Fatalf("record %v %v", doc, err)
	}
}

// TestNotices_Schema: the events match their schema in docs/openapi.yaml
// (the required fields, as named there).
func TestNotices_Schema(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Required []string `yaml:"required"`
			} `yaml:"schemas"`
		} `yaml:"components"`
		Webhooks map[string]any `yaml:"webhooks"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, typ := range service.NoticeTypes {
		if doc.Webhooks[typ] == nil {
			t.Errorf("docs/openapi.yaml has no webhook %s", typ)
		}
	}
	n := &service.Notifier{Window: time.Minute, Process: "p", Dests: newTestAPI(t).svc.Dests}
	until := time.Now()
	d := testDestination("dst_1")
	d.CircuitOpenUntil = &until
	last, next := &service.Announced{State: "ok", Seq: 0}, &service.Announced{State: "paused", Seq: 1, Since: time.Now()}
	cases := map[string]service.Notice{
		"DestinationPausedOrDisabled": n.StateNotice(d, last, next, "automatic", "why"),
		"DestinationRecovered":        n.StateNotice(d, next, &service.Announced{State: "ok", Seq: 2, Since: time.Now()}, "", ""),
		"DeliveriesFailed":            n.Summary("dst_1", &service.FailureWindow{Count: 1, First: []service.FailedDelivery{{ID: "e.0.0", EventID: "e", Attempts: 1}}}),
	}
	for schema, nt := range cases {
		var e map[string]json.RawMessage
		if err := json.Unmarshal(nt.Event, &e); err != nil {
			t.Fatal(err)
		}
		check := func(name string, obj map[string]json.RawMessage) {
			req := doc.Components.Schemas[name].Required
			if len(req) == 0 {
				t.Fatalf("schema %s has no required fields in docs/openapi.yaml", name)
			}
			for _, f := range req {
				if _, ok := obj[f]; !ok {
					t.Errorf("%s lacks %q (schema %s): %s", nt.Type, f, name, nt.Event)
				}
			}
		}
		check("OperationalEvent", e)
		var data map[string]json.RawMessage
		_ = json.Unmarshal(e["data"], &data)
		check(schema, data)
	}
	if !slices.Equal(service.NoticeTypes, []string{service.NoticePaused, service.NoticeDisabled, service.NoticeRecovered, service.NoticeFailed}) {
		t.Fatal(service.NoticeTypes)
	}
}

func testDestination(id string) *destination.Destination {
	return &destination.Destination{ID: id, URL: "https://example.com/hook", Enabled: true}
}

func mustGather(t *testing.T, m *service.Metrics) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// TestNotices_Gone: a destination that answers 410 Gone is disabled, which
// is announced as automatic with fanout's reason, and its dead letter is
// summed up.
func TestNotices_Gone(t *testing.T) {
	t.Parallel()
	a := startApp(t, []string{"--data", t.TempDir(), "--notice-window", "1s"}, nil, nil)
	alerts, gone := newOpSink(t), newOpSink(t)
	gone.status.Store(http.StatusGone)
	createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["fanout.*"]}`, alerts.URL))
	id := createDestination(t, a.URL, fmt.Sprintf(`{"url":%q,"filter":["order.*"]}`, gone.URL))
	if code, _ := postWith(t, a.URL+"/v1/event", `{"type":"order.paid"}`); code != 202 {
		t.Fatalf("POST: %d", code)
	}
	eventually(t, "disabled and failed announced", 10*time.Second, func() bool { return len(alerts.got()) == 2 })
	byType := map[string]opEvent{}
	for _, e := range alerts.got() {
		byType[e.Type] = e
	}
	disabled, failed := byType[service.NoticeDisabled], byType[service.NoticeFailed]
	var dd service.DestinationNotice
	_ = json.Unmarshal(disabled.Data, &dd)
	if dd.DestinationID != id || dd.Trigger != "automatic" || !strings.Contains(dd.Reason, "410 Gone") || disabled.ID != "fanout:"+id+":1:disabled" {
		t.Errorf("disabled event %s", disabled.raw)
	}
	var fd service.FailedNotice
	_ = json.Unmarshal(failed.Data, &fd)
	if fd.DestinationID != id || fd.Count != 1 || len(fd.First) != 1 || fd.First[0].Status != 410 {
		t.Errorf("failed event %s", failed.raw)
	}
}

// TestNotices_Tenants: an operational event about a tenant's destination is
// that tenant's: it reaches the tenant's own subscribers and the operator's
// destinations of every tenant, never another tenant's.
func TestNotices_Tenants(t *testing.T) {
	t.Parallel()
	const op = "notices-operator-token-0123456789"
	a := startApp(t, []string{"--data", t.TempDir(), "--api-token", op}, nil, nil)
	auth := []string{"Authorization", "Bearer " + op}
	for _, id := range []string{"acme", "globex"} {
		if code := call(t, "PUT", a.URL+"/v1/tenants/"+id, `{}`, nil, auth...); code != http.StatusCreated {
			t.Fatalf("PUT tenant %s: %d", id, code)
		}
	}
	acmeAlerts, globexAlerts, audit := newOpSink(t), newOpSink(t), newOpSink(t)
	create := func(path, body string) string {
		var d struct{ ID string }
		if code := call(t, "POST", a.URL+path, body, &d, auth...); code != http.StatusCreated {
			t.Fatalf("POST %s %s: %d", path, body, code)
		}
		return d.ID
	}
	create("/v1/tenants/acme/destinations", fmt.Sprintf(`{"url":%q,"filter":["fanout.destination.*"]}`, acmeAlerts.URL))
	create("/v1/tenants/globex/destinations", fmt.Sprintf(`{"url":%q,"filter":["fanout.destination.*"]}`, globexAlerts.URL))
	create("/v1/destinations", fmt.Sprintf(`{"url":%q,"filter":["fanout.destination.*"],"all_tenants":true}`, audit.URL))
	id := create("/v1/tenants/acme/destinations", `{"url":"https://example.com/hook"}`)
	if code := call(t, "PATCH", a.URL+"/v1/destinations/"+id, `{"paused":true}`, nil, auth...); code != 200 {
		t.Fatalf("pause: %d", code)
	}
	eventually(t, "the pause announced to acme and the operator", 10*time.Second, func() bool {
		return len(acmeAlerts.got()) == 1 && len(audit.got()) == 1
	})
	time.Sleep(300 * time.Millisecond)
	if got := globexAlerts.got(); len(got) != 0 {
		t.Fatalf("globex got acme's operational event: %v", types(got))
	}
	if e := acmeAlerts.got()[0]; e.Type != service.NoticePaused || !strings.Contains(string(e.Data), id) {
		t.Fatalf("acme got %s", e.raw)
	}
}
