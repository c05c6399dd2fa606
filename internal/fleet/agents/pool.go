// Package agents subscribes to every agent's Watch stream and feeds the
// snapshots to the scaler's store: a static list of addresses and/or the
// records of a headless Service, re-resolved periodically; one stream per
// address, reconnected with capped, jittered exponential backoff.
package agents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// MaxMessageBytes is the largest snapshot accepted from an agent, the
// agent's own limit on what it sends (its grpcMaxSendBytes): a node's
// devices are at most about 1.4 MB (64 devices of 10 pods, 1,024
// snapshots' driver samples of 8 GPUs), and the rest is room for some
// 50,000 app histogram series of the families the triggers name. gRPC's
// default of 4 MiB is less than a node of 100 LiveKit pods with a few
// dozen series each. A larger message fails that agent's stream
// (RESOURCE_EXHAUSTED): counted, logged once, retried with backoff.
const MaxMessageBytes = 16 << 20

// DefaultMaxMessageRate is how many messages a second one agent's stream
// is read at most, in bursts of as many. An agent sends one per sampling
// interval (at least 100 ms) and, between them, one per new set of app
// scrapes; past the rate the scaler reads no faster, gRPC's flow control
// holds the agent back, and the agent merges what it cannot send (its
// slow-subscriber path: the newest snapshot, with the skipped ones'
// samples). So an agent that storms costs the scaler a bounded share and
// delays no other agent's snapshots.
const DefaultMaxMessageRate = 50

// WriteBufferBytes is each agent connection's write buffer: what the
// scaler sends an agent (a WatchRequest, HTTP/2 window updates and
// pings) is a few hundred bytes at a time.
const WriteBufferBytes = 4 << 10

// WindowBytes is each agent stream's flow-control window: what an agent
// may send ahead of what the scaler read, and so what a scaler that
// falls behind holds per agent (1.25 GiB at 5,000 agents). A node's
// message is a few KiB; its devices at most about 1.4 MB (6 round
// trips), a message of MaxMessageBytes 64.
const WindowBytes = 256 << 10

// Why an agent's message was refused, the reason label of
// gpu_scaler_agent_messages_rejected_total.
const (
	RejectTooLarge  = "too_large" // over MaxMessageBytes
	RejectMalformed = "malformed" // not a NodeSnapshot, or one the store refuses
)

// Ingester receives the snapshots (fleet.Store).
type Ingester interface {
	Ingest(*telemetryv1.NodeSnapshot) error
	// IngestFirst receives a stream's first snapshot, which may repeat the
	// latest tick with what a new request asks.
	IngestFirst(*telemetryv1.NodeSnapshot) error
}

// Observer records a duration in seconds (a Prometheus histogram).
type Observer interface{ Observe(float64) }

// Resolver is the part of net.Resolver discovery needs; tests pass a fake,
// so nothing process-wide is touched.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Options configure a Pool.
type Options struct {
	// Static addresses, host:port.
	Static []string
	// DNS is a headless Service's NAME:PORT; every A/AAAA record is an
	// agent. Empty: static addresses only.
	DNS        string
	DNSRefresh time.Duration
	Resolver   Resolver // nil: net.DefaultResolver

	// DialOptions carry the transport credentials (TLS or insecure).
	DialOptions []grpc.DialOption
	// IdleTimeout ends a stream that has sent nothing for this long: a
	// node that vanished without closing its connection is otherwise
	// never noticed by a stream that only reads.
	IdleTimeout time.Duration
	// BackoffBase and BackoffMax bound the reconnection delay.
	BackoffBase, BackoffMax time.Duration
	// MaxMessageRate caps the messages read a second from one agent;
	// 0: DefaultMaxMessageRate.
	MaxMessageRate float64
	// AnswerDuration, if not nil, observes how long each re-subscription
	// took to be answered by every connected agent.
	AnswerDuration Observer

	Logger *slog.Logger
}

