package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// resources is a sample of a process's resource use, or the sum over
// several servers' processes.
type resources struct {
	ok     bool
	cpuSec float64 // user + system CPU seconds so far
	rss    int64   // resident set, bytes
	// Each server's CPU seconds and RSS, in the order given, when there
	// are several.
	cpuEach []float64
	rssEach []int64
}

// serverProbe samples the servers' CPU and RSS, from /proc/PID or from a
// Prometheus /metrics endpoint (process_cpu_seconds_total and
// process_resident_memory_bytes), summed over the servers. With neither it
// samples nothing.
type serverProbe struct {
	pids        []int
	metricsURLs []string
	client      *http.Client
}

func newServerProbe(cfg *Config) serverProbe {
	p := serverProbe{pids: cfg.pids(), client: &http.Client{}}
	if len(p.pids) == 0 {
		p.metricsURLs = splitList(cfg.MetricsURL)
	}
	return p
}

func (p *serverProbe) enabled() bool { return len(p.pids) > 0 || len(p.metricsURLs) > 0 }

// servers is how many servers the probe samples.
func (p *serverProbe) servers() int { return max(len(p.pids), len(p.metricsURLs)) }

func (p *serverProbe) sample(ctx context.Context) (resources, error) {
	n := p.servers()
	if n == 0 {
		return resources{}, nil
	}
	var sum resources
	for i := range n {
		var r resources
		var err error
		if len(p.pids) > 0 {
			r, err = procResources(p.pids[i])
		} else {
			r, err = p.scrape(ctx, p.metricsURLs[i])
		}
		if err != nil {
			return resources{}, err
		}
		sum.cpuSec += r.cpuSec
		sum.rss += r.rss
		if n > 1 {
			sum.cpuEach = append(sum.cpuEach, r.cpuSec)
			sum.rssEach = append(sum.rssEach, r.rss)
		}
	}
	sum.ok = true
	return sum, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

func procResources(pid int) (resources, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return resources{}, err
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return resources{}, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return resources{}, errors.New("short /proc/PID/stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return resources{}, errors.New("malformed CPU times in /proc/PID/stat")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return resources{}, err
	}
	var rss int64
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return resources{}, errors.New("malformed VmRSS in /proc/PID/status")
			}
			rss = kb << 10
		}
	}
	return resources{ok: true, cpuSec: float64(ut+st) / clockTicks, rss: rss}, nil
}

func (p *serverProbe) scrape(ctx context.Context, metricsURL string) (resources, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return resources{}, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return resources{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resources{}, fmt.Errorf("metrics: %s", resp.Status)
	}
	var r resources
	var found int
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		switch name {
		case "process_cpu_seconds_total":
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				r.cpuSec = v
				found++
			}
		case "process_resident_memory_bytes":
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				r.rss = int64(v)
				found++
			}
		}
	}
	if found < 2 {
		return resources{}, errors.New("metrics: no process_cpu_seconds_total or process_resident_memory_bytes")
	}
	r.ok = true
	return r, sc.Err()
}

// ephemeralPorts is the size of the local port range one source address
// can use for outgoing connections.
func ephemeralPorts() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 28000
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 28000
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 28000
	}
	return hi - lo + 1
}
