package fleet

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/gpu-telemetry/agent/api/telemetry/v1"
)

// sameAnswer reports how a maintained answer differs from Evaluate's, or
// "". Values may differ by rounding only: the running sums add in another
// order.
func sameAnswer(got Result, gotErr error, want Result, wantErr error) string {
	if gotErr != nil || wantErr != nil {
		if !errors.Is(gotErr, wantErr) || !errors.Is(wantErr, gotErr) {
			return fmt.Sprintf("answer %v (%v), evaluation %v (%v)", got, gotErr, want, wantErr)
		}
		return ""
	}
	if got.Pods != want.Pods || got.Nodes != want.Nodes || math.Abs(got.Value-want.Value) > 1e-9*max(1, math.Abs(want.Value)) {
		return fmt.Sprintf("answer %v, evaluation %v", got, want)
	}
	return ""
}

// walkQueries are every aggregation, latest and windowed, over a metric
// with hardware samples, one without, and a device-wide one (no shares,
// a history only once windowed).
func walkQueries(t *testing.T) []*Query {
	var qs []*Query
	for _, agg := range []string{"avg", "max", "sum", "p95"} {
		for _, w := range []string{"0", "700ms", "2s"} {
			for _, m := range []string{"enc_util", "fb_used_ratio", "power_ratio"} {
				qs = append(qs, mustQuery(t, "metric", m, "podPattern", "w-.*", "target", "50", "activationTarget", "60", "aggregation", agg, "window", w))
			}
		}
	}
	return qs
}

// walkSnapshot is a random snapshot of node: 0-3 devices, each held by
// 0-2 pods (some not matching, some shared, some with their own shares),
// some stalled, some with a burst of hardware samples, at the node's
// clock at.
func walkSnapshot(rng *rand.Rand, node string, seq uint64, at time.Time, start time.Time) *telemetryv1.NodeSnapshot {
	var devs []*telemetryv1.Device
	for g := range rng.IntN(4) {
		var pods []string
		for range rng.IntN(3) {
			p := "default/w-" + strconv.Itoa(rng.IntN(8))
			if rng.IntN(5) == 0 {
				p = "default/other"
			}
			pods = append(pods, p)
		}
		d := dev(node+"-"+strconv.Itoa(g), float64(rng.IntN(101))+float64(rng.IntN(4))/4, pods...)
		if rng.IntN(3) > 0 {
			used, total := uint64(rng.IntN(16)), uint64(16)
			d.FbUsedBytes, d.FbTotalBytes = &used, &total
		}
		if rng.IntN(2) == 0 {
			es := &telemetryv1.EngineSamples{Engine: telemetryv1.Engine_ENGINE_ENCODER}
			for k := range rng.IntN(4) {
				es.Samples = append(es.Samples, &telemetryv1.Sample{
					TimeUnixMicro: at.Add(-time.Duration(3-k) * 70 * time.Millisecond).UnixMicro(), Value: float64(rng.IntN(101))})
			}
			d.Samples = []*telemetryv1.EngineSamples{es}
		}
		if rng.IntN(2) == 0 {
			// Per-process attribution: each pod's own share, some fields
			// absent (no per-process source of them).
			for _, p := range d.Pods {
				if rng.IntN(4) > 0 {
					enc := float64(rng.IntN(51))
					p.EncUtil = &enc
				}
				if rng.IntN(2) == 0 {
					fb := uint64(rng.IntN(9))
					p.FbUsedBytes = &fb
				}
			}
		}
		if rng.IntN(3) > 0 {
			watts, limit := float64(rng.IntN(71)), 70.0
			d.PowerWatts, d.EnforcedPowerLimitWatts = &watts, &limit
		}
		d.Stalled = rng.IntN(10) == 0
		devs = append(devs, d)
	}
	sn := snap(node, seq, at, devs...)
	sn.AgentStart = timestamppb.New(start)
	if rng.IntN(2) == 0 {
		sn.Interval = durationpb.New(500 * time.Millisecond) // a stale timeout of 2s
	}
	return sn
}

