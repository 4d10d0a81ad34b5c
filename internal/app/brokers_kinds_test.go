package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"fanout/internal/mototest"
	"fanout/internal/rabbittest"
	"fanout/internal/service"
	"fanout/sink"
)

// Every broker kind end to end, as TestRun_BrokerNATS and
// TestRun_BrokerKafka do for theirs: a destination created through run()'s
// API in the README's shape, a JSON event and a raw one in, the messages
// read back from the broker with its own client: the event's bytes, its
// content type, the delivery id, event id and type where the kind carries
// them. Servers that are slow to start (moto_server, RabbitMQ) are shared
// by the package's tests (TestMain stops them); the tests skip, saying so,
// when one is not installed.

// The two events every kind gets: a JSON one, and a raw CSV one with a
// content type that has a parameter (kept as sent).
const (
	kindJSONBody = `{"type":"order.paid","amount":12,"customer":{"id":"c-7"}}`
	kindJSONType = "order.paid"
	kindRawBody  = "id,total\n42,150\n"
	kindRawCT    = "text/csv; charset=utf-8"
	kindRawType  = "order.csv"
)

// createBroker creates a broker destination and returns it as answered.
func createBroker(t *testing.T, base string, in map[string]any) brokerDest {
	t.Helper()
	var d brokerDest
	st, b, _ := rawCall(t, "POST", base+"/v1/destinations", in)
	if st != 201 {
		t.Fatalf("create %v: %d %s", in["type"], st, b)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	// A broker destination signs nothing: no secret field, in the
	// creation's answer nor in a read.
	_, got, _ := rawCall(t, "GET", base+"/v1/destinations/"+d.ID, nil)
	var fields, created map[string]json.RawMessage
	_ = json.Unmarshal(got, &fields)
	_ = json.Unmarshal(b, &created)
	for _, k := range []string{"secret", "previous_secret"} {
		if _, ok := fields[k]; ok {
			t.Errorf("GET of a %v destination shows %s: %s", in["type"], k, got)
		}
		if _, ok := created[k]; ok {
			t.Errorf("the creation of a %v destination shows %s: %s", in["type"], k, b)
		}
	}
	return d
}

// postRaw sends kindRawBody as a raw event and returns its id.
func postRaw(t *testing.T, base string) string {
	t.Helper()
	st, b, _ := rawCall(t, "POST", base+"/v1/event?raw=true&type="+kindRawType, kindRawBody, "Content-Type", kindRawCT)
	var r struct{ ID string }
	if st != 202 || json.Unmarshal(b, &r) != nil || r.ID == "" {
		t.Fatalf("raw event: %d %s", st, b)
	}
	return r.ID
}

// sendBoth sends the JSON event and the raw one, and waits for both to be
// delivered.
func sendBoth(t *testing.T, base string) (jsonD, rawD service.DeliveryView) {
	t.Helper()
	jsonD = deliveryOf(t, base, postEvent(t, base, kindJSONBody), "delivered")
	rawD = deliveryOf(t, base, postRaw(t, base), "delivered")
	return jsonD, rawD
}

// checkMessage checks one message against the delivery it should be, of
// the JSON event or (raw) the raw one: its bytes, its content type and
// fanout's attributes (get reads one).
func checkMessage(t *testing.T, raw bool, what string, body []byte, contentType string, get func(string) string, d service.DeliveryView) {
	t.Helper()
	wantBody, wantCT, wantType := kindJSONBody, "application/json", kindJSONType
	if raw {
		wantBody, wantCT, wantType = kindRawBody, kindRawCT, kindRawType
	}
	if string(body) != wantBody {
		t.Errorf("%s: body %q, want %q", what, body, wantBody)
	}
	if contentType != wantCT {
		t.Errorf("%s: content type %q, want %q", what, contentType, wantCT)
	}
	checkHeaders(t, get, d, wantType)
}

// --- Redis Streams ---

// startRedisServer starts Debian's redis-server on a free loopback port
// for one test, or skips loudly without it.
func startRedisServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED: redis-server is not installed (apt-get install redis-server, as .ci/run does): the Redis end-to-end test needs it")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "",
		"--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	eventually(t, "redis-server answers", 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_, _ = c.Write([]byte("PING\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, "+PONG")
	})
	return addr
}

