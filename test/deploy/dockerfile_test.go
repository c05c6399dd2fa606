package deploy

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/gpu-telemetry/agent/internal/agent"
	"github.com/gpu-telemetry/agent/internal/scaler"
)

// goBuild is what a go build command line says.
type goBuild struct {
	cgo     string            // CGO_ENABLED
	pkg     string            // ./cmd/...
	stamps  map[string]string // -X symbol -> build variable (VERSION, REVISION)
	trim    bool              // -trimpath
	outPath string
}

var (
	xFlag    = regexp.MustCompile(`-X\s+(\S+)=(\S+)`)
	buildVar = regexp.MustCompile(`^\$[({]([A-Z_]+)[)}]$`)
	cgoFlag  = regexp.MustCompile(`CGO_ENABLED=([01])`)
	pkgArg   = regexp.MustCompile(`(\./cmd/[a-z-]+)\s*$`)
	outFlag  = regexp.MustCompile(`-o\s+(\S+)`)
)

// parseGoBuild reads a go build command line, with the flags that
// variables (vars) stand for expanded.
func parseGoBuild(t *testing.T, line string, vars map[string]string) goBuild {
	t.Helper()
	// Expand the Makefile's variables (LDFLAGS holds $(PKG)), but not the
	// version stamps' own, which stay the names of what they stand for.
	for range 5 {
		for k, v := range vars {
			if k != "VERSION" && k != "REVISION" {
				line = strings.ReplaceAll(line, "$("+k+")", v)
			}
		}
	}
	b := goBuild{stamps: map[string]string{}, trim: strings.Contains(line, "-trimpath")}
	if m := cgoFlag.FindStringSubmatch(line); m != nil {
		b.cgo = m[1]
	}
	if m := pkgArg.FindStringSubmatch(line); m != nil {
		b.pkg = m[1]
	}
	if m := outFlag.FindStringSubmatch(line); m != nil {
		b.outPath = m[1]
	}
	for _, m := range xFlag.FindAllStringSubmatch(line, -1) {
		v := strings.Trim(m[2], `"'`)
		if bv := buildVar.FindStringSubmatch(v); bv != nil {
			v = bv[1]
		}
		b.stamps[m[1]] = v
	}
	return b
}

// makefileBuilds reads the Makefile's go build lines of its build and
// build-scaler targets, with its variables and exported CGO_ENABLED.
func makefileBuilds(t *testing.T) map[string]goBuild {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repo, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	exportedCGO := ""
	target := ""
	builds := map[string]goBuild{}
	def := regexp.MustCompile(`^(?:export\s+)?([A-Z_]+)\s*[:?]?=\s*(.*)$`)
	for _, line := range strings.Split(string(raw), "\n") {
		if m := def.FindStringSubmatch(line); m != nil {
			vars[m[1]] = m[2]
			if m[1] == "CGO_ENABLED" && strings.HasPrefix(line, "export") {
				exportedCGO = m[2]
			}
			continue
		}
		if i := strings.Index(line, ":"); i > 0 && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "#") {
			target = line[:i]
			continue
		}
		if strings.HasPrefix(line, "\t") && strings.Contains(line, "go build") && (target == "build" || target == "build-scaler") {
			b := parseGoBuild(t, line, vars)
			if b.cgo == "" {
				b.cgo = exportedCGO
			}
			builds[b.pkg] = b
		}
	}
	return builds
}

