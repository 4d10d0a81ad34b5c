// Package deploy holds the checks of the deployment files that work
// offline: the compose file parsed and checked (services, healthchecks,
// the replicas sharing one database behind one port), the systemd unit
// checked and, where systemd-analyze exists, verified.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// service is what the test reads of a compose service.
type service struct {
	Image       string
	Build       any
	Environment map[string]string
	Ports       []string
	Volumes     []string
	DependsOn   map[string]struct{ Condition string } `yaml:"depends_on"`
	Healthcheck *struct{ Test []string }
	Profiles    []string
}

func TestCompose(t *testing.T) {
	b, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]service
		Volumes  map[string]any
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	replicas := []string{"fanout-1", "fanout-2"}
	var urls []string
	for _, name := range replicas {
		s, ok := c.Services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		if s.Build == nil || s.Image != "fanout:latest" {
			t.Errorf("%s: builds %v as %q, want the Dockerfile built as fanout:latest", name, s.Build, s.Image)
		}
		url := s.Environment["FANOUT_DATABASE_URL"]
		if !strings.Contains(url, "@postgres:5432/") {
			t.Errorf("%s: FANOUT_DATABASE_URL %q is not the postgres service", name, url)
		}
		urls = append(urls, url)
		if !strings.Contains(s.Environment["FANOUT_API_TOKENS"], ":?") {
			t.Errorf("%s: FANOUT_API_TOKENS %q must be required (${VAR:?...}): a replica on a network answers anyone without one", name, s.Environment["FANOUT_API_TOKENS"])
		}
		if s.Healthcheck == nil || !slices.Equal(s.Healthcheck.Test, []string{"CMD", "/fanout", "healthcheck"}) {
			t.Errorf("%s: healthcheck %+v, want fanout healthcheck", name, s.Healthcheck)
		}
		if s.DependsOn["postgres"].Condition != "service_healthy" {
			t.Errorf("%s: starts before PostgreSQL is healthy: %+v", name, s.DependsOn)
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes %v: the replicas are reached through the proxy's one port", name, s.Ports)
		}
	}
	if urls[0] != urls[1] {
		t.Errorf("the replicas do not share one database: %v", urls)
	}
	pg := c.Services["postgres"]
	if pg.Healthcheck == nil || !slices.Contains(pg.Healthcheck.Test, "pg_isready") || len(pg.Volumes) == 0 {
		t.Errorf("postgres: healthcheck %+v, volumes %v; want pg_isready and a volume", pg.Healthcheck, pg.Volumes)
	}
	proxy := c.Services["proxy"]
	if !slices.Equal(proxy.Ports, []string{"8000:8000"}) {
		t.Errorf("proxy: ports %v, want the one port 8000", proxy.Ports)
	}
	for _, r := range replicas {
		if proxy.DependsOn[r].Condition != "service_healthy" {
			t.Errorf("proxy: does not wait for %s to be healthy: %+v", r, proxy.DependsOn)
		}
	}
	conf, err := os.ReadFile("compose/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas {
		if !regexp.MustCompile(`(?m)^\s*server\s+` + r + `:8000\b`).Match(conf) {
			t.Errorf("nginx.conf: %s is not in the upstream", r)
		}
	}
	if !strings.Contains(string(conf), "proxy_next_upstream off") {
		t.Error("nginx.conf: a failed request may be sent to the other replica (an ingest that timed out may have been stored)")
	}
	if col, ok := c.Services["otel-collector"]; !ok || !slices.Contains(col.Profiles, "tracing") {
		t.Error("the OpenTelemetry collector is missing or not optional (profile tracing)")
	}
}

func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("systemd/fanout.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{"DynamicUser=yes", "StateDirectory=fanout", "ProtectSystem=strict", "ProtectHome=yes",
		"NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n", "--data ${STATE_DIRECTORY}", "TimeoutStopSec="} {
		if !strings.Contains(unit, want) {
			t.Errorf("fanout.service lacks %q", want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze here: the unit was checked, not verified")
	}
	// Verified with a binary that exists here in place of fanout's path.
	tmp := filepath.Join(t.TempDir(), "fanout.service")
	if err := os.WriteFile(tmp, []byte(strings.ReplaceAll(unit, "/usr/local/bin/fanout", "/bin/true")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", tmp).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