// Pool is the set of agent subscriptions.
type Pool struct {
	opts  Options
	store Ingester
	log   *slog.Logger

	mu   sync.Mutex
	subs map[string]context.CancelFunc
	wg   sync.WaitGroup

	reqMu  sync.Mutex
	req    *telemetryv1.WatchRequest // what every stream asks for
	reqGen uint64                    // its generation
	// reqChanged is cancelled and replaced when req changes: a context,
	// not a channel, so that each stream is told by a callback
	// (context.AfterFunc) rather than a goroutine of its own, 8 KiB of
	// stack per agent.
	reqChanged       context.Context
	cancelReqChanged context.CancelFunc

	// Which agents have answered which request: an agent answers a
	// request with its stream's first message. An agent is live from a
	// message until its stream fails (a stream reopened for a new request
	// keeps it live: it owes that request an answer).
	ansMu    sync.Mutex
	agents   map[string]*agentState
	cur      uint64    // the generation asked now
	behind   int       // live agents that have not answered cur
	settled  uint64    // the latest generation every live agent answered
	setAt    time.Time // when cur was asked
	waitedOn bool      // some agent was behind when cur was asked
	resubs   atomic.Uint64

	connected atomic.Int64
	targets   atomic.Int64
	snapshots atomic.Uint64
	failures  atomic.Uint64
	tooLarge  atomic.Uint64
	malformed atomic.Uint64
	throttled atomic.Uint64
}

// Stats are the pool's counters, for the scaler's /metrics.
type Stats struct {
	Targets   int    // addresses subscribed to
	Connected int    // streams that delivered a snapshot and are open
	Snapshots uint64 // snapshots received
	Failures  uint64 // streams that failed or ended
	// Messages refused, by reason: each also ends its stream.
	TooLarge, Malformed uint64
	// Throttled counts the reads that waited for MaxMessageRate.
	Throttled uint64
	// Resubscriptions counts the requests set after the first.
	Resubscriptions uint64
}

type agentState struct {
	live bool
	gen  uint64 // the latest request generation it answered
}

// New returns a pool; Run starts it.
func New(store Ingester, o Options) (*Pool, error) {
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DNSRefresh <= 0 {
		o.DNSRefresh = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Second
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = 250 * time.Millisecond
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = 30 * time.Second
	}
	if o.MaxMessageRate <= 0 {
		o.MaxMessageRate = DefaultMaxMessageRate
	}
	// The agents' snapshots may exceed gRPC's default 4 MiB. The scaler
	// writes an agent little but a request, window updates and pings:
	// a write buffer of WriteBufferBytes, not gRPC's 32 KiB, per
	// connection (the caller's options may still set another).
	// A fixed flow-control window, not gRPC's estimate of the bandwidth-
	// delay product: the estimator pings the agent after every message
	// that finds no ping outstanding (an agent's message every 250 ms is
	// a ping and its answer each), a write and a read on both sides per
	// message; and it may grow the window to 16 MiB per agent, all of
	// which a slow scaler would hold.
	o.DialOptions = append([]grpc.DialOption{grpc.WithWriteBufferSize(WriteBufferBytes),
		grpc.WithStaticStreamWindowSize(WindowBytes), grpc.WithStaticConnWindowSize(WindowBytes)}, o.DialOptions...)
	o.DialOptions = append(o.DialOptions, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)))
	if o.DNS != "" {
		if _, _, err := net.SplitHostPort(o.DNS); err != nil {
			return nil, fmt.Errorf("agents DNS name %q: %w", o.DNS, err)
		}
	}
	p := &Pool{opts: o, store: store, log: o.Logger, subs: make(map[string]context.CancelFunc),
		req: &telemetryv1.WatchRequest{}, agents: make(map[string]*agentState)}
	p.reqChanged, p.cancelReqChanged = context.WithCancel(context.Background())
	return p, nil
}

// errRequestChanged ends a stream whose request is no longer what the
// triggers need; it is reopened at once with the new one.
var errRequestChanged = errors.New("the request changed")

