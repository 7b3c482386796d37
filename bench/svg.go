package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"strings"
)

// PlotRun is one run's steps, as plotted.
type PlotRun struct {
	Label string
	Steps []StepResult
}

type plotLine struct {
	name  string
	color string
	dash  bool
	ys    []float64 // by step; NaN: no point
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"}

// WriteSVG plots runs: deliveries per second by step, and latency
// percentiles by step (log scale). One run gets every percentile; several
// runs (herald, hub, naive) get p50 (dashed) and p99 each, so that they
// compare at a glance. Failed steps are marked with a cross.
func WriteSVG(w io.Writer, title string, runs []PlotRun) error {
	n := 0
	for _, r := range runs {
		n = max(n, len(r.Steps))
	}
	if n == 0 {
		return fmt.Errorf("nothing to plot: no steps")
	}
	xlabels := make([]string, n)
	for _, r := range runs {
		for i, s := range r.Steps {
			if xlabels[i] == "" {
				xlabels[i] = s.Rate
			}
		}
	}
	var thr, lat []plotLine
	fails := map[int][]int{} // run -> failed step indexes
	for ri, r := range runs {
		col := palette[ri%len(palette)]
		y := series(n, r.Steps, func(s StepResult) float64 { return s.DeliveredPerSec })
		thr = append(thr, plotLine{name: r.Label + " delivered/s", color: col, ys: y})
		for i, s := range r.Steps {
			if !s.Pass {
				fails[ri] = append(fails[ri], i)
			}
		}
		if len(runs) == 1 {
			due := series(n, r.Steps, func(s StepResult) float64 {
				if s.StepSeconds == 0 {
					return math.NaN()
				}
				return float64(s.Due) / s.StepSeconds
			})
			thr = append(thr, plotLine{name: "due at target rate", color: "#999999", dash: true, ys: due})
			pct := []struct {
				name string
				f    func(Latency) float64
			}{
				{"p50", func(l Latency) float64 { return l.P50 }},
				{"p90", func(l Latency) float64 { return l.P90 }},
				{"p99", func(l Latency) float64 { return l.P99 }},
				{"p99.9", func(l Latency) float64 { return l.P999 }},
				{"max", func(l Latency) float64 { return l.Max }},
			}
			for k, p := range pct {
				lat = append(lat, plotLine{name: p.name, color: palette[k%len(palette)], ys: series(n, r.Steps, func(s StepResult) float64 { return p.f(s.Latency) })})
			}
		} else {
			lat = append(lat,
				plotLine{name: r.Label + " p99", color: col, ys: series(n, r.Steps, func(s StepResult) float64 { return s.Latency.P99 })},
				plotLine{name: r.Label + " p50", color: col, dash: true, ys: series(n, r.Steps, func(s StepResult) float64 { return s.Latency.P50 })})
		}
	}
	bw := bufio.NewWriter(w)
	const W, H = 900, 760
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(bw, `<text x="%d" y="22" font-size="15" text-anchor="middle">%s</text>`+"\n", W/2, html.EscapeString(title))
	panel(bw, 70, 50, 620, 280, "deliveries per second", false, xlabels, thr, nil)
	failMarks := map[int][]int{}
	if len(runs) == 1 {
		failMarks = fails
	}
	panel(bw, 70, 410, 620, 280, "end-to-end latency, ms (log)", true, xlabels, lat, failMarks)
	fmt.Fprintf(bw, `<text x="%d" y="%d" text-anchor="middle">publications per second (step)</text>`+"\n", 70+310, H-20)
	fmt.Fprintln(bw, `</svg>`)
	return bw.Flush()
}

func series(n int, steps []StepResult, f func(StepResult) float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = math.NaN()
		if i < len(steps) {
			out[i] = f(steps[i])
		}
	}
	return out
}