func TestRun_BrokerKindRedis(t *testing.T) {
	t.Parallel()
	addr := startRedisServer(t)
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	createBroker(t, base, map[string]any{"type": "redis", "config": map[string]any{
		"url": "redis://" + addr + "/0", "stream": "events", "maxlen": 100000}})
	jsonD, rawD := sendBoth(t, base)

	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	entries, err := rc.XRange(ctx, "events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("%d entries in the stream, want 2: %v", len(entries), entries)
	}
	field := func(e redis.XMessage) func(string) string {
		names := map[string]string{sink.HeaderDeliveryID: "id", sink.HeaderEventID: "event_id", sink.HeaderEventType: "type"}
		return func(k string) string { s, _ := e.Values[names[k]].(string); return s }
	}
	for i, d := range []service.DeliveryView{jsonD, rawD} {
		e := entries[i]
		body, _ := e.Values["body"].(string)
		ct, _ := e.Values["content_type"].(string)
		checkMessage(t, i == 1, "entry", []byte(body), ct, field(e), d)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// --- RabbitMQ ---

func TestRun_BrokerKindRabbitMQ(t *testing.T) {
	t.Parallel()
	b := rabbittest.Need(t)
	conn, err := amqp.Dial(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	const queue = "fanout-e2e-events"
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueuePurge(queue, false); err != nil {
		t.Fatal(err)
	}
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	createBroker(t, base, map[string]any{"type": "rabbitmq", "config": map[string]any{
		"url": b.URL, "exchange": "", "routing_key": queue}})
	jsonD, rawD := sendBoth(t, base)
	for i, d := range []service.DeliveryView{jsonD, rawD} {
		m, ok, err := ch.Get(queue, true)
		if err != nil || !ok {
			t.Fatalf("message %d: %v (in the queue: %v)", i, err, ok)
		}
		get := func(k string) string { s, _ := m.Headers[k].(string); return s }
		checkMessage(t, i == 1, "message", m.Body, m.ContentType, get, d)
		if m.MessageId != d.ID || m.DeliveryMode != amqp.Persistent {
			t.Errorf("message-id %q (want the delivery's, %s), delivery mode %d (want persistent)", m.MessageId, d.ID, m.DeliveryMode)
		}
	}
	if _, ok, _ := ch.Get(queue, true); ok {
		t.Fatal("a third message in the queue")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// --- AWS, against moto_server ---

// awsKit is the test's own AWS clients of the package's moto_server,
// signed as its admin user.
type awsKit struct {
	srv *mototest.Server
	cfg aws.Config
}

func newAWS(t *testing.T) *awsKit {
	t.Helper()
	srv := mototest.Need(t)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &awsKit{srv: srv, cfg: aws.Config{Region: mototest.Region, BaseEndpoint: aws.String(srv.URL),
		HTTPClient:  &http.Client{Transport: tr},
		Credentials: credentials.NewStaticCredentialsProvider(srv.Admin.AccessKeyID, srv.Admin.SecretAccessKey, ""),
	}}
}

// config is a destination config of k's server: fields, plus the region,
// endpoint and admin keys, as the README's examples have them.
func (k *awsKit) config(fields map[string]any) map[string]any {
	fields["region"], fields["endpoint_url"] = mototest.Region, k.srv.URL
	fields["access_key_id"], fields["secret_access_key"] = k.srv.Admin.AccessKeyID, k.srv.Admin.SecretAccessKey
	return fields
}

// unique is a name no other test of the run uses on the shared server.
func unique(prefix string) string { return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()) }

func (k *awsKit) queue(t *testing.T, name string) (queueURL, arn string) {
	t.Helper()
	c := sqs.NewFromConfig(k.cfg)
	in := &sqs.CreateQueueInput{QueueName: aws.String(name)}
	if strings.HasSuffix(name, ".fifo") {
		in.Attributes = map[string]string{"FifoQueue": "true"}
	}
	q, err := c.CreateQueue(mototest.Ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	qa, err := c.GetQueueAttributes(mototest.Ctx(t), &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	return *q.QueueUrl, qa.Attributes["QueueArn"]
}

// drain receives and deletes the messages of a queue until it has want of
// them, then looks once more for one too many.
func (k *awsKit) drain(t *testing.T, queueURL string, want int) []sqstypes.Message {
	t.Helper()
	c := sqs.NewFromConfig(k.cfg)
	var got []sqstypes.Message
	receive := func(wait int32) int {
		out, err := c.ReceiveMessage(mototest.Ctx(t), &sqs.ReceiveMessageInput{QueueUrl: aws.String(queueURL),
			MaxNumberOfMessages: 10, WaitTimeSeconds: wait, MessageAttributeNames: []string{"All"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			if _, err := c.DeleteMessage(mototest.Ctx(t), &sqs.DeleteMessageInput{QueueUrl: aws.String(queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
		}
		got = append(got, out.Messages...)
		return len(out.Messages)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < want && time.Now().Before(deadline) {
		receive(1)
	}
	receive(1)
	if len(got) != want {
		bodies := make([]string, len(got))
		for i, m := range got {
			bodies[i] = aws.ToString(m.Body) + " (delivery " + sqsAttr(m)(sink.HeaderDeliveryID) + ")"
		}
		t.Fatalf("%d messages in %s, want %d: %q", len(got), queueURL, want, bodies)
	}
	return got
}

// sqsAttr reads a message attribute of an SQS message.
func sqsAttr(m sqstypes.Message) func(string) string {
	return func(k string) string { return aws.ToString(m.MessageAttributes[k].StringValue) }
}

// byDelivery orders messages as ds are, by their fanout-delivery-id.
func byDelivery(t *testing.T, msgs []sqstypes.Message, ds ...service.DeliveryView) []sqstypes.Message {
	t.Helper()
	out := make([]sqstypes.Message, len(ds))
	for i, d := range ds {
		for _, m := range msgs {
			if sqsAttr(m)(sink.HeaderDeliveryID) == d.ID {
				out[i] = m
			}
		}
		if out[i].Body == nil {
			t.Fatalf("no message of delivery %s", d.ID)
		}
	}
	return out
}

func TestRun_BrokerKindSQS(t *testing.T) {
	t.Parallel()
	k := newAWS(t)
	queueURL, _ := k.queue(t, unique("e2e-sqs"))
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	createBroker(t, base, map[string]any{"type": "sqs", "config": k.config(map[string]any{"queue_url": queueURL})})
	jsonD, rawD := sendBoth(t, base)
	for i, m := range byDelivery(t, k.drain(t, queueURL, 2), jsonD, rawD) {
		checkMessage(t, i == 1, "message", []byte(aws.ToString(m.Body)), sqsAttr(m)("content-type"), sqsAttr(m), []service.DeliveryView{jsonD, rawD}[i])
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRun_BrokerKindSQSFIFODedup: SQS stores a message and its answer is
// lost; the delivery fails, is re-driven, and the resend, with the same
// delivery id as MessageDeduplicationId, is dropped by the FIFO queue:
// one message, not two.
func TestRun_BrokerKindSQSFIFODedup(t *testing.T) {
	t.Parallel()
	k := newAWS(t)
	queueURL, _ := k.queue(t, unique("e2e-dedup")+".fifo")
	// A proxy that passes every request to moto and loses SQS's answer to
	// the first SendMessage, as a connection that breaks after the request
	// went through would.
	target, _ := url.Parse(k.srv.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	proxy.Transport = tr
	var lost atomic.Int32
	proxy.ModifyResponse = func(r *http.Response) error {
		if strings.HasSuffix(r.Request.Header.Get("X-Amz-Target"), ".SendMessage") && r.StatusCode == 200 && lost.Add(1) == 1 {
			return errors.New("the answer is lost")
		}
		return nil
	}
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	front := httptest.NewServer(proxy)
	defer front.Close()

	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	cfg := k.config(map[string]any{"queue_url": queueURL})
	cfg["endpoint_url"] = front.URL
	createBroker(t, base, map[string]any{"type": "sqs", "config": cfg, "retry": map[string]any{"max_attempts": 1}})
	id := postEvent(t, base, kindJSONBody)
	failed := deliveryOf(t, base, id, "failed")
	if lost.Load() != 1 {
		t.Fatalf("the proxy lost %d answers, want 1", lost.Load())
	}
	// The event finishes with its failed delivery a moment later: until
	// then a re-drive is refused with a 409 that says to try again.
	var st int
	var b []byte
	eventually(t, "the re-drive accepted", 10*time.Second, func() bool {
		st, b, _ = rawCall(t, "POST", base+"/v1/deliveries/"+failed.ID+"/retry", nil)
		return st != 409
	})
	if st/100 != 2 {
		t.Fatalf("re-drive: %d %s", st, b)
	}
	d := deliveryOf(t, base, id, "delivered")
	if d.ID != failed.ID || d.Attempts < 2 {
		t.Fatalf("re-driven delivery %+v, want the same one, attempted twice", d)
	}
	msgs := k.drain(t, queueURL, 1)
	checkMessage(t, false, "fifo message", []byte(aws.ToString(msgs[0].Body)), sqsAttr(msgs[0])("content-type"), sqsAttr(msgs[0]), d)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestRun_BrokerKindSNS(t *testing.T) {
	t.Parallel()
	k := newAWS(t)
	name := unique("e2e-sns")
	topic, err := sns.NewFromConfig(k.cfg).CreateTopic(mototest.Ctx(t), &sns.CreateTopicInput{Name: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	// A queue subscribed with raw delivery: the message as published,
	// its attributes as the queue's message attributes.
	queueURL, arn := k.queue(t, name)
	if _, err := sns.NewFromConfig(k.cfg).Subscribe(mototest.Ctx(t), &sns.SubscribeInput{TopicArn: topic.TopicArn,
		Protocol: aws.String("sqs"), Endpoint: aws.String(arn), Attributes: map[string]string{"RawMessageDelivery": "true"}}); err != nil {
		t.Fatal(err)
	}
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	createBroker(t, base, map[string]any{"type": "sns", "config": k.config(map[string]any{"topic_arn": *topic.TopicArn})})
	jsonD, rawD := sendBoth(t, base)
	for i, m := range byDelivery(t, k.drain(t, queueURL, 2), jsonD, rawD) {
		checkMessage(t, i == 1, "message", []byte(aws.ToString(m.Body)), sqsAttr(m)("content-type"), sqsAttr(m), []service.DeliveryView{jsonD, rawD}[i])
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRun_BrokerKindEventBridge: EventBridge takes a JSON object as an
// event's detail: the JSON event goes on the bus as is (the README's
// shape) and in fanout's envelope (with its ids); the raw CSV event fails
// for good, saying why.
func TestRun_BrokerKindEventBridge(t *testing.T) {
	t.Parallel()
	k := newAWS(t)
	bus := unique("e2e-bus")
	eb := eventbridge.NewFromConfig(k.cfg)
	if _, err := eb.CreateEventBus(mototest.Ctx(t), &eventbridge.CreateEventBusInput{Name: aws.String(bus)}); err != nil {
		t.Fatal(err)
	}
	queueURL, arn := k.queue(t, bus)
	if _, err := eb.PutRule(mototest.Ctx(t), &eventbridge.PutRuleInput{Name: aws.String("all"), EventBusName: aws.String(bus),
		EventPattern: aws.String(`{"source":["fanout"]}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := eb.PutTargets(mototest.Ctx(t), &eventbridge.PutTargetsInput{Rule: aws.String("all"), EventBusName: aws.String(bus),
		Targets: []ebtypes.Target{{Id: aws.String("q"), Arn: aws.String(arn)}}}); err != nil {
		t.Fatal(err)
	}
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	plain := createBroker(t, base, map[string]any{"type": "eventbridge", "filter": []string{kindJSONType},
		"config": k.config(map[string]any{"event_bus": bus, "source": "fanout"})})
	enveloped := createBroker(t, base, map[string]any{"type": "eventbridge", "config": k.config(map[string]any{"event_bus": bus, "envelope": true})})

	id := postEvent(t, base, kindJSONBody)
	var ev service.EventView
	eventually(t, "both deliveries done", 15*time.Second, func() bool {
		call(t, "GET", base+"/v1/events/"+id, nil, &ev)
		return len(ev.Deliveries) == 2 && ev.Deliveries[0].State == "delivered" && ev.Deliveries[1].State == "delivered"
	})
	deliveries := map[string]service.DeliveryView{}
	for _, d := range ev.Deliveries {
		deliveries[d.DestinationID] = d
	}
	var seenPlain, seenEnvelope bool
	for _, m := range k.drain(t, queueURL, 2) {
		var got struct {
			Source     string          `json:"source"`
			DetailType string          `json:"detail-type"`
			Detail     json.RawMessage `json:"detail"`
		}
		if err := json.Unmarshal([]byte(aws.ToString(m.Body)), &got); err != nil {
			t.Fatal(err)
		}
		if got.Source != "fanout" || got.DetailType != kindJSONType {
			t.Errorf("source %q, detail-type %q", got.Source, got.DetailType)
		}
		var env struct {
			Fanout struct {
				DeliveryID string `json:"delivery_id"`
				EventID    string `json:"event_id"`
				Type       string `json:"type"`
			} `json:"fanout"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(got.Detail, &env); err == nil && env.Data != nil {
			seenEnvelope = true
			d := deliveries[enveloped.ID]
			get := func(k string) string {
				return map[string]string{sink.HeaderDeliveryID: env.Fanout.DeliveryID, sink.HeaderEventID: env.Fanout.EventID, sink.HeaderEventType: env.Fanout.Type}[k]
			}
			checkHeaders(t, get, d, kindJSONType)
			if string(compactJSON(env.Data)) != string(compactJSON([]byte(kindJSONBody))) {
				t.Errorf("envelope's data %s, want the event %s", env.Data, kindJSONBody)
			}
			continue
		}
		seenPlain = true
		if string(compactJSON(got.Detail)) != string(compactJSON([]byte(kindJSONBody))) {
			t.Errorf("detail %s, want the event %s", got.Detail, kindJSONBody)
		}
	}
	if !seenPlain || !seenEnvelope {
		t.Fatalf("plain event %v, envelope %v: want one of each", seenPlain, seenEnvelope)
	}
	if deliveries[plain.ID].ID == "" {
		t.Fatal("no delivery to the plain destination")
	}

	// The raw CSV event cannot be an EventBridge event: failed for good, on
	// the first attempt, saying why.
	d := deliveryOf(t, base, postRaw(t, base), "failed")
	if d.Attempts != 1 || !strings.Contains(d.LastError, "JSON object") || !strings.Contains(d.LastError, "text/csv") {
		t.Fatalf("raw event to EventBridge: %d attempts, error %q", d.Attempts, d.LastError)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// compactJSON is b without insignificant spaces (EventBridge re-encodes
// a detail), or b when it is not JSON.
func compactJSON(b []byte) []byte {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return b
	}
	// Re-encoded in key order, so that only content compares.
	out, _ := json.Marshal(v)
	return out
}

func TestRun_BrokerKindS3(t *testing.T) {
	t.Parallel()
	k := newAWS(t)
	bucket := unique("e2e-bucket")
	s3c := s3.NewFromConfig(k.cfg, func(o *s3.Options) { o.UsePathStyle = true })
	if _, err := s3c.CreateBucket(mototest.Ctx(t), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	createBroker(t, base, map[string]any{"type": "s3", "config": k.config(map[string]any{"bucket": bucket, "path_style": true})})
	jsonD, rawD := sendBoth(t, base)
	list, err := s3c.ListObjectsV2(mototest.Ctx(t), &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Contents) != 2 {
		t.Fatalf("%d objects, want 2", len(list.Contents))
	}
	for i, d := range []service.DeliveryView{jsonD, rawD} {
		typ := []string{kindJSONType, kindRawType}[i]
		// The default key: events/{type}/{date}/{event_id}.
		var key string
		for _, o := range list.Contents {
			if k := aws.ToString(o.Key); strings.HasPrefix(k, "events/"+typ+"/") && strings.HasSuffix(k, "/"+d.EventID) {
				key = k
			}
		}
		if key == "" {
			t.Fatalf("no object of event %s (%s) in %v", d.EventID, typ, list.Contents)
		}
		obj, err := s3c.GetObject(mototest.Ctx(t), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(obj.Body)
		_ = obj.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkMessage(t, i == 1, "object "+key, body, aws.ToString(obj.ContentType),
			func(k string) string { return obj.Metadata[k] }, d)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// --- Google Cloud Pub/Sub, against pstest in process ---

func TestRun_BrokerKindPubSub(t *testing.T) {
	t.Parallel()
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := srv.GServer.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/demo/topics/events"}); err != nil {
		t.Fatal(err)
	}
	base, stop := startRun(t, []string{"--data", t.TempDir()}, nil)
	createBroker(t, base, map[string]any{"type": "pubsub", "config": map[string]any{
		"project_id": "demo", "topic": "events", "emulator_host": srv.Addr}})
	jsonD, rawD := sendBoth(t, base)
	msgs := srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
	for i, d := range []service.DeliveryView{jsonD, rawD} {
		var m *pstest.Message
		for _, x := range msgs {
			if x.Attributes[sink.HeaderDeliveryID] == d.ID {
				m = x
			}
		}
		if m == nil {
			t.Fatalf("no message of delivery %s", d.ID)
		}
		if m.Topic != "projects/demo/topics/events" {
			t.Errorf("topic %q", m.Topic)
		}
		checkMessage(t, i == 1, "message", m.Data, m.Attributes["content-type"],
			func(k string) string { return m.Attributes[k] }, d)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