// The Dockerfile: its stages, its go build lines against the Makefile's,
// its users, entrypoints, labels and ports against the binaries' flags.
func TestDockerfile(t *testing.T) {
	f, err := os.Open(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]instructions.Stage{}
	var names []string
	for _, s := range stages {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	if len(stages) == 0 || stages[len(stages)-1].Name != "agent" {
		t.Fatalf("stages %v: the last (default) target must be the agent", names)
	}
	if _, ok := byName["scaler"]; !ok {
		t.Fatalf("stages %v: no scaler target", names)
	}

	mk := makefileBuilds(t)
	if len(mk) != 2 {
		t.Fatalf("Makefile go build lines: %+v, want the agent's and the scaler's", mk)
	}
	agentFlags, _ := agent.ParseFlags(nil, func(string) string { return "" }, io.Discard)
	scalerFlags, _ := scaler.ParseFlags(nil, io.Discard)
	for _, want := range []struct {
		target, binary, pkg, base, user string
		ports                           []string
	}{
		{"agent", "/usr/bin/gpu-agent", "./cmd/agent", "gcr.io/distroless/base-debian12:nonroot", "65532:65532",
			[]string{port(t, agentFlags.ListenAddress), port(t, agentFlags.GRPCListenAddress)}},
		{"scaler", "/usr/bin/gpu-scaler", "./cmd/scaler", "gcr.io/distroless/static-debian12:nonroot", "65532:65532",
			[]string{port(t, scalerFlags.GRPCListenAddress), port(t, scalerFlags.WebListenAddress)}},
	} {
		st := byName[want.target]
		if st.BaseName != want.base {
			t.Errorf("%s: FROM %s, want %s", want.target, st.BaseName, want.base)
		}
		var user, entry string
		var ports []string
		var copied string
		labels := map[string]string{}
		for _, c := range st.Commands {
			switch c := c.(type) {
			case *instructions.UserCommand:
				user = c.User
			case *instructions.EntrypointCommand:
				if c.PrependShell {
					t.Errorf("%s: ENTRYPOINT in shell form: signals would go to the shell, not the binary", want.target)
				}
				entry = strings.Join(c.CmdLine, " ")
			case *instructions.ExposeCommand:
				ports = append(ports, c.Ports...)
			case *instructions.LabelCommand:
				for _, kv := range c.Labels {
					labels[kv.Key] = strings.Trim(kv.Value, `"`)
				}
			case *instructions.CopyCommand:
				if c.From != "" && c.DestPath == want.binary {
					copied = c.From
				}
			case *instructions.RunCommand:
				t.Errorf("%s: RUN in the runtime stage (%v): it has no shell", want.target, c.CmdLine)
			}
		}
		if user != want.user {
			t.Errorf("%s: USER %q, want %s (nonroot)", want.target, user, want.user)
		}
		if entry != want.binary {
			t.Errorf("%s: ENTRYPOINT %q, want [%q]", want.target, entry, want.binary)
		}
		if !slices.Equal(ports, want.ports) {
			t.Errorf("%s: EXPOSE %v; the flags' default ports are %v", want.target, ports, want.ports)
		}
		for _, l := range []string{"title", "source", "version", "revision", "description"} {
			if labels["org.opencontainers.image."+l] == "" {
				t.Errorf("%s: no OCI label org.opencontainers.image.%s", want.target, l)
			}
		}
		if labels["org.opencontainers.image.version"] != "${VERSION}" || labels["org.opencontainers.image.revision"] != "${REVISION}" {
			t.Errorf("%s: version labels %q %q, want the build args", want.target, labels["org.opencontainers.image.version"], labels["org.opencontainers.image.revision"])
		}

		// The build stage that made the binary runs the Makefile's build.
		bs, ok := byName[copied]
		if !ok {
			t.Errorf("%s: %s not copied from a build stage", want.target, want.binary)
			continue
		}
		var run string
		args := map[string]bool{}
		for _, c := range bs.Commands {
			switch c := c.(type) {
			case *instructions.RunCommand:
				if cl := strings.Join(c.CmdLine, " "); strings.Contains(cl, "go build") {
					run = cl
				}
			case *instructions.ArgCommand:
				for _, a := range c.Args {
					args[a.Key] = true
				}
			}
		}
		got := parseGoBuild(t, run, nil)
		m := mk[want.pkg]
		if got.pkg != want.pkg || m.pkg != want.pkg {
			t.Errorf("%s: builds %q, the Makefile %q, want %s", copied, got.pkg, m.pkg, want.pkg)
		}
		if got.cgo != m.cgo {
			t.Errorf("%s: CGO_ENABLED=%s, the Makefile's %s", copied, got.cgo, m.cgo)
		}
		if !got.trim {
			t.Errorf("%s: no -trimpath", copied)
		}
		if len(got.stamps) == 0 || !mapsEqual(got.stamps, m.stamps) {
			t.Errorf("%s: stamps %v, the Makefile's %v", copied, got.stamps, m.stamps)
		}
		for sym, v := range got.stamps {
			if !args[v] {
				t.Errorf("%s: -X %s=${%s}, but no ARG %s in the stage", copied, sym, v, v)
			}
		}
		if got.outPath != "/out/"+filepath.Base(want.binary) {
			t.Errorf("%s: -o %s", copied, got.outPath)
		}
	}
	// The symbols the builds stamp exist (the build would silently ignore
	// a misspelt one).
	for _, b := range mk {
		for sym := range b.stamps {
			switch sym {
			case "github.com/gpu-telemetry/agent/internal/agent.Version", "github.com/gpu-telemetry/agent/internal/agent.Revision",
				"github.com/gpu-telemetry/agent/internal/scaler.Version", "github.com/gpu-telemetry/agent/internal/scaler.Revision":
			default:
				t.Errorf("the Makefile stamps %s, which is none of the version variables", sym)
			}
		}
	}
	_, _, _, _ = agent.Version, agent.Revision, scaler.Version, scaler.Revision
	if mk["./cmd/agent"].cgo != "1" || mk["./cmd/scaler"].cgo != "0" {
		t.Errorf("Makefile: the agent needs cgo (go-nvml), the scaler none: %+v", mk)
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	return strconv.Itoa(int(listenPort(t, "flag", addr)))
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