func panel(w io.Writer, x0, y0, pw, ph int, title string, logY bool, xlabels []string, lines []plotLine, fails map[int][]int) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range lines {
		for _, y := range l.ys {
			if math.IsNaN(y) || (logY && y <= 0) {
				continue
			}
			lo, hi = math.Min(lo, y), math.Max(hi, y)
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0, 1
	}
	var ticks []float64
	if logY {
		lo = math.Pow(10, math.Floor(math.Log10(lo)))
		hi = math.Pow(10, math.Ceil(math.Log10(hi)))
		if hi <= lo {
			hi = lo * 10
		}
		for v := lo; v <= hi*1.0001; v *= 10 {
			ticks = append(ticks, v)
		}
	} else {
		lo = 0
		step := niceStep(hi / 5)
		hi = math.Ceil(hi/step) * step
		if hi == 0 {
			hi = 1
			step = 0.2
		}
		for v := 0.0; v <= hi*1.0001; v += step {
			ticks = append(ticks, v)
		}
	}
	yOf := func(v float64) float64 {
		if logY {
			return float64(y0+ph) - (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*float64(ph)
		}
		return float64(y0+ph) - (v-lo)/(hi-lo)*float64(ph)
	}
	n := len(xlabels)
	xOf := func(i int) float64 {
		if n == 1 {
			return float64(x0 + pw/2)
		}
		return float64(x0) + float64(i)*float64(pw)/float64(n-1)
	}
	fmt.Fprintf(w, `<text x="%d" y="%d" font-size="13">%s</text>`+"\n", x0, y0-8, html.EscapeString(title))
	fmt.Fprintf(w, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", x0, y0, pw, ph)
	for _, t := range ticks {
		y := yOf(t)
		fmt.Fprintf(w, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+pw, y)
		fmt.Fprintf(w, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-4, y+4, fmtTick(t))
	}
	for i, l := range xlabels {
		x := xOf(i)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", x, y0, x, y0+ph)
		fmt.Fprintf(w, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, y0+ph+15, html.EscapeString(l))
	}
	for _, l := range lines {
		var pts []string
		for i, y := range l.ys {
			if math.IsNaN(y) || (logY && y <= 0) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(i), yOf(y)))
		}
		dash := ""
		if l.dash {
			dash = ` stroke-dasharray="5,4"`
		}
		if len(pts) > 0 {
			fmt.Fprintf(w, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), l.color, dash)
			for _, p := range pts {
				xy := strings.Split(p, ",")
				fmt.Fprintf(w, `<circle cx="%s" cy="%s" r="2.5" fill="%s"/>`+"\n", xy[0], xy[1], l.color)
			}
		}
	}
	for _, idx := range fails {
		for _, i := range idx {
			x := xOf(i)
			fmt.Fprintf(w, `<text x="%.1f" y="%d" text-anchor="middle" fill="#d62728" font-weight="bold">✕</text>`+"\n", x, y0+14)
		}
	}
	// legend
	for k, l := range lines {
		y := y0 + 10 + k*17
		dash := ""
		if l.dash {
			dash = ` stroke-dasharray="5,4"`
		}
		fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", x0+pw+12, y, x0+pw+36, y, l.color, dash)
		fmt.Fprintf(w, `<text x="%d" y="%d">%s</text>`+"\n", x0+pw+40, y+4, html.EscapeString(l.name))
	}
	if fails != nil && len(fails) > 0 {
		fmt.Fprintf(w, `<text x="%d" y="%d" fill="#d62728">✕ step failed</text>`+"\n", x0+pw+12, y0+10+len(lines)*17+4)
	}
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	switch {
	case v >= 1e6:
		return trimFloat(v/1e6) + "M"
	case v >= 1e3:
		return trimFloat(v/1e3) + "k"
	default:
		return trimFloat(v)
	}
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// ReadSteps reads the step records (and the label) of a JSON lines file
// written with -json.
func ReadSteps(path string) (PlotRun, error) {
	f, err := os.Open(path)
	if err != nil {
		return PlotRun{}, err
	}
	defer f.Close()
	var run PlotRun
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var head struct {
			Type  string `json:"type"`
			Label string `json:"label"`
		}
		if json.Unmarshal(sc.Bytes(), &head) != nil {
			continue
		}
		switch head.Type {
		case "plan":
			run.Label = head.Label
		case "step":
			var s StepResult
			if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
				return run, fmt.Errorf("%s: %w", path, err)
			}
			run.Steps = append(run.Steps, s)
		}
	}
	if run.Label == "" {
		run.Label = path
	}
	return run, sc.Err()
}
