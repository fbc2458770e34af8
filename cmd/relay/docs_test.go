package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// keyPaths lists every YAML key of t as docs/CONFIGURATION.md's reference writes it: a.b, list[].c.
func keyPaths(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		if t.Kind() == reflect.Slice {
			if t.Elem().Kind() != reflect.Struct {
				break
			}
			prefix += "[]"
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		out = append(out, path)
		out = append(out, keyPaths(f.Type, path)...)
	}
	return out
}

// The configuration reference (docs/CONFIGURATION.md) names every key the config file accepts, so that it
// cannot fall behind the code.
func TestReadmeReferenceCoversEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../../docs/CONFIGURATION.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	_, ref, ok := strings.Cut(readme, "## Configuration reference")
	if !ok {
		t.Fatal("docs/CONFIGURATION.md has no Configuration reference section")
	}
	keys := keyPaths(reflect.TypeFor[fileConfig](), "")
	if len(keys) < 50 {
		t.Fatalf("found only %d keys: the walk is broken", len(keys))
	}
	for _, k := range keys {
		if !strings.Contains(ref, "`"+k+"`") {
			t.Errorf("docs/CONFIGURATION.md's reference does not describe `%s`", k)
		}
	}
}