// SetRequest sets what every stream asks the agents for, and its
// generation (increasing); streams open with another request are
// reopened with this one. Until it is first called the pool asks for
// everything (an empty WatchRequest) as generation 0.
func (p *Pool) SetRequest(req *telemetryv1.WatchRequest, gen uint64) {
	p.reqMu.Lock()
	if p.reqGen != 0 && gen <= p.reqGen {
		p.reqMu.Unlock()
		return
	}
	first := p.reqGen == 0
	p.req, p.reqGen = req, gen
	p.cancelReqChanged()
	p.reqChanged, p.cancelReqChanged = context.WithCancel(context.Background())
	p.reqMu.Unlock()
	if !first {
		p.resubs.Add(1)
	}

	p.ansMu.Lock()
	p.cur, p.setAt, p.behind = gen, time.Now(), 0
	for _, a := range p.agents {
		if a.live && a.gen < gen {
			p.behind++
		}
	}
	p.waitedOn = p.behind > 0
	p.settle()
	p.ansMu.Unlock()
}

func (p *Pool) request() (*telemetryv1.WatchRequest, uint64, context.Context) {
	p.reqMu.Lock()
	defer p.reqMu.Unlock()
	return p.req, p.reqGen, p.reqChanged
}

// Answered is the latest request generation every live agent has
// answered: what a trigger new to that request waits for.
func (p *Pool) Answered() uint64 {
	p.ansMu.Lock()
	defer p.ansMu.Unlock()
	return p.settled
}

// answered records that a's stream, opened with request gen, delivered
// its first message (or, with live false, that it failed).
func (p *Pool) answered(a *agentState, gen uint64, live bool) {
	p.ansMu.Lock()
	defer p.ansMu.Unlock()
	if a.live && a.gen < p.cur {
		p.behind--
	}
	a.live = live
	if live {
		a.gen = gen
	}
	if a.live && a.gen < p.cur {
		p.behind++
	}
	p.settle()
}

// settle marks cur answered once no live agent is behind; p.ansMu held.
func (p *Pool) settle() {
	if p.behind > 0 || p.settled >= p.cur {
		return
	}
	p.settled = p.cur
	if p.waitedOn && p.opts.AnswerDuration != nil {
		p.opts.AnswerDuration.Observe(time.Since(p.setAt).Seconds())
	}
}

// Stats returns the counters now.
func (p *Pool) Stats() Stats {
	return Stats{
		Targets:   int(p.targets.Load()),
		Connected: int(p.connected.Load()),
		Snapshots: p.snapshots.Load(),
		Failures:  p.failures.Load(),
		TooLarge:  p.tooLarge.Load(),
		Malformed: p.malformed.Load(),
		Throttled: p.throttled.Load(),

		Resubscriptions: p.resubs.Load(),
	}
}

// Run subscribes until ctx is done, then waits for every stream to end.
func (p *Pool) Run(ctx context.Context) error {
	defer p.wg.Wait()
	static := map[string]bool{}
	for _, a := range p.opts.Static {
		static[a] = true
	}
	if p.opts.DNS == "" {
		p.reconcile(ctx, static)
		<-ctx.Done()
		p.reconcile(ctx, nil)
		return nil
	}
	host, port, _ := net.SplitHostPort(p.opts.DNS)
	t := time.NewTicker(p.opts.DNSRefresh)
	defer t.Stop()
	var lastErr string
	for {
		addrs, err := p.resolve(ctx, host, port)
		switch {
		case err != nil && ctx.Err() == nil:
			// Keep the agents we have: a DNS hiccup is not every node gone.
			if err.Error() != lastErr {
				p.log.Warn("resolving agents failed; keeping the current set", "name", p.opts.DNS, "err", err)
				lastErr = err.Error()
			}
		case err == nil:
			if lastErr != "" {
				p.log.Info("resolving agents works again", "name", p.opts.DNS)
				lastErr = ""
			}
			for a := range static {
				addrs[a] = true
			}
			p.reconcile(ctx, addrs)
		}
		select {
		case <-ctx.Done():
			p.reconcile(ctx, nil)
			return nil
		case <-t.C:
		}
	}
}

