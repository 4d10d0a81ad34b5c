package s3sink

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"fanout/internal/mototest"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

func TestMain(m *testing.M) { mototest.Main(m) }

func msg(id string) *sink.Message {
	return &sink.Message{DeliveryID: "dlv_" + id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: "cust-9",
		Headers: map[string]string{"X-Team": "billing"}}
}

func admin(t *testing.T, srv *mototest.Server) *s3.Client {
	t.Helper()
	a := awsbase.Auth{Region: mototest.Region, EndpointURL: srv.URL, AccessKeyID: srv.Admin.AccessKeyID, SecretAccessKey: srv.Admin.SecretAccessKey}
	cfg, _, err := a.Load(mototest.Ctx(t), mototest.Loopback())
	if err != nil {
		t.Fatal(err)
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
}

func createBucket(t *testing.T, c *s3.Client, name string) {
	t.Helper()
	if _, err := c.CreateBucket(mototest.Ctx(t), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatal(err)
	}
}

var day = time.Date(2026, 3, 14, 23, 59, 30, 0, time.FixedZone("CET", 3600))

func open(t *testing.T, env sink.Env, cfg string) *Sender {
	t.Helper()
	c, err := Parse(json.RawMessage(cfg))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(mototest.Ctx(t), env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	s.(*Sender).now = func() time.Time { return day }
	return s.(*Sender)
}

// TestSend: the object is at the template's key with the body, the content
// type and the metadata; a resend of the same delivery leaves one object.
func TestSend(t *testing.T) {
	srv := mototest.Need(t)
	c := admin(t, srv)
	createBucket(t, c, "events")
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"bucket":"events","key_template":"{tenant}/{type}/{date}/{hour}/{event_id}.json"}`, srv.Auth(srv.Admin)))
	ctx := mototest.Ctx(t)
	for range 2 {
		if err := s.Send(ctx, msg("1")); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("events")})
	if err != nil {
		t.Fatal(err)
	}
	const key = "acme/order.paid/2026-03-14/22/evt_1.json" // the date in UTC
	if len(list.Contents) != 1 || aws.ToString(list.Contents[0].Key) != key {
		var keys []string
		for _, o := range list.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
		t.Fatalf("objects %v, want just %s", keys, key)
	}
	obj, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("events"), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(obj.Body)
	_ = obj.Body.Close()
	if string(body) != `{"type":"order.paid","n":1}` || aws.ToString(obj.ContentType) != "application/json" {
		t.Errorf("object %q, content type %q", body, aws.ToString(obj.ContentType))
	}
	want := map[string]string{
		sink.HeaderDeliveryID: "dlv_1", sink.HeaderEventID: "evt_1", sink.HeaderEventType: "order.paid",
		sink.HeaderTenant: "acme", sink.HeaderKey: "cust-9", "x-team": "billing",
	}
	if fmt.Sprint(obj.Metadata) != fmt.Sprint(want) {
		t.Errorf("metadata %v, want %v", obj.Metadata, want)
	}
}

func TestKey(t *testing.T) {
	c := &Config{KeyTemplate: "{year}/{month}/{day}/{tenant}/{type}/{delivery_id}"}
	got := c.Key(&sink.Message{DeliveryID: "d\x01", Type: "a/b"}, day)
	if want := "2026/03/14/_/a/b/d_"; got != want {
		t.Errorf("key %q, want %q", got, want)
	}
}

func fake(t *testing.T, status int, body string) string {
	f := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f.URL
}

func s3Error(code string) string {
	return `<?xml version="1.0" encoding="UTF-8"?><Error><Code>` + code + `</Code><Message>m AKIATESTTESTTEST config-secret-key-0123456789 config-session-token-0123456789</Message><RequestId>r</RequestId></Error>`
}

const testCreds = `"access_key_id":"AKIATESTTESTTEST","secret_access_key":"config-secret-key-0123456789","session_token":"config-session-token-0123456789"`

func fakeCfg(url string) string {
	return `{"region":"us-east-1","endpoint_url":"` + url + `","bucket":"events",` + testCreds + `}`
}

func TestSend_Outcomes(t *testing.T) {
	srv := mototest.Need(t)
	createBucket(t, admin(t, srv), "outcomes")
	cfg := func(c mototest.Creds, bucket string) string {
		return fmt.Sprintf(`{%s,"bucket":%q}`, srv.Auth(c), bucket)
	}
	tests := []struct {
		name string
		cfg  func(t *testing.T) string
		want sink.Outcome
	}{
		{"unknown access key", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: "AKIANOSUCHKEY0000000", SecretAccessKey: srv.Admin.SecretAccessKey}, "outcomes")
		}, sink.Permanent},
		{"wrong secret", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: srv.Admin.AccessKeyID, SecretAccessKey: "wrong-secret-wrong"}, "outcomes")
		}, sink.Permanent},
		{"no such bucket", func(*testing.T) string { return cfg(srv.Admin, "missing") }, sink.Retryable},
		{"not allowed", func(*testing.T) string { return cfg(srv.NoPerm, "outcomes") }, sink.Retryable},
		{"slow down", func(t *testing.T) string { return fakeCfg(fake(t, 503, s3Error("SlowDown"))) }, sink.Retryable},
		{"500", func(t *testing.T) string { return fakeCfg(fake(t, 500, s3Error("InternalError"))) }, sink.Retryable},
		{"wrong region", func(t *testing.T) string { return fakeCfg(fake(t, 301, s3Error("PermanentRedirect"))) }, sink.Permanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, mototest.Loopback(), tt.cfg(t))
			err := s.Send(mototest.Ctx(t), msg("x"))
			t.Log(err)
			if got := sink.OutcomeOf(err); got != tt.want {
				t.Fatalf("outcome %v (%v), want %v", got, err, tt.want)
			}
			for _, secret := range []string{"AKIATESTTESTTEST", "config-secret-key", "config-session-token"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error shows %s: %v", secret, err)
				}
			}
		})
	}
}

func TestGuard(t *testing.T) {
	for _, endpoint := range []string{"http://169.254.169.254", "http://127.0.0.1:9000", "http://[fe80::1]"} {
		s := open(t, mototest.Strict(), `{"region":"us-east-1","endpoint_url":"`+endpoint+`","bucket":"events",`+testCreds+`}`)
		err := s.Send(mototest.Ctx(t), msg("x"))
		if sink.OutcomeOf(err) != sink.Permanent || !strings.Contains(err.Error(), "refused to connect") {
			t.Errorf("%s: %v, want a permanent refusal", endpoint, err)
		}
	}
}

func TestParse(t *testing.T) {
	const auth = `"region":"eu-west-1","access_key_id":"AKIA1","secret_access_key":"s"`
	tests := []struct {
		cfg   string
		field string
	}{
		{`{` + auth + `,"bucket":"events"}`, ""},
		{`{` + auth + `,"bucket":"my.events-1","key_template":"x/{delivery_id}","path_style":false,"storage_class":"STANDARD_IA"}`, ""},
		{`{` + auth + `}`, "bucket"},
		{`{` + auth + `,"bucket":"Events"}`, "bucket"},
		{`{` + auth + `,"bucket":"ev"}`, "bucket"},
		{`{` + auth + `,"bucket":"events","key_template":"{type}/{date}"}`, "key_template"},
		{`{` + auth + `,"bucket":"events","key_template":"{event_id}/{nope}"}`, "key_template"},
		{`{` + auth + `,"bucket":"events","key_template":"/{event_id}"}`, "key_template"},
		{`{` + auth + `,"bucket":"events","storage_class":"COLD"}`, "storage_class"},
		{`{"region":"eu-west-1","bucket":"events"}`, "access_key_id"},
	}
	for _, tt := range tests {
		_, err := Parse(json.RawMessage(tt.cfg))
		if tt.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.cfg, err)
			}
			continue
		}
		var ce *sink.ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: %v, want a config error on %s", tt.cfg, err, tt.field)
		}
	}
}
