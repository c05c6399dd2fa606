package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
	"github.com/gpu-telemetry/agent/internal/testutil"
)

func val(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestParseLoadFile(t *testing.T) {
	for _, tt := range []struct {
		name, data string
		want       [][4]any // per GPU: gpu, mem, enc, dec
		err        string
	}{
		{"empty: back to the curves", "", [][4]any{{nil, nil, nil, nil}, {nil, nil, nil, nil}}, ""},
		{"node-wide JSON", `{"gpu_util": 90, "enc_util": 80}`, [][4]any{{90.0, nil, 80.0, nil}, {90.0, nil, 80.0, nil}}, ""},
		{"per GPU over node-wide, field by field", `{"gpu_util": 90, "gpus": {"1": {"gpu_util": 10, "dec_util": 5}}}`,
			[][4]any{{90.0, nil, nil, nil}, {10.0, nil, nil, 5.0}}, ""},
		{"YAML", "mem_copy_util: 40\ngpus:\n  0: {enc_util: 70}\n", [][4]any{{nil, 40.0, 70.0, nil}, {nil, 40.0, nil, nil}}, ""},
		{"no such GPU", `{"gpus": {"2": {"gpu_util": 1}}}`, nil, `"2" is not the index of a simulated GPU (0-1)`},
		{"unknown key", `{"gpu_utilization": 1}`, nil, "gpu_utilization"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			loads, err := parseLoadFile([]byte(tt.data), 2)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, l := range loads {
				if got := [4]any{val(l.GPU), val(l.Memory), val(l.Encoder), val(l.Decoder)}; got != tt.want[i] {
					t.Errorf("GPU %d load %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
}

// The watcher applies a step as soon as the file is written, keeps it
// over a file that does not parse, and returns to the curves when the
// file goes.
func TestWatchLoadFile(t *testing.T) {
	ctl := sim.NewControl(sim.New(sim.Options{Devices: 2, Seed: 1, Static: true}))
	path := filepath.Join(t.TempDir(), "load.json")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- watchLoadFile(ctx, path, ctl, slog.New(slog.DiscardHandler)) }()
	defer func() { cancel(); <-done }()

	gpu1, _ := ctl.DeviceGetHandleByIndex(1)
	curve, _ := gpu1.GetUtilizationRates()
	util := func() uint32 { u, _ := gpu1.GetUtilizationRates(); return u.Gpu }
	waitUtil := func(what string, want uint32) {
		t.Helper()
		if err := testutil.Poll(t.Context(), 5*time.Second, func() (bool, error) { return util() == want, nil }); err != nil {
			t.Fatalf("%s: GPU 1 at %d%%, want %d%%: %v", what, util(), want, err)
		}
	}
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"gpu_util": 97}`)
	waitUtil("step written", 97)
	write(`{"gpu_util": 3`) // truncated
	time.Sleep(3 * LoadFilePoll)
	waitUtil("a file that does not parse", 97)
	write(`{"gpus": {"1": {"gpu_util": 55}}}`)
	waitUtil("second step", 55)
	os.Remove(path)
	waitUtil("file removed", curve.Gpu)
}
