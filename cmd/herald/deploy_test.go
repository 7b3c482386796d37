package main

// Checks of the deployment files in deploy/: what a Go test can run here.
// The files are what operators copy, so each is read as the tool that uses
// it would read it (herald's own config loader, nginx -t, systemd-analyze
// verify), and the timeouts they set are checked against herald's drain:
// a supervisor that kills a node before drain_window + shutdown_timeout, or
// a proxy that cuts a connection quieter than ping_interval + pong_timeout,
// breaks what the drain and the heartbeats promise. The nginx files are also
// run for real, in front of two nodes with a browser, in web/e2e/deploy.test.mjs.

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const deployDir = "../../deploy"

// needTool returns the path of a program the test needs. It skips when the
// program is missing, except in CI (CI=true), where .ci/run installs it and
// a missing one is a failure.
func needTool(t *testing.T, path, pkg string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing in CI (apt-get install %s; .ci/run should have): %v", path, pkg, err)
		}
		t.Skipf("%s is missing (apt-get install %s): %v", path, pkg, err)
	}
	return path
}

func readDeployFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// loadDeployConfig parses a herald.yaml as `herald serve --config` does.
func loadDeployConfig(t *testing.T, path string) Config {
	t.Helper()
	cfg, err := parseServeConfig([]string{"--config", path}, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cfg
}

// stopBudget is how long a node may take to stop: the drain, then the
// shutdown. Heartbeat is the longest a healthy connection stays silent.
func stopBudget(c Config) time.Duration { return c.drainWindow() + c.ShutdownTimeout }
func heartbeat(c Config) time.Duration  { return c.PingInterval + c.PongTimeout }

func TestDeployConfigs(t *testing.T) {
	t.Parallel()
	shared := loadDeployConfig(t, filepath.Join(deployDir, "herald.yaml"))
	if shared.Broker != "redis" || len(shared.Namespaces) == 0 {
		t.Errorf("deploy/herald.yaml: broker %q, %d namespaces; want redis and namespaces with history", shared.Broker, len(shared.Namespaces))
	}

	// Kubernetes: the ConfigMap's herald.yaml, and the pod's timings.
	var k8s struct {
		Kind string
		Data map[string]string
		Spec struct {
			Template struct {
				Spec struct {
					TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
					Containers                    []struct {
						ReadinessProbe struct {
							HTTPGet struct{ Path string } `yaml:"httpGet"`
						} `yaml:"readinessProbe"`
						LivenessProbe struct {
							HTTPGet struct{ Path string } `yaml:"httpGet"`
						} `yaml:"livenessProbe"`
						Lifecycle struct {
							PreStop struct{ Sleep struct{ Seconds int } } `yaml:"preStop"`
						}
					}
				}
			}
		}
	}
	kinds := map[string]bool{}
	var k8sCfg Config
	var grace, preStop int
	dec := yaml.NewDecoder(strings.NewReader(readDeployFile(t, "k8s/herald.yaml")))
	for {
		k8s.Kind, k8s.Data = "", nil
		if err := dec.Decode(&k8s); err != nil {
			break
		}
		kinds[k8s.Kind] = true
		switch k8s.Kind {
		case "ConfigMap":
			path := filepath.Join(t.TempDir(), "herald.yaml")
			if err := os.WriteFile(path, []byte(k8s.Data["herald.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			k8sCfg = loadDeployConfig(t, path)
		case "Deployment":
			pod := k8s.Spec.Template.Spec
			if len(pod.Containers) != 1 {
				t.Fatalf("k8s Deployment: %d containers, want 1", len(pod.Containers))
			}
			c := pod.Containers[0]
			if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("k8s probes: readiness %q, liveness %q; want /readyz and /healthz",
					c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
			}
			grace, preStop = pod.TerminationGracePeriodSeconds, c.Lifecycle.PreStop.Sleep.Seconds
		}
	}
	for _, kind := range []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} {
		if !kinds[kind] {
			t.Errorf("k8s/herald.yaml has no %s", kind)
		}
	}
	if need := time.Duration(preStop)*time.Second + stopBudget(k8sCfg); time.Duration(grace)*time.Second <= need {
		t.Errorf("k8s terminationGracePeriodSeconds %d <= preStop %ds + drain_window + shutdown_timeout (%s)", grace, preStop, need)
	}
	if preStop <= 0 {
		t.Errorf("k8s preStop sleeps %ds: the drain would begin before the endpoints are updated", preStop)
	}

	// systemd: TimeoutStopSec outlasts a stop; the limits and hardening are there.
	unit := readDeployFile(t, "systemd/herald.service")
	stop := durationAfter(t, unit, `(?m)^TimeoutStopSec=(\S+)$`)
	if stop <= stopBudget(shared) {
		t.Errorf("systemd TimeoutStopSec=%s <= drain_window + shutdown_timeout (%s)", stop, stopBudget(shared))
	}
	for _, line := range []string{"ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "ProtectSystem=strict", "LimitNOFILE="} {
		if !strings.Contains(unit, line) {
			t.Errorf("systemd unit lacks %q", line)
		}
	}

	// compose: docker stop's wait outlasts a stop.
	if grace := durationAfter(t, readDeployFile(t, "compose.yaml"), `(?m)^\s*stop_grace_period: (\S+)$`); grace <= stopBudget(shared) {
		t.Errorf("compose stop_grace_period %s <= drain_window + shutdown_timeout (%s)", grace, stopBudget(shared))
	}

	// nginx: its timeouts outlast the heartbeat, or it cuts live connections.
	for _, m := range regexp.MustCompile(`(?m)^\s*proxy_(read|send)_timeout (\S+);`).FindAllStringSubmatch(readDeployFile(t, "nginx/herald-locations.conf"), -1) {
		d, err := time.ParseDuration(m[2])
		if err != nil {
			t.Fatalf("nginx proxy_%s_timeout %q: %v", m[1], m[2], err)
		}
		if d <= heartbeat(shared) {
			t.Errorf("nginx proxy_%s_timeout %s <= ping_interval + pong_timeout (%s)", m[1], d, heartbeat(shared))
		}
	}

	// The Dockerfile builds as the release build does, and checks health on /readyz.
	df := readDeployFile(t, "Dockerfile")
	for _, s := range []string{"CGO_ENABLED=0", "-trimpath", "FROM scratch", "USER 65532", `"probe"`, "/readyz"} {
		if !strings.Contains(df, s) {
			t.Errorf("Dockerfile lacks %q", s)
		}
	}
}

// durationAfter finds re's first submatch in s, a duration ("30s") or a
// number of seconds.
func durationAfter(t *testing.T, s, re string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no match for %s", re)
	}
	if n, err := strconv.Atoi(m[1]); err == nil {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("%s: %v", m[0], err)
	}
	return d
}

// TestDeploySystemdUnit: systemd-analyze verify reads the unit as systemd
// would, and prints a line for each unknown or malformed setting.
func TestDeploySystemdUnit(t *testing.T) {
	t.Parallel()
	analyze := needTool(t, "/usr/bin/systemd-analyze", "systemd")
	// verify checks that ExecStart's program exists: point it at one that does.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(readDeployFile(t, "systemd/herald.service"), "/usr/local/bin/herald", self)
	path := filepath.Join(t.TempDir(), "herald.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDeployNginxConfig: nginx -t accepts the compose file's nginx.conf
// with its includes, the node names replaced by addresses (nginx resolves
// upstream names when it reads the file).
func TestDeployNginxConfig(t *testing.T) {
	t.Parallel()
	nginx := needTool(t, "/usr/sbin/nginx", "nginx")
	dir := t.TempDir()
	abs, err := filepath.Abs(filepath.Join(deployDir, "nginx"))
	if err != nil {
		t.Fatal(err)
	}
	conf := readDeployFile(t, "nginx/nginx.conf")
	conf = strings.ReplaceAll(conf, "/etc/nginx/herald/", abs+"/")
	conf = regexp.MustCompile(`herald(\d):8080`).ReplaceAllString(conf, "127.0.0.$1:8080")
	// nginx -t opens the logs and the pid file: keep them in dir.
	conf = "pid " + dir + "/nginx.pid;\n" + conf
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nginx, "-t", "-q", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", path).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Fatalf("nginx -t: %v\n%s%s", err, out, log)
	}
}
