package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/gpu-telemetry/agent/internal/nvml/sim"
)

// LoadFilePoll is how often --simulate.load-file is checked: a stat, and
// a read only when it changed. A step written to the file shows within
// this plus one sampling interval.
const LoadFilePoll = 50 * time.Millisecond

// loadFile is --simulate.load-file: utilization in percent for every GPU,
// and per GPU index, overriding the node-wide values field by field. A
// field left out follows the simulation's curve; an empty or missing file
// returns every GPU to its curves. JSON is YAML, so either is accepted:
//
//	{"gpu_util": 90, "enc_util": 80, "gpus": {"1": {"gpu_util": 10}}}
type loadFile struct {
	loadValues `yaml:",inline"`
	GPUs       map[string]loadValues `yaml:"gpus"`
}

type loadValues struct {
	GPUUtil     *float64 `yaml:"gpu_util"`
	MemCopyUtil *float64 `yaml:"mem_copy_util"`
	EncUtil     *float64 `yaml:"enc_util"`
	DecUtil     *float64 `yaml:"dec_util"`
}

// loads returns the load of each of n GPUs the file sets.
func (f *loadFile) loads(n int) ([]sim.Load, error) {
	out := make([]sim.Load, n)
	for i := range out {
		out[i] = sim.Load{GPU: f.GPUUtil, Memory: f.MemCopyUtil, Encoder: f.EncUtil, Decoder: f.DecUtil}
	}
	keys := make([]string, 0, len(f.GPUs))
	for k := range f.GPUs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= n {
			return nil, fmt.Errorf("gpus: %q is not the index of a simulated GPU (0-%d)", k, n-1)
		}
		v := f.GPUs[k]
		l := &out[i]
		l.GPU = cmpOr(v.GPUUtil, l.GPU)
		l.Memory = cmpOr(v.MemCopyUtil, l.Memory)
		l.Encoder = cmpOr(v.EncUtil, l.Encoder)
		l.Decoder = cmpOr(v.DecUtil, l.Decoder)
	}
	return out, nil
}

func cmpOr(a, b *float64) *float64 {
	if a != nil {
		return a
	}
	return b
}

func parseLoadFile(data []byte, gpus int) ([]sim.Load, error) {
	var f loadFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	return f.loads(gpus)
}

// watchLoadFile applies path's load steps to ctl until ctx ends: at once,
// then whenever the file changes (size, modification time or identity).
// A file that does not parse is reported once and the last good step
// kept.
func watchLoadFile(ctx context.Context, path string, ctl *sim.Control, log *slog.Logger) error {
	gpus := len(ctl.Devices())
	var last os.FileInfo
	apply := func() {
		info, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			info = nil
		} else if err != nil {
			log.Warn("reading the load file", "path", path, "err", err)
			return
		}
		if unchanged(last, info) {
			return
		}
		last = info
		var data []byte
		if info != nil {
			if !info.Mode().IsRegular() {
				log.Warn("load file ignored, the last step is kept", "path", path, "err", "not a regular file")
				return
			}
			// #nosec G304 -- the path is the operator's --simulate.load-file
			if data, err = os.ReadFile(path); err != nil {
				log.Warn("reading the load file", "path", path, "err", err)
				return
			}
		}
		loads, err := parseLoadFile(data, gpus)
		if err != nil {
			log.Warn("load file ignored, the last step is kept", "path", path, "err", err)
			return
		}
		for i, l := range loads {
			if err := ctl.SetLoad(i, l); err != nil {
				log.Warn("load file ignored for a GPU", "path", path, "gpu", i, "err", err)
			}
		}
		log.Info("simulated load stepped", "path", path, "load", string(data))
	}
	t := time.NewTicker(LoadFilePoll)
	defer t.Stop()
	for {
		apply()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func unchanged(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
