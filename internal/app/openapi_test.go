package app

import (
	"fanout/internal/httpapi"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestOpenAPI_MatchesRoutes keeps docs/openapi.yaml and the routes in step:
// every documented operation is a route, every route is documented.
func TestOpenAPI_MatchesRoutes(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" {
				continue
			}
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	routed := map[string]bool{}
	for _, r := range httpapi.Routes(nil, nil, testLimits) {
		routed[r.Pattern] = true
	}
	for op := range documented {
		if !routed[op] {
			t.Errorf("docs/openapi.yaml documents %s, which is not a route", op)
		}
	}
	for op := range routed {
		if !documented[op] {
			t.Errorf("route %s is not in docs/openapi.yaml", op)
		}
	}
}
