package snssink

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"fanout/internal/mototest"
	"fanout/sink"
	"fanout/sink/internal/awsbase"
)

func TestMain(m *testing.M) { mototest.Main(m) }

func msg(id, key string) *sink.Message {
	return &sink.Message{DeliveryID: id, EventID: "evt_" + id, Type: "order.paid", Tenant: "acme",
		Body: []byte(`{"type":"order.paid","n":1}`), ContentType: "application/json", Key: key,
		Headers: map[string]string{"X-Team": "billing"}}
}

type clients struct {
	sns *sns.Client
	sqs *sqs.Client
}

func admin(t *testing.T, srv *mototest.Server) clients {
	t.Helper()
	a := awsbase.Auth{Region: mototest.Region, EndpointURL: srv.URL, AccessKeyID: srv.Admin.AccessKeyID, SecretAccessKey: srv.Admin.SecretAccessKey}
	cfg, _, err := a.Load(mototest.Ctx(t), mototest.Loopback())
	if err != nil {
		t.Fatal(err)
	}
	return clients{sns.NewFromConfig(cfg), sqs.NewFromConfig(cfg)}
}

// topicToQueue makes a topic and a queue subscribed to it with raw
// delivery (the message as published, attributes as attributes), and
// returns the topic's ARN and the queue's URL.
func topicToQueue(t *testing.T, c clients, name string) (string, string) {
	t.Helper()
	ctx := mototest.Ctx(t)
	fifo := strings.HasSuffix(name, ".fifo")
	tin := &sns.CreateTopicInput{Name: aws.String(name)}
	qin := &sqs.CreateQueueInput{QueueName: aws.String(name)}
	if fifo {
		tin.Attributes = map[string]string{"FifoTopic": "true"}
		qin.Attributes = map[string]string{"FifoQueue": "true"}
	}
	topic, err := c.sns.CreateTopic(ctx, tin)
	if err != nil {
		t.Fatal(err)
	}
	queue, err := c.sqs.CreateQueue(ctx, qin)
	if err != nil {
		t.Fatal(err)
	}
	qa, err := c.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: queue.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.sns.Subscribe(ctx, &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"),
		Endpoint: aws.String(qa.Attributes["QueueArn"]), Attributes: map[string]string{"RawMessageDelivery": "true"}}); err != nil {
		t.Fatal(err)
	}
	return *topic.TopicArn, *queue.QueueUrl
}

