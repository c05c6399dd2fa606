package podresources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpu-telemetry/agent/internal/attribution"
)

// maxRecvMsgSize bounds the kubelet's List answer, which carries every pod
// of the node, GPU or not, with its CPUs, memory and devices. gRPC's 4 MiB
// default is reachable: 10,000 pods of a kubelet with the static CPU and
// memory managers make 4.3 MB (fakekubelet.Crowd), and dcgm-exporter failed
// on such nodes (NVIDIA/dcgm-exporter#509). 16 MiB, what the kubelet's own
// pod-resources client allows, holds about 39,000 such pods. An answer over
// it fails that List (the last good map is kept, see Status), and is
// received no further than its length prefix.
const maxRecvMsgSize = 16 << 20

// maxReconnectBackoff caps gRPC's reconnect backoff (120 s by default) so a
// restarted kubelet is picked up within a couple of periods.
const maxReconnectBackoff = time.Second

// inventoryPoll is how often Run looks for the first snapshot of an
// InventoryResolver's store.
const inventoryPoll = 20 * time.Millisecond

// DefaultMaxStale is how long the last good pod map outlives the kubelet's
// last answer by default: long enough to ride out a kubelet restart or an
// upgrade, short enough that a pod deleted meanwhile does not keep being
// charged for a GPU for long.
const DefaultMaxStale = 5 * time.Minute

// NoMaxStale as Options.MaxStale keeps the last good pod map for as long
// as the kubelet is down (any negative value does).
const NoMaxStale time.Duration = -1

