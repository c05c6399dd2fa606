package telemetry

import (
	"regexp"
	"testing"
)

// A FieldSet holds every field, those past the 32nd included (a uint32
// set would drop them: 1<<40 of a uint32 is 0).
func TestFieldSetHoldsEveryField(t *testing.T) {
	if NumFields <= 32 {
		t.Fatalf("%d fields: this test proves nothing past 32", NumFields)
	}
	for f := range NumFields {
		var s FieldSet
		if s = s.With(f); !s.Has(f) {
			t.Errorf("%s (%d) not in a set it was added to", f, f)
		}
		for g := range NumFields {
			if g != f && s.Has(g) {
				t.Errorf("adding %s also added %s", f, g)
			}
		}
		if s.Without(f) != 0 {
			t.Errorf("%s not removed", f)
		}
		if !AllFields.Has(f) {
			t.Errorf("AllFields lacks %s", f)
		}
		var r Reading
		r.Set(f, 1.5)
		if v, ok := r.Get(f); !ok || v != 1.5 || r.Has != s {
			t.Errorf("Reading of %s: %v %v, set %b", f, v, ok, r.Has)
		}
	}
	if AllFields.Has(NumFields) {
		t.Error("AllFields has a field past NumFields")
	}
}

// Every field has a distinct snake_case name: they are label values.
func TestFieldNames(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	seen := map[string]Field{}
	for f := range NumFields {
		n := f.String()
		if !snake.MatchString(n) {
			t.Errorf("field %d: name %q is not snake_case", f, n)
		}
		if g, dup := seen[n]; dup {
			t.Errorf("fields %d and %d are both %q", g, f, n)
		}
		seen[n] = f
	}
	if HealthFields&^SlowFields != 0 {
		t.Error("a health field is not a slow field")
	}
}