func receive(t *testing.T, c clients, queue string) []sqstypes.Message {
	t.Helper()
	out, err := c.sqs.ReceiveMessage(mototest.Ctx(t), &sqs.ReceiveMessageInput{
		QueueUrl: aws.String(queue), MaxNumberOfMessages: 10, MessageAttributeNames: []string{"All"},
		MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameAll},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Messages
}

func open(t *testing.T, env sink.Env, cfg string) sink.Sender {
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
	return s
}

func TestSend_Standard(t *testing.T) {
	srv := mototest.Need(t)
	c := admin(t, srv)
	topic, queue := topicToQueue(t, c, "orders")
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"topic_arn":%q,"subject":"orders"}`, srv.Auth(srv.Admin), topic))
	if err := s.Send(mototest.Ctx(t), msg("dlv_1", "cust-9")); err != nil {
		t.Fatal(err)
	}
	got := receive(t, c, queue)
	if len(got) != 1 {
		t.Fatalf("%d messages in the subscribed queue, want 1", len(got))
	}
	if b := *got[0].Body; b != `{"type":"order.paid","n":1}` {
		t.Errorf("body = %q", b)
	}
	want := map[string]string{
		sink.HeaderDeliveryID: "dlv_1", sink.HeaderEventID: "evt_dlv_1", sink.HeaderEventType: "order.paid",
		sink.HeaderTenant: "acme", sink.HeaderKey: "cust-9", "content-type": "application/json", "X-Team": "billing",
	}
	for k, v := range want {
		if a, ok := got[0].MessageAttributes[k]; !ok || aws.ToString(a.StringValue) != v {
			t.Errorf("attribute %s = %+v, want %q", k, a, v)
		}
	}
}

func TestSend_FIFO(t *testing.T) {
	srv := mototest.Need(t)
	c := admin(t, srv)
	topic, queue := topicToQueue(t, c, "orders.fifo")
	s := open(t, mototest.Loopback(), fmt.Sprintf(`{%s,"topic_arn":%q}`, srv.Auth(srv.Admin), topic))
	ctx := mototest.Ctx(t)
	for _, m := range []*sink.Message{msg("dlv_1", "cust-9"), msg("dlv_1", "cust-9"), msg("dlv_2", "")} {
		if err := s.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got := receive(t, c, queue)
	groups := map[string]string{}
	for _, m := range got {
		groups[aws.ToString(m.MessageAttributes[sink.HeaderDeliveryID].StringValue)] = m.Attributes["MessageGroupId"]
	}
	if len(got) != 2 || groups["dlv_1"] != "cust-9" || groups["dlv_2"] != DefaultGroup {
		t.Fatalf("%d messages, delivery -> group %v; want dlv_1 -> cust-9, dlv_2 -> %s and the resend dropped", len(got), groups, DefaultGroup)
	}
}

func fakeServer(t *testing.T, status int, body string) string {
	f := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f.URL
}

func queryError(code, message string) string {
	return `<ErrorResponse><Error><Type>Sender</Type><Code>` + code + `</Code><Message>` + message + `</Message></Error><RequestId>r</RequestId></ErrorResponse>`
}

const testCreds = `"access_key_id":"AKIATESTTESTTEST","secret_access_key":"config-secret-key-0123456789","session_token":"config-session-token-0123456789"`

func fakeCfg(url string) string {
	return `{"region":"us-east-1","endpoint_url":"` + url + `","topic_arn":"arn:aws:sns:us-east-1:123456789012:t",` + testCreds + `}`
}

func TestSend_Outcomes(t *testing.T) {
	srv := mototest.Need(t)
	topic, _ := topicToQueue(t, admin(t, srv), "outcomes")
	cfg := func(c mototest.Creds, topic string) string {
		return fmt.Sprintf(`{%s,"topic_arn":%q}`, srv.Auth(c), topic)
	}
	tests := []struct {
		name string
		cfg  func(t *testing.T) string
		m    *sink.Message
		want sink.Outcome
	}{
		{"unknown access key", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: "AKIANOSUCHKEY0000000", SecretAccessKey: "x"}, topic)
		}, nil, sink.Permanent},
		{"wrong secret", func(*testing.T) string {
			return cfg(mototest.Creds{AccessKeyID: srv.Admin.AccessKeyID, SecretAccessKey: "wrong-secret-wrong"}, topic)
		}, nil, sink.Permanent},
		{"no such topic", func(*testing.T) string { return cfg(srv.Admin, topic+"-missing") }, nil, sink.Retryable},
		{"not allowed", func(*testing.T) string { return cfg(srv.NoPerm, topic) }, nil, sink.Retryable},
		{"body not UTF-8", func(*testing.T) string { return cfg(srv.Admin, topic) },
			&sink.Message{DeliveryID: "d", Body: []byte{0xc3, 0x28}}, sink.Permanent},
		{"throttled", func(t *testing.T) string {
			return fakeCfg(fakeServer(t, 400, queryError("Throttling", "Rate exceeded")))
		}, nil, sink.Retryable},
		{"500", func(t *testing.T) string { return fakeCfg(fakeServer(t, 500, queryError("InternalError", "oops"))) }, nil, sink.Retryable},
		{"502 from a proxy", func(t *testing.T) string { return fakeCfg(fakeServer(t, 502, "<html>bad gateway</html>")) }, nil, sink.Retryable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, mototest.Loopback(), tt.cfg(t))
			m := tt.m
			if m == nil {
				m = msg("dlv_x", "")
			}
			err := s.Send(mototest.Ctx(t), m)
			t.Log(err)
			if got := sink.OutcomeOf(err); got != tt.want {
				t.Fatalf("outcome %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	url := fakeServer(t, 403, queryError("InvalidClientTokenId", "key AKIATESTTESTTEST secret config-secret-key-0123456789 token config-session-token-0123456789"))
	s := open(t, mototest.Loopback(), fakeCfg(url))
	err := s.Send(mototest.Ctx(t), msg("d", ""))
	if sink.OutcomeOf(err) != sink.Permanent {
		t.Fatalf("%v, want permanent", err)
	}
	for _, secret := range []string{"AKIATESTTESTTEST", "config-secret-key", "config-session-token"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows %s: %v", secret, err)
		}
	}
}

func TestGuard(t *testing.T) {
	for _, endpoint := range []string{"http://169.254.169.254", "https://169.254.170.2", "http://192.168.0.1:4566"} {
		s := open(t, mototest.Strict(), `{"region":"us-east-1","endpoint_url":"`+endpoint+`","topic_arn":"arn:aws:sns:us-east-1:1:t",`+testCreds+`}`)
		err := s.Send(mototest.Ctx(t), msg("d", ""))
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
		{`{` + auth + `,"topic_arn":"arn:aws:sns:eu-west-1:1234:orders"}`, ""},
		{`{` + auth + `,"topic_arn":"arn:aws:sns:eu-west-1:1234:orders.fifo","message_group_id":"g"}`, ""},
		{`{` + auth + `}`, "topic_arn"},
		{`{` + auth + `,"topic_arn":"orders"}`, "topic_arn"},
		{`{` + auth + `,"topic_arn":"arn:aws:sqs:eu-west-1:1234:orders"}`, "topic_arn"},
		{`{` + auth + `,"topic_arn":"arn:aws:sns:us-east-1:1234:orders"}`, "topic_arn"},
		{`{` + auth + `,"topic_arn":"arn:aws:sns:eu-west-1:1234:orders","message_group_id":"g"}`, "message_group_id"},
		{`{` + auth + `,"topic_arn":"arn:aws:sns:eu-west-1:1234:orders","subject":"a\nb"}`, "subject"},
		{`{"region":"eu-west-1","topic_arn":"arn:aws:sns:eu-west-1:1234:orders"}`, "access_key_id"},
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
