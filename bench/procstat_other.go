//go:build !unix

package bench

// selfCPU is unknown here: the generator's CPU is reported as 0.
func selfCPU() float64 { return 0 }

// fileLimit is a guess where there is no RLIMIT_NOFILE.
func fileLimit() int { return 8192 }
