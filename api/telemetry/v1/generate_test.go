package telemetryv1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// protocVersionLine is the one line of generated code that names the
// protoc binary's version; it carries no meaning, so a contributor whose
// protoc is a patch release apart is not told the code is stale.
var protocVersionLine = regexp.MustCompile(`(?m)^// (- )?\s*protoc\s+v[0-9.]+$`)

// TestGeneratedCodeIsCurrent regenerates the API's Go code the way
// `make generate` does and fails when the committed files differ, so the
// .proto and the code that serves it cannot drift apart.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		need(t, "protoc not on PATH (apt-get install protobuf-compiler libprotobuf-dev)")
	}
	if _, err := os.Stat("/usr/include/google/protobuf/duration.proto"); err != nil {
		need(t, "the well-known protos are missing (apt-get install libprotobuf-dev)")
	}
	plugin := func(name string) string {
		out, err := exec.Command("go", "tool", "-n", name).Output()
		if err != nil {
			t.Fatalf("go tool -n %s: %v (is it in go.mod's tool block?)", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	out := t.TempDir()
	cmd := exec.Command(protoc, "-I", "../..", "-I", "/usr/include",
		"--plugin=protoc-gen-go="+plugin("protoc-gen-go"),
		"--plugin=protoc-gen-go-grpc="+plugin("protoc-gen-go-grpc"),
		"--go_out="+out, "--go_opt=paths=source_relative",
		"--go-grpc_out="+out, "--go-grpc_opt=paths=source_relative",
		"telemetry/v1/telemetry.proto")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, b)
	}
	for _, name := range []string{"telemetry.pb.go", "telemetry_grpc.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, "telemetry", "v1", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(protocVersionLine.ReplaceAll(got, nil), protocVersionLine.ReplaceAll(want, nil)) {
			t.Errorf("%s is stale: run `make generate` and commit the result", name)
		}
	}
}

// need skips on a laptop without the tool but fails under CI, where a
// missing tool must never pass for a green run.
func need(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}
