package herald

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// nodeMetrics are the node's counters. The hot paths bump plain atomics;
// Prometheus reads them only when scraped (CounterFunc), so metrics cost
// the fan-out nothing but the broadcast-duration histogram.
type nodeMetrics struct {
	messagesIn    atomic.Uint64
	bytesIn       atomic.Uint64
	framesOut     atomic.Uint64
	bytesOut      atomic.Uint64
	writes        atomic.Uint64 // batches of frames handed to client sockets
	pubClient     atomic.Uint64 // publications by protocol clients
	pubRaw        atomic.Uint64 // by raw-mode clients
	pubServer     atomic.Uint64 // by Node.Publish (Go code, the HTTP API)
	slowConsumers atomic.Uint64
	socketFull    atomic.Uint64 // pool writes the socket did not take whole
	dropped       atomic.Uint64 // frames dropped from the queues of cut clients
	authFailures  atomic.Uint64
	rateLimited   atomic.Uint64
	limitHits     atomic.Uint64
	brokerOutages atomic.Uint64 // broker links lost (HandleOutage)
	resubscribes  atomic.Uint64 // subscribers closed with 4006
	pubBatches    atomic.Uint64 // PublishBatch calls (BatchPublisher)

	broadcast prometheus.Histogram
	// Hook calls by hook and result (ok, refused, failed, dropped), and
	// their durations by hook.
	hookCalls    *prometheus.CounterVec
	hookDuration *prometheus.HistogramVec
	// Webhooks: events by result (delivered, dropped), Deliver calls by
	// result (ok, failed), failed store calls.
	webhookEvents      *prometheus.CounterVec
	webhookDeliveries  *prometheus.CounterVec
	webhookStoreErrors prometheus.Counter
	registry           *prometheus.Registry
}

