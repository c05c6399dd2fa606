// Command floor is the least an NVML exporter can do, for the bench's
// -floor run: one nvmlDeviceGetUtilizationRates per GPU every -interval,
// all in one goroutine, and a one-line /metrics. What it costs on NVIDIA's
// mock library is that library's own cost per interval (its Go runtime
// wakes for every burst of calls), which the agent and the peer pay too.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func main() {
	lib := flag.String("library", "", "libnvidia-ml.so.1 to load; empty: the loader's search path")
	interval := flag.Duration("interval", 100*time.Millisecond, "time between two reads of every GPU")
	addr := flag.String("web.listen-address", "127.0.0.1:0", "address of /metrics")
	flag.Parse()

	var n nvml.Interface
	if *lib != "" {
		n = nvml.New(nvml.WithLibraryPath(*lib))
	} else {
		n = nvml.New()
	}
	if ret := n.Init(); ret != nvml.SUCCESS {
		log.Fatalf("nvmlInit: %v", n.ErrorString(ret))
	}
	count, ret := n.DeviceGetCount()
	if ret != nvml.SUCCESS {
		log.Fatalf("nvmlDeviceGetCount: %v", n.ErrorString(ret))
	}
	devs := make([]nvml.Device, count)
	for i := range devs {
		if devs[i], ret = n.DeviceGetHandleByIndex(i); ret != nvml.SUCCESS {
			log.Fatalf("nvmlDeviceGetHandleByIndex(%d): %v", i, n.ErrorString(ret))
		}
	}
	var reads, sum atomic.Uint64
	go func() {
		for range time.Tick(*interval) {
			for _, d := range devs {
				if u, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
					sum.Add(uint64(u.Gpu))
				}
			}
			reads.Add(1)
		}
	}()
	http.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "floor_gpus %d\nfloor_reads_total %d\nfloor_utilization_sum %d\n", count, reads.Load(), sum.Load())
	})
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.Background())
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	n.Shutdown()
}