// The maintained answers (GetMetrics, IsActive) equal a full Evaluate
// after every step of a random walk: nodes joining, restarting, going
// silent past their stale timeout and being forgotten; pods moving, values
// rising and falling, windows filling and sliding; aggregates made at a
// random step, as a trigger's first poll is.
func TestAnswerAgreesWithEvaluate(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			c := &clock{t: epoch}
			// StaleAfter 0: each node's own timeout, 4 intervals, at least 1s.
			s := NewStore(Options{ForgetAfter: 20 * time.Second, MaxWindow: time.Minute, Now: c.Now})
			rng := rand.New(rand.NewPCG(seed, 7))
			qs := walkQueries(t)
			for _, q := range qs {
				s.Retain(q)
			}
			polled := make([]bool, len(qs))
			// Half the triggers are streamed too (StreamIsActive), made at
			// the start: their state follows every snapshot and sweep.
			active := make([]bool, len(qs))
			chans := make([]<-chan bool, len(qs))
			for j, q := range qs {
				if j%2 == 0 {
					var cancel func()
					active[j], chans[j], cancel = s.Watch(q)
					defer cancel()
				}
			}
			type nodeState struct {
				seq   uint64
				at    time.Time
				start time.Time
			}
			nodes := map[string]*nodeState{}
			for i := range 4000 {
				told := true // the watchers were told of this step
				switch r := rng.IntN(100); {
				case r < 80:
					name := "n" + strconv.Itoa(rng.IntN(7))
					ns := nodes[name]
					if ns == nil || rng.IntN(200) == 0 { // new, or the agent restarted
						ns = &nodeState{at: epoch.Add(time.Duration(rng.IntN(1000)) * time.Second), start: epoch.Add(time.Duration(i) * time.Second)}
						nodes[name] = ns
					}
					ns.seq++
					ns.at = ns.at.Add(time.Duration(50+rng.IntN(400)) * time.Millisecond)
					ingest(t, s, walkSnapshot(rng, name, ns.seq, ns.at, ns.start))
				case r < 95:
					c.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
					told = false // silence alone reaches them at the next sweep
				case r < 99:
					s.Sweep()
				default:
					c.Add(time.Duration(rng.IntN(30)) * time.Second) // silence, forgetting
					s.Sweep()
				}
				for j, q := range qs {
					if chans[j] != nil {
						select {
						case active[j] = <-chans[j]:
						default:
						}
						want, err := s.Evaluate(q)
						// At the activation target itself the maintained sum,
						// added in another order, may be a rounding above or
						// below it: either state is right there.
						atTarget := err == nil && math.Abs(want.Value-q.ActivationTarget) <= 1e-9*max(1, q.ActivationTarget)
						if told && !atTarget && active[j] != (err == nil && q.Active(want.Value)) {
							t.Fatalf("step %d, %s: watcher active %v, evaluation %v (%v)", i, q.MetricName(), active[j], want, err)
						}
					}
					if !polled[j] && rng.IntN(100) != 0 {
						continue // not yet a trigger: no aggregate
					}
					polled[j] = true
					res, err := s.Answer(q)
					want, wantErr := s.Evaluate(q)
					if d := sameAnswer(res, err, want, wantErr); d != "" {
						t.Fatalf("step %d, %s: %s", i, q.MetricName(), d)
					}
				}
			}
			if s.Aggregates() != len(qs) {
				t.Errorf("%d aggregates, want %d", s.Aggregates(), len(qs))
			}
		})
	}
}

// Under concurrent ingest (one goroutine per node, two addresses for some),
// polls and sweeps, the aggregates end equal to a full evaluation: no
// snapshot applied out of order, none lost. Run with -race.
func TestAnswerConcurrentIngest(t *testing.T) {
	c := &clock{t: epoch}
	s := NewStore(Options{StaleAfter: time.Hour, ForgetAfter: 2 * time.Hour, MaxWindow: time.Minute, Now: c.Now})
	qs := walkQueries(t)
	for _, q := range qs {
		s.Retain(q)
		s.Answer(q)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for n := range 8 {
		for addr := range 1 + n%2 { // a node behind two addresses sends each snapshot twice
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(n), uint64(addr)))
				at := epoch
				for seq := uint64(1); seq <= 300; seq++ {
					at = at.Add(100 * time.Millisecond)
					sn := walkSnapshot(rand.New(rand.NewPCG(uint64(n), seq)), "n"+strconv.Itoa(n), seq, at, epoch)
					sn.Interval = durationpb.New(250 * time.Millisecond)
					if err := s.Ingest(sn); err != nil {
						t.Error(err)
						return
					}
					if rng.IntN(10) == 0 {
						time.Sleep(time.Microsecond)
					}
				}
			}()
		}
	}
	var pollers sync.WaitGroup
	pollers.Add(1)
	go func() {
		defer pollers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, q := range qs {
				s.Answer(q)
			}
			s.Sweep()
		}
	}()
	wg.Wait()
	close(stop)
	pollers.Wait()
	for _, q := range qs {
		res, err := s.Answer(q)
		want, wantErr := s.Evaluate(q)
		if d := sameAnswer(res, err, want, wantErr); d != "" {
			t.Errorf("%s: %s", q.MetricName(), d)
		}
	}
}

