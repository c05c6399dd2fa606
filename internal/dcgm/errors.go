package dcgm

import (
	"errors"
	"regexp"
	"strconv"
	"strings"

	godcgm "github.com/NVIDIA/go-dcgm/pkg/dcgm"
)

// DCGM status codes (dcgmReturn_t, dcgm_structs.h) the Source tells apart.
const (
	stNotSupported          = -6
	stConnectionNotValid    = -21
	stModuleNotLoaded       = -33
	stInUse                 = -34
	stProfilingNotSupported = -36
)

// Reasons of gpu_agent_dcgm_errors_total.
const (
	ReasonLibraryMissing = "library_missing"
	ReasonConnect        = "connect"
	ReasonInUse          = "in_use"
	ReasonNotSupported   = "not_supported"
	ReasonTimeout        = "timeout"
	ReasonRead           = "read"
)

// Reasons lists every reason, in the order the metric is initialised.
var Reasons = []string{ReasonLibraryMissing, ReasonConnect, ReasonInUse, ReasonNotSupported, ReasonTimeout, ReasonRead}

// ErrTimeout marks a call that did not return within its timeout (it may
// still be running: the next call waits for it, up to its own timeout).
var ErrTimeout = errors.New("dcgm call timed out")

// errLibraryMissing is go-dcgm's text when dlopen("libdcgm.so.4") fails
// (admin.go; the dlerror text is dropped).
const errLibraryMissing = "libdcgm.so.4 not found"

var codeRE = regexp.MustCompile(`error code (-?\d+)`)

// statusTexts are libdcgm's errorString texts (dcgmlib/src/dcgm_errors.c)
// of the codes told apart, for the errors go-dcgm flattens to that text.
var statusTexts = map[string]int{
	"Feature not supported":                                                                  stNotSupported,
	"Host engine connection invalid/disconnected":                                            stConnectionNotValid,
	"This request is serviced by a module of DCGM that is not currently loaded":              stModuleNotLoaded,
	"The requested operation could not be completed because the affected resource is in use": stInUse,
	"Profiling is not supported for this group of GPUs or GPU":                               stProfilingNotSupported,
}

// status recovers DCGM's status code from an error of go-dcgm's: its
// typed *Error, "error code N" in the text, or libdcgm's errorString text.
func status(err error) (int, bool) {
	if err == nil {
		return 0, false
	}
	var de *godcgm.Error
	if errors.As(err, &de) {
		return int(de.Code), true
	}
	msg := err.Error()
	if m := codeRE.FindStringSubmatch(msg); m != nil {
		if n, perr := strconv.Atoi(m[1]); perr == nil {
			return n, true
		}
	}
	for text, code := range statusTexts {
		if strings.Contains(msg, text) {
			return code, true
		}
	}
	return 0, false
}

// phase is what the Source was doing when a call failed.
type phase int

const (
	phaseConnect phase = iota // connect, list GPUs, create groups, watch
	phaseRead                 // GetValuesSince
)

// classify maps a failed call to its reason.
func classify(p phase, err error) string {
	switch {
	case errors.Is(err, ErrTimeout):
		return ReasonTimeout
	case strings.Contains(err.Error(), errLibraryMissing):
		return ReasonLibraryMissing
	}
	if code, ok := status(err); ok {
		switch code {
		case stInUse:
			return ReasonInUse
		case stNotSupported, stProfilingNotSupported, stModuleNotLoaded:
			return ReasonNotSupported
		}
	}
	if p == phaseRead {
		return ReasonRead
	}
	return ReasonConnect
}