// Options tune the Client. Zero values take the defaults.
type Options struct {
	// Period between List calls, default 1s. The kubelet rate-limits this
	// API for all its clients together, so the Client never calls more often.
	Period time.Duration
	// Timeout of each List call, default 2s.
	Timeout time.Duration
	// MaxStale is how long after the last successful List the last good
	// map is still served, default DefaultMaxStale; NoMaxStale: forever.
	// Past it Assignments() is empty: pods may have gone meanwhile, and
	// no label is better than charging a GPU to a pod that left. It is
	// checked on each failed List, so it takes effect up to one Period
	// (plus Timeout) late. Before the first success it counts from
	// NewClient.
	MaxStale time.Duration
	// ResourceNames are extra resource names that are GPUs, matched
	// exactly, beyond nvidia.com/gpu, nvidia.com/gpu.shared and
	// nvidia.com/mig-* (a device plugin configured to rename them).
	ResourceNames []string
	// Now is the clock of LastSuccess and MaxStale, default time.Now; tests
	// pass a fake one. The rate limit keeps the real clock: it protects a
	// real kubelet.
	Now func() time.Time
	// Logger, default discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Period < 0 {
		return o, fmt.Errorf("podresources: negative period %v", o.Period)
	}
	if o.Timeout < 0 {
		return o, fmt.Errorf("podresources: negative timeout %v", o.Timeout)
	}
	for _, n := range o.ResourceNames {
		if err := ValidResourceName(n); err != nil {
			return o, fmt.Errorf("podresources: %w", err)
		}
	}
	if o.Period == 0 {
		o.Period = time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	if o.MaxStale == 0 {
		o.MaxStale = DefaultMaxStale
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Status describes the Client's view of the kubelet, for health endpoints
// and the agent's own metrics.
type Status struct {
	Up          bool      // last List succeeded
	Stale       bool      // last List failed; Assignments() is the last good map (or empty if never good, or Expired)
	Expired     bool      // Stale for longer than MaxStale: Assignments() is empty until the kubelet answers
	LastSuccess time.Time // zero if never
	LastError   error     // nil when Up
	Refreshes   uint64    // successful List calls
	Failures    uint64    // failed List calls
}

// Client polls the kubelet's pod-resources API and publishes the latest
// Assignments. One goroutine (Run) writes; any number read.
type Client struct {
	conn     *grpc.ClientConn
	lister   podresourcesv1.PodResourcesListerClient
	resolver atomic.Pointer[resolverBox]
	opts     Options
	gpus     gpuResources
	log      *slog.Logger
	created  time.Time // stands for LastSuccess before the first success

	current atomic.Pointer[Assignments]
	running atomic.Bool

	// callMu serializes Refresh so that calls stay one Period apart and
	// results are published in order.
	callMu     sync.Mutex
	lastCall   time.Time
	unresolved int // last published Unresolved, to log changes once

	statusMu sync.Mutex
	status   Status
	tried    bool // a List has completed (so a state change can be logged)
}

// NewClient prepares a client for the kubelet socket at socketPath. It does
// not connect: gRPC connects on the first call and reconnects on its own, so
// a socket that is missing at start is not an error.
func NewClient(socketPath string, r Resolver, opts Options) (*Client, error) {
	if socketPath == "" {
		return nil, errors.New("podresources: empty socket path")
	}
	if r == nil {
		return nil, errors.New("podresources: nil resolver")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	// "unix://" needs an absolute path: a relative one would be read as
	// the URL's authority.
	abs, err := filepath.Abs(socketPath)
	if err != nil {
		return nil, fmt.Errorf("podresources: socket path %q: %w", socketPath, err)
	}
	bo := backoff.DefaultConfig
	bo.MaxDelay = min(opts.Period, maxReconnectBackoff)
	bo.BaseDelay = min(bo.BaseDelay, bo.MaxDelay/4)
	conn, err := grpc.NewClient("unix://"+abs,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: opts.Timeout}),
	)
	if err != nil {
		return nil, fmt.Errorf("podresources: client for %q: %w", abs, err)
	}
	c := &Client{
		conn:    conn,
		lister:  podresourcesv1.NewPodResourcesListerClient(conn),
		opts:    opts,
		gpus:    newGPUResources(opts.ResourceNames),
		log:     opts.Logger.With("component", "podresources", "socket", abs),
		created: opts.Now(),
	}
	c.current.Store(&Assignments{})
	c.SetResolver(r)
	return c, nil
}

// resolverBox lets an interface value live in an atomic.Pointer.
type resolverBox struct{ Resolver }

// SetResolver replaces the inventory device IDs are resolved against (MIG
// instances were created or destroyed); the next poll uses it.
func (c *Client) SetResolver(r Resolver) {
	if r != nil {
		c.resolver.Store(&resolverBox{r})
	}
}

// Run polls List immediately, then every Period, until ctx is done. It
// returns nil when ctx is cancelled and closes the connection: call it once.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("podresources: run called twice")
	}
	defer c.Close()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		// An InventoryResolver before the first snapshot: nothing could
		// resolve yet, so the kubelet is not asked; the first snapshot is
		// a tick away.
		if r, ok := c.resolver.Load().Resolver.(*inventoryResolver); ok && !r.ready() {
			timer.Reset(min(c.opts.Period, inventoryPoll))
			continue
		}
		// Failures are reported through Status and logged on state change.
		_ = c.Refresh(ctx)
		timer.Reset(c.opts.Period)
	}
}

// Close releases the connection. Run calls it on return; callers that only
// use Refresh call it themselves.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Assignments returns the latest good map: empty before the first success,
// the last good one while the kubelet is unreachable, empty again once it
// has been unreachable for longer than MaxStale. Never nil.
func (c *Client) Assignments() *Assignments {
	return c.current.Load()
}

var _ attribution.PodSource = (*Client)(nil)

// DevicePods returns the latest device-to-pod map (attribution.PodSource).
func (c *Client) DevicePods() *attribution.DevicePods { return c.current.Load().DevicePods() }

// Stale reports that the latest List failed: DevicePods is the last good
// map (attribution.PodSource).
func (c *Client) Stale() bool { return c.Status().Stale }

// Status returns a copy of the client's state; safe for concurrent use.
func (c *Client) Status() Status {
	c.statusMu.Lock()
	defer c.statusMu.Unlock()
	return c.status
}

