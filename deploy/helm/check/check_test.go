// Package check lints fanout's Helm chart and decodes what it renders
// into the Kubernetes API types, strictly, offline: helm's own linter and
// template engine (as helm lint --strict and helm template), then every
// object into k8s.io/api with unknown fields refused, since a schema
// validator would download its schemas. It is a module of its own, so
// that helm and the Kubernetes modules stay out of fanout's: make
// deploy-check runs it.
package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = "../fanout"

// cases are the values users set: SQLite with one replica, PostgreSQL
// with three, Secrets of their own.
var cases = []struct {
	name   string
	values map[string]any
}{
	{"SQLite", map[string]any{"apiTokens": map[string]any{"value": "0123456789abcdef0123"}}},
	{"PostgreSQL", map[string]any{"replicaCount": 3, "publicURL": "https://fanout.example.com",
		"database":  map[string]any{"url": "postgres://fanout:pw@db:5432/fanout"},
		"apiTokens": map[string]any{"value": "0123456789abcdef0123"}, "extraArgs": []any{"--retention", "72h"}}},
	{"ExistingSecrets", map[string]any{"replicaCount": 2, "database": map[string]any{"existingSecret": "db"},
		"apiTokens": map[string]any{"existingSecret": "tokens"}}},
}

func TestChart_Lint(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := lint.RunAll(chartDir, tc.values, "default")
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev { // --strict: warnings fail too
					t.Errorf("helm lint: %s", m)
				}
			}
		})
	}
}

// render renders the chart as helm template does.
func render(t *testing.T, values map[string]any) (map[string]string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := util.ToRenderValues(ch, values, common.ReleaseOptions{Name: "fanout", Namespace: "default", IsInstall: true},
		common.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	return engine.Render(ch, vals)
}

// decodeStrict decodes one rendered object into the API type of its kind,
// refusing fields the type does not have.
func decodeStrict(doc []byte) (kind string, obj any, err error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return "", nil, err
	}
	var head struct{ APIVersion, Kind string }
	if err := json.Unmarshal(j, &head); err != nil {
		return "", nil, err
	}
	switch head.APIVersion + "/" + head.Kind {
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "v1/Secret":
		obj = &corev1.Secret{}
	case "v1/PersistentVolumeClaim":
		obj = &corev1.PersistentVolumeClaim{}
	default:
		return head.Kind, nil, fmt.Errorf("unexpected %s %s", head.APIVersion, head.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return head.Kind, obj, dec.Decode(obj)
}

func TestChart_Render(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.values)
			if err != nil {
				t.Fatalf("helm template: %v", err)
			}
			kinds := map[string]any{}
			for name, text := range out {
				if filepath.Ext(name) != ".yaml" || strings.TrimSpace(text) == "" {
					continue
				}
				kind, obj, err := decodeStrict([]byte(text))
				if err != nil {
					t.Fatalf("%s: %v\n%s", name, err, text)
				}
				kinds[kind] = obj
			}
			d, ok := kinds["Deployment"].(*appsv1.Deployment)
			if !ok || kinds["Service"] == nil {
				t.Fatalf("rendered %v, want a Deployment and a Service", keys(kinds))
			}
			c := d.Spec.Template.Spec.Containers[0]
			sc := d.Spec.Template.Spec.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || c.SecurityContext == nil ||
				c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
				t.Errorf("the pod may run as root or write its image: %+v %+v", sc, c.SecurityContext)
			}
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("probes: readiness %+v, liveness %+v", c.ReadinessProbe, c.LivenessProbe)
			}
			envs := map[string]corev1.EnvVar{}
			for _, e := range c.Env {
				envs[e.Name] = e
			}
			if e, ok := envs["FANOUT_API_TOKENS"]; !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("the API tokens do not come from a Secret: %+v", e)
			}
			_, pg := envs["FANOUT_DATABASE_URL"]
			_, pvc := kinds["PersistentVolumeClaim"]
			if tc.name == "SQLite" {
				if pg || !pvc || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || *d.Spec.Replicas != 1 {
					t.Errorf("SQLite: database %v, volume %v, strategy %q, replicas %d; want a volume, Recreate, one replica",
						pg, pvc, d.Spec.Strategy.Type, *d.Spec.Replicas)
				}
			} else if !pg || pvc {
				t.Errorf("%s: database %v, volume %v; want the database URL from a Secret and no volume", tc.name, pg, pvc)
			}
			if tc.name == "PostgreSQL" && !slices.Contains(c.Args, "https://fanout.example.com") {
				t.Errorf("--public-url not passed: %v", c.Args)
			}
		})
	}
}

// TestChart_Refuses: values that would make an unsafe or broken release
// are refused when rendering, with a message that says why.
func TestChart_Refuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"NoToken", map[string]any{}, "apiTokens"},
		{"ReplicasOnSQLite", map[string]any{"replicaCount": 2, "apiTokens": map[string]any{"value": "0123456789abcdef0123"}}, "PostgreSQL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := render(t, tc.values); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("rendered with %v: %v, want a refusal naming %s", tc.values, err, tc.want)
			}
		})
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
