package main

// The broker scenario (--brokers): fanout's deliveries/s into a message
// broker, against the same broker driven directly by the tool with the
// same client library, in the same run. Each measured phase has a target of
// its own (a stream, a queue, a topic) that starts empty, so that counting
// the broker's messages counts the phase's deliveries:
//
//   - fanout: a fanout started on loopback with one destination of the
//     kind, created through POST /v1/destinations; -n events are posted
//     with the usual driver (-c connections, single events or batches), and
//     the broker is polled until it holds every accepted event. The rate is
//     the events in the broker over the time from the first send to the
//     last arrival: ingest, store and delivery, end to end.
//   - direct: -c publishers, each publishing and waiting for the broker's
//     acknowledgement as a delivery does, -n messages of the same size and
//     headers, with the client library fanout's kind uses.
//
// The two alternate in order from run to run, and the ratio is taken
// within each run before the median.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The headers (fields) every kind's messages carry: the names fanout's
// sinks use (package sink), so that a direct message is the same size.
var directHeaders = [][2]string{
	{"fanout-delivery-id", ""}, {"fanout-event-id", ""}, {"fanout-event-type", "load.test"}, {"fanout-tenant", "default"},
}

// broker is one kind of broker under measure.
type broker interface {
	// kind is the destination type; label how the report names it.
	kind() string
	label() string
	// config makes a fresh, empty target named tag and returns the
	// destination config that delivers to it.
	config(ctx context.Context, tag string) (map[string]any, error)
	// count is how many messages the target holds.
	count(ctx context.Context, tag string) (int64, error)
	// publisher opens what one direct publisher needs; send publishes one
	// message and waits for its acknowledgement.
	publisher(ctx context.Context, tag string) (send func(ctx context.Context, id string, body []byte) error, closeFn func(), err error)
	close()
}

// brokerReport is one kind's figures.
type brokerReport struct {
	Broker      string  `json:"broker"`
	Events      int64   `json:"events"`
	FanoutPerS  float64 `json:"fanout_deliveries_per_sec"`
	DirectPerS  float64 `json:"direct_msgs_per_sec"`
	Ratio       float64 `json:"ratio"`
	Ratios      []float64
	FanoutCPUUS float64 `json:"fanout_cpu_us_per_event"`
	Errors      map[string]int
}

func runBrokers(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	if o.fanoutBin == "" {
		return errors.New("--brokers needs --fanout (the tool starts fanout, on loopback, for each phase)")
	}
	if o.events <= 0 {
		o.events = 20000
	}
	if o.runs < 1 {
		o.runs = 1
	}
	var reports []*brokerReport
	for _, name := range strings.Split(o.brokers, ",") {
		b, err := startBroker(ctx, strings.TrimSpace(name), o)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r, err := measureBroker(ctx, b, o, stdout, stderr)
		b.close()
		if err != nil {
			return fmt.Errorf("%s: %w", b.label(), err)
		}
		reports = append(reports, r)
	}
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reports)
	}
	fmt.Fprintf(stdout, "medians of %d runs, %d events each, -c %d, %d-byte events (%s):\n", o.runs, o.events, o.concurrency,
		eventBytes(newRunID(), o.eventSize), o.mode)
	for _, r := range reports {
		fmt.Fprintf(stdout, "  %-22s fanout %8.0f deliveries/s  direct %8.0f msgs/s  fanout/direct %.2f (runs %s)  fanout cpu %5.1f µs/event\n",
			r.Broker, r.FanoutPerS, r.DirectPerS, r.Ratio, fmtRatios(r.Ratios), r.FanoutCPUUS)
	}
	return nil
}

func fmtRatios(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, " ")
}

