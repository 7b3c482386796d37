package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestDescribeBuild(t *testing.T) {
	t.Parallel()
	const sha = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(modified string) *debug.BuildInfo {
		info := &debug.BuildInfo{Main: debug.Module{Path: "github.com/heraldhq/herald", Version: "(devel)"}}
		info.Settings = []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: sha}}
		if modified != "" {
			info.Settings = append(info.Settings, debug.BuildSetting{Key: "vcs.modified", Value: modified})
		}
		return info
	}
	module := func(v string) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Path: "github.com/heraldhq/herald", Version: v}}
	}
	pseudo := "v0.0.0-20260101120000-0123456789ab"
	withVersion := func(info *debug.BuildInfo, v string) *debug.BuildInfo { info.Main.Version = v; return info }
	for _, tc := range []struct {
		name, ldVersion, ldCommit string
		info                      *debug.BuildInfo
		want                      string
	}{
		{"no build info", "", "", nil, "(devel) go1.x linux/amd64"},
		{"go install @version", "", "", module("v1.4.0"), "v1.4.0 go1.x linux/amd64"},
		{"clone, clean", "", "", vcs("false"), "(devel) commit 0123456789ab go1.x linux/amd64"},
		{"clone, changed", "", "", vcs("true"), "(devel) commit 0123456789ab-dirty go1.x linux/amd64"},
		{"pseudo-version names the commit", "", "", withVersion(vcs("false"), pseudo), pseudo + " go1.x linux/amd64"},
		{"pseudo-version, changed", "", "", withVersion(vcs("true"), pseudo+"+dirty"), pseudo + "+dirty commit 0123456789ab-dirty go1.x linux/amd64"},
		{"release script", "v1.2.3", sha, module("(devel)"), "v1.2.3 commit 0123456789ab go1.x linux/amd64"},
		{"release script, changed tree", "v1.2.3", sha + "-dirty", nil, "v1.2.3 commit 0123456789ab-dirty go1.x linux/amd64"},
		{"-ldflags version wins over the module's", "v1.2.3", "", withVersion(vcs("false"), pseudo), "v1.2.3 commit 0123456789ab go1.x linux/amd64"},
		{"the build info's commit wins over -ldflags'", "v1.2.3", "fedcba9876543210", vcs("false"), "v1.2.3 commit 0123456789ab go1.x linux/amd64"},
		{"short -ldflags commit", "", "abc1234", nil, "(devel) commit abc1234 go1.x linux/amd64"},
	} {
		if got := describeBuild(tc.ldVersion, tc.ldCommit, tc.info, "go1.x", "linux/amd64"); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestVersionStamped builds the binary with the version and commit set by
// -ldflags, as scripts/release.sh stamps them, and runs `herald version`: a
// renamed variable would leave the stamp silently out.
func TestVersionStamped(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "herald")
	// -buildvcs=false: the build info then records no commit, whatever the
	// checkout, so the one shown is the -ldflags one.
	build := exec.CommandContext(ctx, "go", "build", "-buildvcs=false",
		"-ldflags", "-X main.version=v9.8.7-test -X main.commit=fedcba9876543210fedc-dirty", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "herald v9.8.7-test commit fedcba987654-dirty " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	for _, arg := range []string{"version", "--version", "-version"} {
		out, err := exec.CommandContext(ctx, bin, arg).Output()
		if err != nil {
			t.Fatalf("herald %s: %v", arg, err)
		}
		if string(out) != want {
			t.Errorf("herald %s printed %q, want %q", arg, out, want)
		}
	}
}
