package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// version and commit describe a release build. scripts/release.sh sets
// them:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=<sha>[-dirty]" ./cmd/herald
//
// Left empty, the module version and the commit come from the build info
// that the go command records (vcs.revision and vcs.modified, in a git
// clone). commit is the fallback for builds where the go command records
// no commit: a git worktree, -buildvcs=false, a source tree without .git.
var version, commit string

// versionString describes this build on one line, for `herald version`:
//
//	v1.2.3 commit 0123456789ab go1.26.0 linux/amd64
//	(devel) commit 0123456789ab-dirty go1.26.0 darwin/arm64
//
// The version is -ldflags' main.version, else the module's (a pseudo-version
// such as v0.0.0-20260101120000-0123456789ab when built in a clone), else
// "(devel)". The commit is the first 12 hex digits of the revision, with
// "-dirty" when the tree had changes; it is left out when unknown, and when
// a clean pseudo-version already names it.
func versionString() string {
	info, _ := debug.ReadBuildInfo()
	return describeBuild(version, commit, info, runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
}

// describeBuild is versionString with its inputs as parameters, for tests;
// info may be nil (a binary built without module support).
func describeBuild(ldVersion, ldCommit string, info *debug.BuildInfo, goVersion, platform string) string {
	v := ldVersion
	if v == "" && info != nil {
		v = info.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	rev, dirty := buildCommit(ldCommit, info)
	short := rev[:min(len(rev), 12)]
	if short != "" && (dirty || !strings.Contains(v, short)) {
		v += " commit " + short
		if dirty {
			v += "-dirty"
		}
	}
	return fmt.Sprintf("%s %s %s", v, goVersion, platform)
}

// buildCommit returns the revision and whether the tree was modified: from
// the build info when the go command recorded them (it knows best), else
// from ldCommit ("<sha>" or "<sha>-dirty").
func buildCommit(ldCommit string, info *debug.BuildInfo) (rev string, dirty bool) {
	if info != nil {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if rev == "" {
		rev, dirty = strings.CutSuffix(ldCommit, "-dirty")
	}
	return rev, dirty
}