func (p *Pool) resolve(ctx context.Context, host, port string) (map[string]bool, error) {
	ips, err := p.opts.Resolver.LookupHost(ctx, host)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		// A headless Service with no ready endpoint has no records.
		ips, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	addrs := make(map[string]bool, len(ips))
	for _, ip := range ips {
		addrs[net.JoinHostPort(ip, port)] = true
	}
	return addrs, nil
}

// reconcile subscribes to new addresses and drops vanished ones.
func (p *Pool) reconcile(ctx context.Context, want map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var added, dropped []string
	for a, cancel := range p.subs {
		if !want[a] {
			cancel()
			delete(p.subs, a)
			dropped = append(dropped, a)
		}
	}
	for a := range want {
		if _, ok := p.subs[a]; ok {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		p.subs[a] = cancel
		added = append(added, a)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.subscribe(sctx, a)
		}()
	}
	p.targets.Store(int64(len(p.subs)))
	if len(added)+len(dropped) > 0 && ctx.Err() == nil {
		sort.Strings(added)
		sort.Strings(dropped)
		p.log.Info("agents changed", "added", added, "dropped", dropped, "total", len(p.subs))
	}
}

// subscribe keeps one Watch stream to addr open until ctx is done.
func (p *Pool) subscribe(ctx context.Context, addr string) {
	log := p.log.With("agent", addr)
	conn, err := grpc.NewClient(addr, p.opts.DialOptions...)
	if err != nil {
		// Only a malformed target fails here; NewClient connects lazily.
		log.Error("bad agent address", "err", err)
		return
	}
	defer conn.Close()
	client := telemetryv1.NewTelemetryClient(conn)
	st := &subState{log: log, agent: &agentState{}}
	p.ansMu.Lock()
	p.agents[addr] = st.agent
	p.ansMu.Unlock()
	defer func() {
		p.answered(st.agent, 0, false)
		p.ansMu.Lock()
		delete(p.agents, addr)
		p.ansMu.Unlock()
	}()
	attempt := 0
	for {
		got, err := p.watch(ctx, client, st)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRequestChanged) {
			attempt = 0
			continue
		}
		// Failed: not waited on until it answers again.
		st.up = false
		p.answered(st.agent, 0, false)
		p.failures.Add(1)
		reason := p.rejected(err)
		// Log the state change once: a stream that worked and ended, the
		// first failed attempt, or the first refused message of a kind;
		// the retries that follow are debug.
		switch {
		case reason != "":
			// An agent that sends what the scaler refuses would send it
			// again at once: back off as from a failed attempt, however
			// many good snapshots came before.
			if reason != st.rejecting {
				log.Warn("agent sent a message the scaler refuses; reconnecting with backoff", "reason", reason, "err", err,
					"snapshots", got, "max_message_bytes", MaxMessageBytes)
			} else {
				log.Debug("agent sent a refused message again", "reason", reason, "err", err, "attempt", attempt)
			}
		case got > 0:
			attempt = 0
			log.Warn("agent stream ended; reconnecting", "err", err, "snapshots", got)
		case attempt == 0:
			log.Warn("agent unreachable; retrying with backoff", "err", err)
		default:
			log.Debug("agent still unreachable", "err", err, "attempt", attempt)
		}
		st.rejecting = reason
		d := backoff(p.opts.BackoffBase, p.opts.BackoffMax, attempt)
		attempt++
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// subState is what one agent's subscription remembers across its streams,
// so that each kind of misbehaviour is logged once, not per stream.
type subState struct {
	log       *slog.Logger
	rejecting string // the reason the last stream's message was refused; "" if it was not
	throttled bool   // the rate cap was logged
	up        bool   // "agent connected" was logged, and no stream failed since
	agent     *agentState
}

// errMalformed wraps a snapshot the store refuses.
var errMalformed = errors.New("malformed snapshot")

// rejected counts err if it is a refused message and returns its reason,
// "" otherwise. gRPC reports a message over the receive limit as
// RESOURCE_EXHAUSTED and one it cannot decode as INTERNAL ("grpc: failed
// to unmarshal the received message").
func (p *Pool) rejected(err error) string {
	s, _ := status.FromError(err)
	switch {
	case s.Code() == codes.ResourceExhausted:
		p.tooLarge.Add(1)
		return RejectTooLarge
	case s.Code() == codes.Internal && strings.Contains(s.Message(), "unmarshal"), errors.Is(err, errMalformed):
		p.malformed.Add(1)
		return RejectMalformed
	}
	return ""
}

// watch runs one stream until it fails; it returns how many snapshots it
// delivered.
func (p *Pool) watch(ctx context.Context, client telemetryv1.TelemetryClient, st *subState) (int, error) {
	log := st.log
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timeout := p.opts.IdleTimeout
	idle := time.AfterFunc(timeout, func() {
		cancel(errors.New("no message within the idle timeout (--agents.idle-timeout, or three of the agent's message periods)"))
	})
	defer idle.Stop()
	req, gen, changed := p.request()
	defer context.AfterFunc(changed, func() { cancel(errRequestChanged) })()
	stream, err := client.Watch(ctx, req)
	if err != nil {
		// A request changed while the stream was opening (the agent's
		// connection still being made) is no failure: reopened at once.
		if c := context.Cause(ctx); c != nil && ctx.Err() != nil {
			err = c
		}
		return 0, err
	}
	n := 0
	defer func() {
		if n > 0 {
			p.connected.Add(-1)
		}
	}()
	limit := rate.NewLimiter(rate.Limit(p.opts.MaxMessageRate), max(1, int(p.opts.MaxMessageRate)))
	for {
		if !limit.Allow() {
			p.throttled.Add(1)
			if !st.throttled {
				st.throttled = true
				log.Warn("agent sends faster than the scaler reads one agent; reading it at that rate", "max_messages_per_second", p.opts.MaxMessageRate)
			}
			if err := limit.Wait(ctx); err != nil {
				return n, context.Cause(ctx)
			}
		}
		snap, err := stream.Recv()
		if err != nil {
			if c := context.Cause(ctx); c != nil && ctx.Err() != nil {
				err = c
			}
			return n, err
		}
		if snap.Period == nil {
			// An agent older than NodeSnapshot.period: it sends every
			// interval, or every min_period asked.
			snap.Period = durationpb.New(max(snap.GetInterval().AsDuration(), req.GetMinPeriod().AsDuration()))
		}
		// An agent sampling, or asked to send, slower than the timeout is
		// not idle: give it three of its periods.
		timeout = max(p.opts.IdleTimeout, 3*snap.GetPeriod().AsDuration())
		if n == 0 {
			p.connected.Add(1)
			if !st.up {
				// Once per connection, not per re-subscription: a new
				// request reopens every agent's stream.
				st.up = true
				log.Info("agent connected", "node", snap.GetNode())
			}
		}
		idle.Reset(timeout)
		n++
		p.snapshots.Add(1)
		ingest := p.store.Ingest
		if n == 1 {
			ingest = p.store.IngestFirst
		}
		if err := ingest(snap); err != nil {
			return n, fmt.Errorf("%w: %w", errMalformed, err)
		}
		if n == 1 {
			// Ingested: what the request asks is in the store.
			p.answered(st.agent, gen, true)
		}
	}
}

// backoff is exponential from base, capped at max, with "equal jitter":
// half the delay fixed, half random, so that agents restarted together
// are not reconnected together.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base
	for range attempt {
		d *= 2
		if d >= max {
			d = max
			break
		}
	}
	return d/2 + rand.N(d/2+1) // #nosec G404 -- jitter, not a secret
}
