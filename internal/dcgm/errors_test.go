package dcgm

import (
	"errors"
	"fmt"
	"testing"
)

// The texts are go-dcgm v1.4611.2's, as observed over the fake library
// (dcgm-research.md §3).
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		p    phase
		err  error
		want string
	}{
		{phaseConnect, errors.New("libdcgm.so.4 not found"), ReasonLibraryMissing},
		{phaseConnect, errors.New("error connecting to nv-hostengine: Host engine connection invalid/disconnected"), ReasonConnect},
		{phaseRead, errors.New("dcgmGetValuesSince_v2 failed with error code -21"), ReasonRead},
		{phaseRead, errors.New("dcgmGetValuesSince_v2 failed with error code -34"), ReasonInUse},
		{phaseConnect, errors.New("The requested operation could not be completed because the affected resource is in use"), ReasonInUse},
		{phaseConnect, errors.New("error watching fields: Profiling is not supported for this group of GPUs or GPU"), ReasonNotSupported},
		{phaseConnect, errors.New("Feature not supported"), ReasonNotSupported},
		{phaseRead, fmt.Errorf("reading: %w", ErrTimeout), ReasonTimeout},
		{phaseConnect, errors.New(""), ReasonConnect}, // an unknown code: libdcgm's errorString is NULL
	} {
		if got := classify(c.p, c.err); got != c.want {
			t.Errorf("classify(%v, %q) = %s, want %s", c.p, c.err, got, c.want)
		}
	}
}

func TestStatus(t *testing.T) {
	if code, ok := status(errors.New("dcgmGetValuesSince_v2 failed with error code -36")); !ok || code != stProfilingNotSupported {
		t.Errorf("status = %d, %v", code, ok)
	}
	if _, ok := status(errors.New("something else")); ok {
		t.Error("status of an unrelated error is known")
	}
}
