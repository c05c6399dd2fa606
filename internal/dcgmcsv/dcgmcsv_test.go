package dcgmcsv

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []Field
	}{
		{"empty", "", nil},
		{"comments and blank lines", "# Format\n\n   # indented comment\n \t \n", nil},
		{"one of each", "DCGM_FI_DEV_GPU_UTIL, gauge, GPU utilization (in %).\n" +
			"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION,counter,Total energy (in mJ).\n" +
			"DCGM_FI_DRIVER_VERSION,        label, Driver Version\n", []Field{
			{"DCGM_FI_DEV_GPU_UTIL", TypeGauge, "GPU utilization (in %).", 1},
			{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", TypeCounter, "Total energy (in mJ).", 2},
			{"DCGM_FI_DRIVER_VERSION", TypeLabel, "Driver Version", 3},
		}},
		// default-counters.csv writes "DCGM_FI_DEV_DEC_UTIL ,".
		{"spaces and tabs around fields", "\n# c\n  DCGM_FI_DEV_DEC_UTIL ,\tGauge , Decoder utilization (in %). \n", []Field{
			{"DCGM_FI_DEV_DEC_UTIL", TypeGauge, "Decoder utilization (in %).", 3},
		}},
		{"quoted help with a comma", `DCGM_FI_DEV_FB_USED, gauge, "Framebuffer used, in MiB."` + "\n", []Field{
			{"DCGM_FI_DEV_FB_USED", TypeGauge, "Framebuffer used, in MiB.", 1},
		}},
		{"a field twice is kept once", "DCGM_FI_DEV_GPU_UTIL, gauge, a\nDCGM_FI_DEV_GPU_UTIL, gauge, b\n", []Field{
			{"DCGM_FI_DEV_GPU_UTIL", TypeGauge, "a", 1},
		}},
		{"no final newline, CRLF", "DCGM_EXP_XID_ERRORS_COUNT, counter, xids\r\nDCGM_FI_DEV_SM_CLOCK, gauge, clock", []Field{
			{"DCGM_EXP_XID_ERRORS_COUNT", TypeCounter, "xids", 1},
			{"DCGM_FI_DEV_SM_CLOCK", TypeGauge, "clock", 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tc.in), "f.csv")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"# c\nDCGM_FI_DEV_GPU_UTIL, gauge\n", "f.csv:2: 2 fields"},
		{"DCGM_FI_DEV_GPU_UTIL, gauge, GPU utilization, in %\n", "f.csv:1: 4 fields"},
		{"\n\nDCGM_FI_DEV_GPU_UTIL, meter, x\n", `f.csv:3: type "meter" of DCGM_FI_DEV_GPU_UTIL`},
		{"dcgm_fi_dev_gpu_util, gauge, x\n", `f.csv:1: field name "dcgm_fi_dev_gpu_util"`},
		{"GPU_UTIL, gauge, x\n", `f.csv:1: field name "GPU_UTIL"`},
		{"DCGM_FI_DEV_GPU_UTIL, gauge, x\nDCGM_FI_DEV_SM_CLOCK, gauge, \"unterminated\n", "f.csv:2:"},
	} {
		_, err := Parse(strings.NewReader(tc.in), "f.csv")
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to start with %q", tc.in, err, tc.want)
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v does not wrap ErrMalformed", tc.in, err)
		}
		var le *LineError
		if !errors.As(err, &le) || le.File != "f.csv" {
			t.Errorf("%q: %v is not a *LineError of f.csv", tc.in, err)
		}
	}
}

// dcgm-exporter's shipped lists parse, with the fields the agent relies on.
func TestShippedFiles(t *testing.T) {
	for _, file := range []string{"../../deploy/dcgm-exporter/default-counters.csv", "../../deploy/dcgm-exporter/dcp-metrics-included.csv"} {
		fields, err := ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]Field{}
		for _, f := range fields {
			byName[f.Name] = f
		}
		for name, typ := range map[string]Type{
			"DCGM_FI_DEV_GPU_UTIL": TypeGauge, "DCGM_FI_DEV_FB_USED": TypeGauge, "DCGM_FI_DEV_XID_ERRORS": TypeGauge,
			"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": TypeCounter, "DCGM_FI_DRIVER_VERSION": TypeLabel,
		} {
			if f, ok := byName[name]; !ok || f.Type != typ {
				t.Errorf("%s: %s is %+v, want type %s", file, name, f, typ)
			}
		}
		if len(fields) < 20 {
			t.Errorf("%s: %d fields", file, len(fields))
		}
	}
	if _, err := ReadFile("testdata/nonexistent.csv"); err == nil || errors.Is(err, ErrMalformed) {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"# c\nDCGM_FI_DEV_GPU_UTIL, gauge, GPU utilization (in %).\n",
		"DCGM_FI_DRIVER_VERSION, label, Driver Version\r\n",
		`DCGM_FI_DEV_FB_USED, gauge, "a, b"`,
		"DCGM_FI_DEV_GPU_UTIL, gauge\n",
		"\"\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fields, err := Parse(strings.NewReader(in), "fuzz.csv")
		if err != nil {
			var le *LineError
			if !errors.As(err, &le) || le.Line < 1 {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, fl := range fields {
			if !validName(fl.Name) || !fl.Type.valid() || fl.Line < 1 || seen[fl.Name] {
				t.Fatalf("bad field %+v from %q", fl, in)
			}
			seen[fl.Name] = true
		}
	})
}

// A path that is not a regular file (a device, a directory) or a file
// past the size bound is refused, not read forever.
func TestReadFileRefusesWhatIsNotAList(t *testing.T) {
	big := filepath.Join(t.TempDir(), "big.csv")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# comment\n"), MaxFileSize/10+1), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dev/zero", t.TempDir(), big} {
		if _, err := ReadFile(p); err == nil {
			t.Errorf("ReadFile(%s) succeeded", p)
		}
	}
}