func TestAggregatesBoundedAndDropped(t *testing.T) {
	s, c := newTestStore(t)
	ingest(t, s, snap("n", 1, epoch, dev("GPU-1", 10, "default/p-1"), dev("GPU-2", 30, "default/p-2")))
	for i := range maxAggregates + 10 {
		q := mustQuery(t, "metric", "gpu_util", "podPattern", "p-.*|x"+strconv.Itoa(i), "target", "1")
		if res, err := s.Answer(q); err != nil || res.Value != 20 {
			t.Fatalf("query %d: %v, %v; want 20", i, res, err)
		}
	}
	if s.Aggregates() != maxAggregates {
		t.Errorf("%d aggregates, want the bound %d", s.Aggregates(), maxAggregates)
	}
	// A watched query is kept while watched, however long unpolled; the
	// polled ones go after aggregateIdle.
	q := mustQuery(t, "metric", "gpu_util", "podPattern", "p-1", "target", "1", "activationTarget", "5")
	active, _, cancel := s.Watch(q)
	if !active {
		t.Error("watch of 10 > 5: inactive")
	}
	c.Add(aggregateIdle / 2)
	s.Sweep()
	if s.Aggregates() != maxAggregates+1 {
		t.Errorf("%d aggregates after half the idle time, want %d", s.Aggregates(), maxAggregates+1)
	}
	c.Add(aggregateIdle)
	s.Sweep()
	if s.Aggregates() != 1 {
		t.Errorf("%d aggregates after the idle time, want the watched one", s.Aggregates())
	}
	cancel()
	if s.Aggregates() != 0 || s.Watchers() != 0 {
		t.Errorf("%d aggregates, %d watchers after the last stream ended", s.Aggregates(), s.Watchers())
	}
}

// A node that goes silent leaves a maintained answer at its deadline,
// with no snapshot and no sweep to tell it, and makes it Unavailable as
// Evaluate does.
func TestAnswerStaleWithoutSweep(t *testing.T) {
	s, c := newTestStore(t)
	q := mustQuery(t, "metric", "gpu_util", "podPattern", "inference-.*", "target", "1", "aggregation", "max")
	ingest(t, s, snap("n1", 1, epoch, dev("GPU-1", 10, "default/inference-0")),
		snap("n2", 1, epoch, dev("GPU-2", 90, "default/inference-1")))
	if res, err := s.Answer(q); err != nil || res.Value != 90 || res.Nodes != 2 {
		t.Fatalf("max = %v, %v; want 90 on 2 nodes", res, err)
	}
	c.Add(800 * time.Millisecond)
	ingest(t, s, snap("n1", 2, epoch, dev("GPU-1", 10, "default/inference-0")))
	c.Add(201 * time.Millisecond) // n2 silent 1.001s of a 1s timeout
	if res, err := s.Answer(q); err != nil || res.Value != 10 || res.Nodes != 1 {
		t.Errorf("n2 stale: %v, %v; want 10 from n1 alone", res, err)
	}
	c.Add(time.Second)
	if _, err := s.Answer(q); !errors.Is(err, ErrNoAgents) {
		t.Errorf("all silent: err = %v, want ErrNoAgents", err)
	}
	ingest(t, s, snap("n2", 2, epoch, dev("GPU-2", 70, "default/inference-1")))
	if res, err := s.Answer(q); err != nil || res.Value != 70 || res.Nodes != 1 {
		t.Errorf("n2 back: %v, %v; want 70", res, err)
	}
}

func TestKthIsSortedIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 2000 {
		n := 1 + rng.IntN(60)
		vs := make([]float64, n)
		for j := range vs {
			switch rng.IntN(20) {
			case 0:
				vs[j] = math.NaN()
			case 1:
				vs[j] = math.Inf(1 - 2*rng.IntN(2))
			default:
				vs[j] = float64(rng.IntN(1 + i%30)) // many duplicates
			}
		}
		if i%7 == 0 {
			slices.Sort(vs) // sorted and reversed input
			if i%2 == 0 {
				slices.Reverse(vs)
			}
		}
		sorted := slices.Clone(vs)
		slices.Sort(sorted)
		k := rng.IntN(n)
		got := kth(slices.Clone(vs), k)
		if want := sorted[k]; got != want && !(math.IsNaN(got) && math.IsNaN(want)) {
			t.Fatalf("kth(%v, %d) = %v, want %v", vs, k, got, want)
		}
	}
}
