//go:build unix

package bench

import "syscall"

// selfCPU is this process's CPU seconds so far (user + system).
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// fileLimit is how many files this process may open (Go raises the soft
// limit to the hard one at start).
func fileLimit() int {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		return 1024
	}
	return int(min(rl.Cur, 1<<30))
}
