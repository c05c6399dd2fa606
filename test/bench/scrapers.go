package main

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// newClient keeps a connection per scraper alive, as Prometheus does, so
// the latency is the agent's, not the TCP handshake's.
func newClient(scrapers int) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        scrapers + 2,
			MaxIdleConnsPerHost: scrapers + 2,
			DisableCompression:  true, // the scrapers ask for gzip themselves
		},
	}
}

// latencies collects the timed scrapes of every scraper.
type latencies struct {
	mu       sync.Mutex
	lats     []time.Duration
	ages     []time.Duration
	wire     int
	failures []error
}

func (l *latencies) add(r scrapeResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.err != nil {
		l.failures = append(l.failures, r.err)
		return
	}
	l.lats = append(l.lats, r.latency)
	l.ages = append(l.ages, r.age)
	l.wire = r.wireBytes
}

func (l *latencies) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lats, l.ages, l.failures = nil, nil, nil
}

func (l *latencies) results() (lats, ages []time.Duration, wire int, failures []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lats, l.ages, l.wire, l.failures
}

// startScrapers starts n scrapers that each scrape every period, all at
// the same instant (the worst case for n Prometheus replicas), until ctx
// is done.
func startScrapers(ctx context.Context, client *http.Client, url string, n int, period time.Duration) *latencies {
	l := &latencies{}
	for range n {
		go func() {
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				r := timedScrape(ctx, client, url)
				if ctx.Err() != nil {
					return // cut short by the end of the run, not a failure
				}
				l.add(r)
			}
		}()
	}
	return l
}