func (n *Node) initMetrics() {
	m := &n.metrics
	m.broadcast = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "herald_broadcast_duration_seconds",
		Help:    "Time to fan one publication out to this node's subscribers (encode and enqueue, not the socket writes).",
		Buckets: prometheus.ExponentialBuckets(1e-6, 4, 12), // 1µs .. 4s
	})
	m.hookCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_hook_calls_total",
		Help: "Calls of the backend's hooks, by hook and result: ok, refused (the backend said no), failed (error, timeout, down), dropped (a notification not sent: too many in flight).",
	}, []string{"hook", "result"})
	m.hookDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_hook_duration_seconds",
		Help:    "Time the backend's hooks took to answer, by hook.",
		Buckets: prometheus.ExponentialBuckets(250e-6, 2, 16), // 250µs .. 8s
	}, []string{"hook"})
	m.webhookEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_webhook_events_total",
		Help: "Webhook events that left the outbox, by result: delivered, or dropped (not delivered within webhook RetryFor, or not recorded because the store was down for long).",
	}, []string{"result"})
	m.webhookDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_webhook_deliveries_total",
		Help: "Webhook delivery calls (batches) made by this node, by result: ok or failed.",
	}, []string{"result"})
	m.webhookStoreErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_webhook_store_errors_total",
		Help: "Failed calls to the webhooks' event store (each is retried).",
	})
	reg := prometheus.NewRegistry()
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	published := func(source string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herald_publications_total", Help: "Publications made through this node, by source.",
			ConstLabels: prometheus.Labels{"source": source},
		}, func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.broadcast,
		m.hookCalls,
		m.hookDuration,
		m.webhookEvents,
		m.webhookDeliveries,
		m.webhookStoreErrors,
		counter("herald_messages_received_total", "WebSocket messages received from clients.", &m.messagesIn),
		counter("herald_received_bytes_total", "Bytes of WebSocket messages received from clients.", &m.bytesIn),
		counter("herald_messages_sent_total", "WebSocket frames written to clients (pushes, replies, control frames).", &m.framesOut),
		counter("herald_sent_bytes_total", "Bytes written to client sockets.", &m.bytesOut),
		counter("herald_socket_writes_total", "Writes to client sockets, each of every frame queued at the time in one write or writev call (finished with more if the socket took part of it); herald_messages_sent_total over this is the frames per write.", &m.writes),
		published("client", &m.pubClient),
		published("raw", &m.pubRaw),
		published("server", &m.pubServer),
		counter("herald_publish_batches_total", "Batches of client publishes handed to the broker in one call (a client that sends publishes back to back gets them published in one round trip; see herald.BatchPublisher).", &m.pubBatches),
		counter("herald_slow_consumer_disconnects_total", "Clients cut because their outbound queue overflowed (close 4001).", &m.slowConsumers),
		counter("herald_socket_full_total", "Times a client's socket did not take every queued frame at once, so that a goroutine waits for that client to read (a sign of slow clients or a congested network).", &m.socketFull),
		counter("herald_dropped_messages_total", "Frames dropped from the queues of clients cut as slow consumers.", &m.dropped),
		counter("herald_auth_failures_total", "Refused tokens and failed authentications.", &m.authFailures),
		counter("herald_rate_limited_total", "Client messages refused by the per-connection message rate limit.", &m.rateLimited),
		counter("herald_connection_limit_rejections_total", "Handshakes and connects refused by a connection limit.", &m.limitHits),
		counter("herald_broker_outages_total", "Times the broker's link was lost (each closes every subscriber with 4006).", &m.brokerOutages),
		counter("herald_resubscribe_disconnects_total", "Subscribers closed with 4006 because a channel's continuity broke: a broker outage, a gap in offsets, or a history reset.", &m.resubscribes),
		gauge("herald_connections", "Open WebSocket connections.", func() float64 { return float64(n.hub.numConns()) }),
		gauge("herald_channels", "Channels with local subscribers.", func() float64 { c, _ := n.hub.subscriptionCounts(); return float64(c) }),
		gauge("herald_subscriptions", "Local channel subscriptions.", func() float64 { _, s := n.hub.subscriptionCounts(); return float64(s) }),
		gauge("herald_queued_bytes", "Bytes waiting in connections' outbound queues.", func() float64 { return float64(n.queuedBytes()) }),
		deltaCollector{n},
		overflowCollector{n},
	)
	m.registry = reg
}

// MetricsHandler serves the node's metrics in the Prometheus exposition
// format, with the Go runtime and process metrics. Names follow Prometheus
// conventions: herald_*_total counters, base units (bytes, seconds).
func (n *Node) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(n.metrics.registry, promhttp.HandlerOpts{})
}

// overflowCollector exports the overflow policies' counts by namespace
// (overflowRegistry), which appear as namespaces get a policy.
type overflowCollector struct{ n *Node }

var overflowDesc = prometheus.NewDesc("herald_overflow_publications_total",
	"Publications taken out of slow subscribers' queues by their namespace's overflow policy (one per subscriber's copy), by namespace and action: conflated (replaced by a newer one of the same channel and key) or dropped (drop_oldest; the client is told).",
	[]string{"namespace", "action"}, nil)

func (c overflowCollector) Describe(ch chan<- *prometheus.Desc) { ch <- overflowDesc }

func (c overflowCollector) Collect(ch chan<- prometheus.Metric) {
	c.n.overflow.each(func(name string, st *overflowStats) {
		ch <- prometheus.MustNewConstMetric(overflowDesc, prometheus.CounterValue, float64(st.conflated.Load()), name, "conflated")
		ch <- prometheus.MustNewConstMetric(overflowDesc, prometheus.CounterValue, float64(st.dropped.Load()), name, "dropped")
	})
}

func (n *Node) queuedBytes() int {
	total := 0
	n.forEachConn(func(c *conn) { total += c.out.queued() })
	return total
}

func (m *nodeMetrics) observeBroadcast(start time.Time) {
	m.broadcast.Observe(time.Since(start).Seconds())
}