func measureBroker(ctx context.Context, b broker, o *options, stdout, stderr io.Writer) (*brokerReport, error) {
	var fan, dir, ratios, cpu []float64
	errs := map[string]int{}
	for run := range o.runs {
		var f, d float64
		var c float64
		phases := []string{"fanout", "direct"}
		if run%2 == 1 {
			phases = []string{"direct", "fanout"}
		}
		for _, ph := range phases {
			tag := fmt.Sprintf("load%s%d%s", newRunID(), run, ph)
			var err error
			if ph == "fanout" {
				f, c, err = brokerFanoutPhase(ctx, b, tag, o, errs, stderr)
			} else {
				d, err = brokerDirectPhase(ctx, b, tag, o)
			}
			if err != nil {
				return nil, fmt.Errorf("run %d, %s: %w", run+1, ph, err)
			}
		}
		fan, dir, cpu = append(fan, f), append(dir, d), append(cpu, c)
		ratios = append(ratios, f/d)
		if !o.jsonOut {
			fmt.Fprintf(stdout, "run %d %-22s fanout %8.0f deliveries/s  direct %8.0f msgs/s  fanout/direct %.2f\n", run+1, b.label(), f, d, f/d)
		}
	}
	return &brokerReport{Broker: b.label(), Events: o.events, FanoutPerS: median(fan), DirectPerS: median(dir),
		Ratio: median(ratios), Ratios: ratios, FanoutCPUUS: median(cpu), Errors: errs}, nil
}

