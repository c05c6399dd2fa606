package cgroup

import (
	"strings"
	"testing"
)

// FuzzParse feeds Parse arbitrary cgroup files. Parse runs on whatever a
// host's procfs holds, so beyond not panicking it must never invent an
// identity: a pod UID or container ID it returns is one the input carries,
// in the dashed form or the systemd driver's underscored one, and of the
// shape the callers rely on.
func FuzzParse(f *testing.F) {
	for _, tc := range parseCases() {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		o, ok := Parse(in)
		s := string(in)
		if ok != (o.PodUID != "") {
			t.Fatalf("ok = %v with PodUID %q", ok, o.PodUID)
		}
		if !ok && o != (Owner{}) {
			t.Fatalf("no pod, but Owner %+v", o)
		}
		if ok {
			if strings.Contains(o.PodUID, "_") || !validUID(o.PodUID) {
				t.Fatalf("PodUID %q is not a canonical UID", o.PodUID)
			}
			if !strings.Contains(s, o.PodUID) && !strings.Contains(s, strings.ReplaceAll(o.PodUID, "-", "_")) {
				t.Fatalf("PodUID %q is not in the input %q", o.PodUID, s)
			}
		}
		if o.ContainerID != "" {
			if !validContainerID(o.ContainerID) {
				t.Fatalf("ContainerID %q is not 64 hex", o.ContainerID)
			}
			if !strings.Contains(s, o.ContainerID) {
				t.Fatalf("ContainerID %q is not in the input %q", o.ContainerID, s)
			}
		}
		if o.Runtime != "" && o.ContainerID == "" {
			t.Fatalf("Runtime %q without a container", o.Runtime)
		}
		if again, againOK := Parse(in); again != o || againOK != ok {
			t.Fatalf("Parse is not deterministic: %+v, %v then %+v, %v", o, ok, again, againOK)
		}
	})
}