// Refresh makes one List call, builds the Assignments and publishes them.
// It waits until a Period has passed since the previous call, so that no
// caller can push the kubelet past its rate limit. A failure keeps the last
// good map and marks the status stale; cancellation of ctx is not counted
// as a failure.
func (c *Client) Refresh(ctx context.Context) error {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	if wait := time.Until(c.lastCall.Add(c.opts.Period)); wait > 0 && !c.lastCall.IsZero() {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	c.lastCall = time.Now()

	callCtx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	resp, err := c.lister.List(callCtx, &podresourcesv1.ListPodResourcesRequest{})
	cancel()
	if err != nil {
		if cerr := callerGaveUp(ctx, c.lastCall.Add(c.opts.Timeout), err); cerr != nil {
			return cerr
		}
		err = listError(err)
		c.fail(err)
		return err
	}
	a := buildAssignments(resp, c.resolver.Load().Resolver, c.gpus)
	c.current.Store(a)
	c.succeed(a)
	return nil
}

// listError names a failed List; an answer over maxRecvMsgSize, which gRPC
// reports as ResourceExhausted (as the kubelet's rate limiter also does),
// says which limit it passed.
func listError(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "larger than max") {
		return fmt.Errorf("list pod resources: the kubelet's answer is over the agent's %d MiB limit (some 39,000 pods): %w", maxRecvMsgSize>>20, err)
	}
	return fmt.Errorf("list pod resources: %w", err)
}

// callerGaveUp tells the caller's cancellation (shutdown) from a kubelet
// failure. The server may report DeadlineExceeded a hair before the caller's
// own context expires, so a deadline of the caller's that came before the
// call's own timeout also counts as the caller's.
func callerGaveUp(ctx context.Context, callDeadline time.Time, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if d, ok := ctx.Deadline(); ok && !d.After(callDeadline) && status.Code(err) == codes.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *Client) fail(err error) {
	now := c.opts.Now()
	c.statusMu.Lock()
	wasUp, tried := c.status.Up, c.tried
	c.tried = true
	c.status.Up, c.status.Stale, c.status.LastError = false, true, err
	c.status.Failures++
	since := c.status.LastSuccess
	if since.IsZero() {
		since = c.created
	}
	expire := c.opts.MaxStale > 0 && !c.status.Expired && now.Sub(since) >= c.opts.MaxStale
	if expire {
		// The empty map goes out before the status says so, so that a
		// reader seeing Expired never gets the old labels after it.
		c.current.Store(&Assignments{})
		c.status.Expired = true
	}
	c.statusMu.Unlock()
	if wasUp || !tried {
		c.log.Warn("kubelet pod-resources unavailable, keeping last assignments", "err", err)
	} else {
		c.log.Debug("kubelet pod-resources still unavailable", "err", err)
	}
	if expire {
		c.log.Warn("kubelet pod map expired, dropping pod labels until the kubelet answers",
			"max_stale", c.opts.MaxStale, "down_for", now.Sub(since).Round(time.Second), "err", err)
	}
}

func (c *Client) succeed(a *Assignments) {
	now := c.opts.Now()
	c.statusMu.Lock()
	wasUp, wasExpired := c.status.Up, c.status.Expired
	c.tried = true
	c.status.Up, c.status.Stale, c.status.Expired, c.status.LastError = true, false, false, nil
	c.status.LastSuccess = now
	c.status.Refreshes++
	c.statusMu.Unlock()
	if !wasUp {
		c.log.Info("kubelet pod-resources available", "devices", a.Len(), "pod_labels_restored", wasExpired)
	}
	// callMu is held: unresolved is only touched here.
	if n := a.Unresolved(); n != c.unresolved {
		c.unresolved = n
		if n > 0 {
			c.log.Warn("kubelet device ids match no gpu of the inventory", "count", n, "examples", a.unresolvedIDs)
		} else {
			c.log.Info("all kubelet device ids match the inventory")
		}
	}
}