// brokerFanoutPhase starts a fanout with one destination of b's kind,
// posts -n events and waits until the broker holds them all. It returns
// deliveries/s and fanout's CPU µs per event.
func brokerFanoutPhase(ctx context.Context, b broker, tag string, o *options, errs map[string]int, stderr io.Writer) (float64, float64, error) {
	cfg, err := b.config(ctx, tag)
	if err != nil {
		return 0, 0, err
	}
	dir, err := os.MkdirTemp("", "fanout-load-")
	if err != nil {
		return 0, 0, err
	}
	args := append([]string{"--addr", "127.0.0.1:0", "--data", dir, "--allow-network", "127.0.0.0/8"}, o.fanoutArgs...)
	server, err := startProc(ctx, o.fanoutBin, args, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return 0, 0, err
	}
	defer server.cleanup()
	defer stopFanout(server, stderr)
	base := "http://" + server.addr
	api := &apiClient{base: base, http: &http.Client{Timeout: 30 * time.Second}}
	if err := api.do(ctx, "POST", "/v1/destinations", map[string]any{"type": b.kind(), "config": cfg}, nil); err != nil {
		return 0, 0, err
	}
	d, err := newIngestDriver(base, o)
	if err != nil {
		return 0, 0, err
	}
	cpu0 := server.cpuSeconds()
	start := time.Now()
	d.run(ctx, start.Add(24*time.Hour)) // -n bounds it
	accepted := d.sent.Load()
	for k, v := range d.errors {
		errs[k] += v
	}
	if accepted == 0 {
		return 0, 0, fmt.Errorf("fanout accepted no event (errors: %v)", d.errors)
	}
	deadline := time.Now().Add(o.drain)
	for {
		n, err := b.count(ctx, tag)
		if err == nil && n >= accepted {
			took := time.Since(start)
			cpu := (server.cpuSeconds() - cpu0) * 1e6 / float64(accepted)
			return float64(n) / took.Seconds(), cpu, nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("the broker holds %d of the %d events fanout accepted after --drain %v (last error: %v)\n%s",
				n, accepted, o.drain, err, server.logs())
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// brokerDirectPhase publishes -n messages from -c publishers and returns
// messages/s.
func brokerDirectPhase(ctx context.Context, b broker, tag string, o *options) (float64, error) {
	if _, err := b.config(ctx, tag); err != nil {
		return 0, err
	}
	runID := newRunID()
	var seq atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	start := time.Now()
	for range o.concurrency {
		send, closeFn, err := b.publisher(ctx, tag)
		if err != nil {
			return 0, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer closeFn()
			// The body is an event of the load, with its id and time.
			r := buildRequest("", "/", nil, runID, o.eventSize, 1, false)
			for {
				n := seq.Add(1)
				if n > o.events || ctx.Err() != nil {
					return
				}
				r.fill(n, time.Now().UnixNano())
				if err := send(ctx, loadID(runID, n), r.body()); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if first != nil {
		return 0, first
	}
	if n, err := b.count(ctx, tag); err != nil || n != o.events {
		return 0, fmt.Errorf("the broker holds %d messages after %d acknowledged publishes (%v)", n, o.events, err)
	}
	return float64(o.events) / took.Seconds(), nil
}

// startBroker starts the broker of a kind: nats, redis, redis-nodedup,
// amqp, kafka.
func startBroker(ctx context.Context, name string, o *options) (broker, error) {
	switch name {
	case "nats":
		return startNATSBroker(ctx)
	case "redis", "redis-nodedup":
		return startRedisBroker(ctx, name == "redis-nodedup")
	case "amqp", "rabbitmq":
		return startRabbitBroker(ctx)
	case "kafka":
		return startKafkaBroker()
	}
	return nil, fmt.Errorf("unknown broker %q: want nats, redis, redis-nodedup, amqp or kafka", name)
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// external is a broker process of the tool's own, in its own process group
// with its files in dir.
type external struct {
	dir   string
	procs []*exec.Cmd
}

func (e *external) start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	log, err := os.Create(filepath.Join(e.dir, filepath.Base(cmd.Path)+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	e.procs = append(e.procs, cmd)
	return nil
}

func (e *external) stop() {
	for _, p := range slices.Backward(e.procs) {
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		_ = p.Wait()
	}
	_ = os.RemoveAll(e.dir)
}

// waitFor retries try until it succeeds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, try func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := try()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// --- NATS JetStream: Debian's nats-server, file storage ---

type natsBroker struct {
	external
	url string
	nc  *nats.Conn
	js  jetstream.JetStream
}

func startNATSBroker(ctx context.Context) (broker, error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		return nil, errors.New("nats-server is not installed (apt-get install nats-server)")
	}
	dir, err := os.MkdirTemp("", "fanout-load-nats-")
	if err != nil {
		return nil, err
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	b := &natsBroker{external: external{dir: dir}, url: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	if err := b.start(exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir)); err != nil {
		b.stop()
		return nil, err
	}
	if err := waitFor(ctx, 20*time.Second, func() error {
		b.nc, err = nats.Connect(b.url)
		return err
	}); err != nil {
		b.stop()
		return nil, err
	}
	b.js, _ = jetstream.New(b.nc)
	return b, nil
}

func (b *natsBroker) kind() string  { return "nats" }
func (b *natsBroker) label() string { return "NATS JetStream (file)" }
func (b *natsBroker) close()        { b.nc.Close(); b.stop() }

func (b *natsBroker) config(ctx context.Context, tag string) (map[string]any, error) {
	_, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: tag, Subjects: []string{tag}, Storage: jetstream.FileStorage})
	return map[string]any{"url": b.url, "subject": tag, "stream": tag}, err
}

func (b *natsBroker) count(ctx context.Context, tag string) (int64, error) {
	s, err := b.js.Stream(ctx, tag)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return int64(info.State.Msgs), nil
}

func (b *natsBroker) publisher(_ context.Context, tag string) (func(context.Context, string, []byte) error, func(), error) {
	// One connection for every publisher, as fanout's sender has.
	return func(ctx context.Context, id string, body []byte) error {
		m := nats.NewMsg(tag)
		m.Data = body
		for _, h := range directHeaders {
			m.Header.Set(h[0], headerValue(h, id))
		}
		m.Header.Set("Content-Type", "application/json")
		_, err := b.js.PublishMsg(ctx, m, jetstream.WithMsgID(id))
		return err
	}, func() {}, nil
}

// headerValue is h's value, or id for those that carry the id.
func headerValue(h [2]string, id string) string {
	if h[1] == "" {
		return id
	}
	return h[1]
}

// --- Redis Streams: Debian's redis-server, append-only file ---

type redisBroker struct {
	external
	addr    string
	nodedup bool
	c       *redis.Client
}

func startRedisBroker(ctx context.Context, nodedup bool) (broker, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not installed (apt-get install redis-server)")
	}
	dir, err := os.MkdirTemp("", "fanout-load-redis-")
	if err != nil {
		return nil, err
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	b := &redisBroker{external: external{dir: dir}, addr: fmt.Sprintf("127.0.0.1:%d", port), nodedup: nodedup}
	if err := b.start(exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no")); err != nil {
		b.stop()
		return nil, err
	}
	b.c = redis.NewClient(&redis.Options{Addr: b.addr, PoolSize: 256})
	if err := waitFor(ctx, 20*time.Second, func() error { return b.c.Ping(ctx).Err() }); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *redisBroker) kind() string { return "redis" }
func (b *redisBroker) label() string {
	if b.nodedup {
		return "Redis Streams (no dedup)"
	}
	return "Redis Streams"
}
func (b *redisBroker) close() { _ = b.c.Close(); b.stop() }

func (b *redisBroker) config(ctx context.Context, tag string) (map[string]any, error) {
	cfg := map[string]any{"url": "redis://" + b.addr, "stream": tag}
	if b.nodedup {
		cfg["dedup_window"] = "0s"
	}
	return cfg, nil
}

func (b *redisBroker) count(ctx context.Context, tag string) (int64, error) {
	return b.c.XLen(ctx, tag).Result()
}

// publisher adds entries with the fields fanout's sink writes, by a plain
// XADD: what a producer of one's own does.
func (b *redisBroker) publisher(_ context.Context, tag string) (func(context.Context, string, []byte) error, func(), error) {
	return func(ctx context.Context, id string, body []byte) error {
		return b.c.XAdd(ctx, &redis.XAddArgs{Stream: tag, Values: []any{"id", id, "event_id", id, "type", "load.test",
			"tenant", "default", "content_type", "application/json", "body", body}}).Err()
	}, func() {}, nil
}

// --- RabbitMQ: Debian's rabbitmq-server, durable queue, persistent messages, confirms ---

type rabbitBroker struct {
	external
	url   string
	conn  *amqp.Connection
	admin *amqp.Channel
}

func startRabbitBroker(ctx context.Context) (broker, error) {
	server := findBin("rabbitmq-server", "/usr/lib/rabbitmq/bin")
	epmd := findBin("epmd", "/usr/lib/erlang/erts-*/bin")
	if server == "" || epmd == "" {
		return nil, errors.New("rabbitmq-server (and Erlang's epmd) not installed: apt-get install rabbitmq-server")
	}
	dir, err := os.MkdirTemp("", "fanout-load-rabbitmq-")
	if err != nil {
		return nil, err
	}
	b := &rabbitBroker{external: external{dir: dir}}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freeLoopbackPort(); err != nil {
			return nil, err
		}
	}
	amqpPort, distPort, epmdPort := ports[0], ports[1], ports[2]
	if err := b.start(exec.Command(epmd, "-port", strconv.Itoa(epmdPort))); err != nil {
		b.stop()
		return nil, err
	}
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\ndefault_user = load\ndefault_pass = load-password\n", amqpPort)
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o600); err != nil {
		b.stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o600); err != nil {
		b.stop()
		return nil, err
	}
	node := exec.Command(server)
	node.Env = append(os.Environ(), "HOME="+dir, "ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
		fmt.Sprintf("RABBITMQ_NODENAME=fanout-load-%d@localhost", amqpPort),
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1", "RABBITMQ_NODE_PORT="+strconv.Itoa(amqpPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort), "RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"), "RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PLUGINS_EXPAND_DIR="+filepath.Join(dir, "plugins"), "RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbit.pid"),
		"RABBITMQ_LOGS=-")
	if err := b.start(node); err != nil {
		b.stop()
		return nil, err
	}
	b.url = fmt.Sprintf("amqp://load:load-password@127.0.0.1:%d/", amqpPort)
	if err := waitFor(ctx, 90*time.Second, func() error {
		b.conn, err = amqp.Dial(b.url)
		return err
	}); err != nil {
		b.stop()
		return nil, fmt.Errorf("rabbitmq-server not answering after 90s: %w", err)
	}
	if b.admin, err = b.conn.Channel(); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func findBin(name string, dirs ...string) string {
	for _, d := range dirs {
		matches, _ := filepath.Glob(filepath.Join(d, name))
		for _, p := range matches {
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p
			}
		}
	}
	p, _ := exec.LookPath(name)
	return p
}

func (b *rabbitBroker) kind() string  { return "rabbitmq" }
func (b *rabbitBroker) label() string { return "RabbitMQ" }
func (b *rabbitBroker) close() {
	if b.conn != nil {
		_ = b.conn.Close()
	}
	b.stop()
}

func (b *rabbitBroker) config(_ context.Context, tag string) (map[string]any, error) {
	_, err := b.admin.QueueDeclare(tag, true, false, false, false, nil)
	return map[string]any{"url": b.url, "routing_key": tag}, err
}

func (b *rabbitBroker) count(_ context.Context, tag string) (int64, error) {
	q, err := b.admin.QueueDeclarePassive(tag, true, false, false, false, nil)
	return int64(q.Messages), err
}

// publisher is a channel in confirm mode, as each of fanout's sender's.
func (b *rabbitBroker) publisher(_ context.Context, tag string) (func(context.Context, string, []byte) error, func(), error) {
	c, err := b.conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if err := c.Confirm(false); err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, id string, body []byte) error {
		h := amqp.Table{}
		for _, kv := range directHeaders {
			h[kv[0]] = headerValue(kv, id)
		}
		dc, err := c.PublishWithDeferredConfirmWithContext(ctx, "", tag, true, false, amqp.Publishing{Headers: h,
			ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: id, Type: "load.test", AppId: "fanout", Body: body})
		if err != nil {
			return err
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			return fmt.Errorf("not confirmed: %v", err)
		}
		return nil
	}, func() { _ = c.Close() }, nil
}

// --- Kafka: franz-go's kfake, in this process ---

type kafkaBroker struct {
	cluster *kfake.Cluster
	admin   *kgo.Client
	client  *kgo.Client // the direct producer
}

// kafkaPartitions is the partitions of each topic.
const kafkaPartitions = 3

func startKafkaBroker() (broker, error) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		return nil, err
	}
	b := &kafkaBroker{cluster: c}
	if b.admin, err = kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...)); err != nil {
		c.Close()
		return nil, err
	}
	if b.client, err = kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(0)); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *kafkaBroker) kind() string  { return "kafka" }
