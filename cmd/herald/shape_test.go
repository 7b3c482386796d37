package main

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// screenLines is how long a function of cmd/herald may be, from its func
// line to its closing brace: what one screen shows whole.
const screenLines = 50

// longFunctions are the functions allowed past a screen, each with the
// reason written down. None needs one today.
var longFunctions = map[string]string{}

// cmd/herald is wiring and configuration: no function longer than a screen
// without a written reason (issue 15), so that each reads at a glance.
func TestFunctionsFitAScreen(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			lines := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
			if _, why := longFunctions[fn.Name.Name]; lines > screenLines && !why {
				t.Errorf("%s: %s is %d lines, more than a screen (%d): split it, or write why in longFunctions",
					fset.Position(fn.Pos()), fn.Name.Name, lines, screenLines)
			}
		}
	}
}

// The herald binary links no part of the load generator (bench is its own
// program, herald-bench) and no WebSocket library: the handshake and the
// frames are Herald's own (accept.go, internal/wsframe).
func TestBinaryLinksNoBenchNorWebSocketLibrary(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || deps[len(deps)-1] != "github.com/heraldhq/herald/cmd/herald" {
		t.Fatalf("go list -deps printed no dependency list: %q", out)
	}
	for _, p := range deps {
		if p == "github.com/heraldhq/herald/bench" || strings.HasPrefix(p, "github.com/heraldhq/herald/bench/") ||
			strings.HasPrefix(p, "github.com/gorilla/websocket") {
			t.Errorf("the herald binary links %s", p)
		}
	}
}
