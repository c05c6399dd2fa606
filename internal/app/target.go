package app

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The annotations a pod opts in with. The pod watch keeps the ones under
// AnnotationPrefix and nothing else of a pod's annotations.
const (
	AnnotationPrefix   = "gpu-agent.io/"
	AnnotationScrape   = AnnotationPrefix + "scrape"   // "true" opts in
	AnnotationPort     = AnnotationPrefix + "port"     // a number or a named container port
	AnnotationPath     = AnnotationPrefix + "path"     // default /metrics
	AnnotationScheme   = AnnotationPrefix + "scheme"   // http (default) or https
	AnnotationFamilies = AnnotationPrefix + "families" // RE2 a family name must match whole
	AnnotationInterval = AnnotationPrefix + "interval" // a Go duration, at least the floor
)

// PodInfo is what discovery reads of a pod: what the pod watch keeps for it.
type PodInfo struct {
	Namespace, Name, UID string
	Phase                string // status.phase: only "Running" pods are scraped
	IP                   string // status.podIP
	// Annotations holds the pod's gpu-agent.io/ annotations only.
	Annotations map[string]string
	Ports       []Port
}

// Port is a container port of a pod's spec.
type Port struct {
	Container, Name string
	Number          int32
	Protocol        string // "TCP", "UDP", "SCTP"; empty means TCP
}

// Pods lists the pods on the agent's node; the pod watch implements it.
type Pods interface {
	AppPods() []PodInfo
}

// Target is one pod to scrape, from its annotations.
type Target struct {
	Namespace, Name, UID string
	URL                  string
	Families             *regexp.Regexp // whole-name match
	Interval             time.Duration
}

// key identifies a target's configuration: a pod whose annotations, IP
// or ports change is a new target (its loop restarts).
func (t *Target) key() string {
	return t.UID + "\x00" + t.URL + "\x00" + t.Families.String() + "\x00" + t.Interval.String()
}

// errNotOptedIn marks a pod without gpu-agent.io/scrape: "true": not a
// target, and not an error either.
var errNotOptedIn = errors.New("not opted in")

// errNotRunning marks an opted-in pod that is not Running or has no IP
// yet: not scraped, not an error.
var errNotRunning = errors.New("not running")

// ParseTarget reads a pod's annotations. floor and defInterval are
// --app.interval's floor and value. A pod that did not opt in returns
// errNotOptedIn; one that is not Running with an IP, errNotRunning; a bad
// annotation, an error that names it.
func ParseTarget(p PodInfo, floor, defInterval time.Duration) (*Target, error) {
	a := p.Annotations
	if strings.TrimSpace(a[AnnotationScrape]) != "true" {
		return nil, errNotOptedIn
	}
	if p.Phase != "Running" || p.IP == "" {
		return nil, errNotRunning
	}
	bad := func(key, why string) error {
		return fmt.Errorf("pod %s/%s: annotation %s=%q: %s", p.Namespace, p.Name, key, a[key], why)
	}
	t := &Target{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Interval: defInterval}

	scheme := "http"
	if v, ok := a[AnnotationScheme]; ok {
		switch v {
		case "http", "https":
			scheme = v
		default:
			return nil, bad(AnnotationScheme, "want http or https")
		}
	}
	port, err := targetPort(p)
	if err != nil {
		return nil, bad(AnnotationPort, err.Error())
	}
	path := "/metrics"
	if v, ok := a[AnnotationPath]; ok {
		if !strings.HasPrefix(v, "/") {
			return nil, bad(AnnotationPath, "must start with /")
		}
		path = v
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(p.IP, strconv.Itoa(int(port)))}
	pu, err := url.Parse(path)
	if err != nil || pu.Host != "" || pu.Scheme != "" {
		return nil, bad(AnnotationPath, "not a URL path")
	}
	u.Path, u.RawQuery = pu.Path, pu.RawQuery
	t.URL = u.String()

	fam, ok := a[AnnotationFamilies]
	if !ok || strings.TrimSpace(fam) == "" {
		return nil, bad(AnnotationFamilies, "missing: name the families to keep (an RE2 matched against the whole family name); nothing is kept until one is named")
	}
	// On its own first: wrapped unchecked, "a)|(b" would escape the anchors.
	if _, err = regexp.Compile(fam); err == nil {
		t.Families, err = regexp.Compile(`^(?:` + fam + `)$`)
	}
	if err != nil {
		return nil, bad(AnnotationFamilies, "not an RE2 regular expression: "+err.Error())
	}
	if v, ok := a[AnnotationInterval]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, bad(AnnotationInterval, "not a Go duration (500ms, 2s)")
		}
		if d < floor {
			return nil, bad(AnnotationInterval, fmt.Sprintf("below the floor of %s", floor))
		}
		t.Interval = d
	}
	return t, nil
}

// targetPort resolves gpu-agent.io/port: a number, a named TCP container
// port, or, left out, the pod's only TCP container port.
func targetPort(p PodInfo) (int32, error) {
	v, ok := p.Annotations[AnnotationPort]
	tcp := func(pt Port) bool { return pt.Protocol == "" || pt.Protocol == "TCP" }
	if !ok {
		var only []int32
		for _, pt := range p.Ports {
			if tcp(pt) {
				only = append(only, pt.Number)
			}
		}
		if len(only) == 1 {
			return only[0], nil
		}
		return 0, fmt.Errorf("missing, and the pod has %d TCP container ports, not one", len(only))
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > 65535 {
			return 0, errors.New("not a port number (1-65535)")
		}
		return int32(n), nil // #nosec G109 G115 -- 1-65535, checked above
	}
	for _, pt := range p.Ports {
		if pt.Name == v && tcp(pt) {
			return pt.Number, nil
		}
	}
	names := make([]string, 0, len(p.Ports))
	for _, pt := range p.Ports {
		if pt.Name != "" && tcp(pt) {
			names = append(names, pt.Name)
		}
	}
	sort.Strings(names)
	return 0, fmt.Errorf("no TCP container port of this name (named ports: %s)", strings.Join(names, ", "))
}
