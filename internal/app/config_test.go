package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestRun_Config(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c *config)
	}{
		{name: "Defaults", check: func(t *testing.T, c *config) {
			if c.addr != "localhost:8000" || c.dataDir != "data" || c.deliveryTimeout != 10*time.Second || len(c.destinations) != 0 {
				t.Fatalf("defaults %+v", c)
			}
		}},
		{name: "EnvTwins", env: map[string]string{"FANOUT_ADDR": ":9000", "FANOUT_MAX_EVENT_BYTES": "2KiB",
			"FANOUT_DESTINATIONS": "http://a.example/x, https://b.example/y", "FANOUT_DEMO": "true"},
			check: func(t *testing.T, c *config) {
				if c.addr != ":9000" || c.limits.MaxEventBytes != 2048 || len(c.destinations) != 2 || !c.demo {
					t.Fatalf("config from env %+v", c)
				}
			}},
		{name: "FlagWinsOverEnv", args: []string{"--addr", ":1"}, env: map[string]string{"FANOUT_ADDR": ":2"},
			check: func(t *testing.T, c *config) {
				if c.addr != ":1" {
					t.Fatalf("addr %q, want the flag's", c.addr)
				}
			}},
		{name: "RepeatedDestination", args: []string{"--destination", "http://a/", "--destination", "http://b/"},
			check: func(t *testing.T, c *config) {
				if len(c.destinations) != 2 {
					t.Fatalf("destinations %v", c.destinations)
				}
			}},
		{name: "BadDestinationScheme", args: []string{"--destination", "ftp://a/"}, wantErr: "must be http or https"},
		{name: "DestinationWithCredentials", args: []string{"--destination", "http://u:p@a/"}, wantErr: "credentials"},
		{name: "BadEnv", env: map[string]string{"FANOUT_WORKERS": "many"}, wantErr: "FANOUT_WORKERS"},
		{name: "BadSize", args: []string{"--max-event-bytes", "lots"}, wantErr: "max-event-bytes"},
		{name: "UnknownFlag", args: []string{"--nope"}, wantErr: "see fanout --help"},
		{name: "NoRetryBudget", args: []string{"--retry-max-age", "0"}, wantErr: "retry forever"},
		{name: "ZeroTimeout", args: []string{"--delivery-timeout", "0s"}, wantErr: "--delivery-timeout must be positive"},
		{name: "APITokens", args: []string{"--api-token", "aaaaaaaaaaaaaaaa1"}, env: map[string]string{"FANOUT_API_TOKENS": "ignored-the-flag-wins"},
			check: func(t *testing.T, c *config) {
				if fmt.Sprint(c.apiTokens) != "[aaaaaaaaaaaaaaaa1]" {
					t.Fatalf("apiTokens %q", c.apiTokens)
				}
			}},
		{name: "APITokensFromEnv", env: map[string]string{"FANOUT_API_TOKENS": "aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2"},
			check: func(t *testing.T, c *config) {
				if fmt.Sprint(c.apiTokens) != "[aaaaaaaaaaaaaaaa1 bbbbbbbbbbbbbbbb2]" {
					t.Fatalf("apiTokens %q", c.apiTokens)
				}
			}},
		{name: "ShortAPIToken", args: []string{"--api-token", "hunter2"}, wantErr: "API token 1 of 1 (--api-token, FANOUT_API_TOKENS) must be at least 16"},
		{name: "ShortAPITokenFromEnv", env: map[string]string{"FANOUT_API_TOKENS": "aaaaaaaaaaaaaaaa1,hunter2"}, wantErr: "API token 2 of 2"},
		{name: "APITokensTrailingComma", env: map[string]string{"FANOUT_API_TOKENS": "aaaaaaaaaaaaaaaa1, "},
			check: func(t *testing.T, c *config) {
				if fmt.Sprint(c.apiTokens) != "[aaaaaaaaaaaaaaaa1]" {
					t.Fatalf("apiTokens %q", c.apiTokens)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, io.Discard, io.Discard)
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error repeats a secret: %v", err)
			}
			if tc.wantErr != "" {
				var ue *usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("err %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestRun_Version(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := Main(context.Background(), []string{"--version"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("run --version: %v", err)
	}
	if !strings.HasPrefix(out.String(), "fanout "+version) || !strings.Contains(out.String(), runtime.Version()) {
		t.Fatalf("--version printed %q", out.String())
	}
}

func TestRun_Help(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := Main(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("run --help: %v", err)
	}
	for _, want := range []string{"--addr", "FANOUT_ADDR", "FANOUT_DESTINATIONS", "FANOUT_DATA", "FANOUT_MAX_BATCH_EVENTS", "default localhost:8000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s:\n%s", want, out.String())
		}
	}
}

// TestRun_DurableByDefault: fanout as started with no flag but where to
// listen and keep its data commits every event durably (SQLite's
// synchronous=FULL, read back from the store's writer connection), and
// bounds request bodies in memory. The power-loss test checks what FULL
// buys, but skips without FUSE; this one pins the default everywhere.
func TestRun_DurableByDefault(t *testing.T) {
	t.Parallel()
	c, err := parseConfig(nil, func(string) string { return "" }, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.synchronous != "FULL" || c.limits.MaxInflightBytes != 256<<20 || c.publicURL != "" {
		t.Fatalf("defaults: synchronous %q, max-inflight-bytes %d, public-url %q; want FULL, 256 MiB, none",
			c.synchronous, c.limits.MaxInflightBytes, c.publicURL)
	}
	_, stop, logs := startRunLogs(t, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir()}, nil)
	defer func() { _ = stop() }()
	line := ""
	for l := range strings.Lines(logs()) {
		if strings.Contains(l, `msg="fanout listening"`) {
			line = l
		}
	}
	if !strings.Contains(line, "synchronous=FULL)") {
		t.Fatalf("fanout started with its defaults says %q, want its store at synchronous=FULL", line)
	}
}