func (b *kafkaBroker) label() string { return "Kafka (kfake)" }
func (b *kafkaBroker) close() {
	if b.client != nil {
		b.client.Close()
	}
	b.admin.Close()
	b.cluster.Close()
}

func (b *kafkaBroker) config(ctx context.Context, tag string) (map[string]any, error) {
	req := kmsg.NewPtrCreateTopicsRequest()
	t := kmsg.NewCreateTopicsRequestTopic()
	t.Topic, t.NumPartitions, t.ReplicationFactor = tag, kafkaPartitions, 1
	req.Topics = append(req.Topics, t)
	resp, err := req.RequestWith(ctx, b.admin)
	if err == nil && len(resp.Topics) == 1 && resp.Topics[0].ErrorCode != 0 {
		err = fmt.Errorf("create topic %s: error code %d", tag, resp.Topics[0].ErrorCode)
	}
	return map[string]any{"brokers": b.cluster.ListenAddrs(), "topic": tag}, err
}

// count sums the end offsets of the topic's partitions: with an idempotent
// producer and no transactions, the records in it.
func (b *kafkaBroker) count(ctx context.Context, tag string) (int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	t := kmsg.NewListOffsetsRequestTopic()
	t.Topic = tag
	for p := range int32(kafkaPartitions) {
		pt := kmsg.NewListOffsetsRequestTopicPartition()
		pt.Partition, pt.Timestamp = p, -1 // the end
		t.Partitions = append(t.Partitions, pt)
	}
	req.Topics = append(req.Topics, t)
	resp, err := req.RequestWith(ctx, b.admin)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return 0, fmt.Errorf("list offsets of %s/%d: error code %d", tag, p.Partition, p.ErrorCode)
			}
			n += p.Offset
		}
	}
	return n, nil
}

// publisher produces with the one client, each publisher waiting for its
// record's acknowledgement, as fanout's sender does.
func (b *kafkaBroker) publisher(_ context.Context, tag string) (func(context.Context, string, []byte) error, func(), error) {
	return func(ctx context.Context, id string, body []byte) error {
		r := &kgo.Record{Topic: tag, Value: body}
		for _, h := range directHeaders {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: h[0], Value: []byte(headerValue(h, id))})
		}
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: "content-type", Value: []byte("application/json")})
		return b.client.ProduceSync(ctx, r).FirstErr()
	}, func() {}, nil
}
