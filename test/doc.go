// Package test holds the whole-binary tests: each test builds nothing
// itself but runs the agent that TestMain built once, as a real process on
// a free loopback port, and talks to it only as Prometheus, a kubelet or an
// operator would (HTTP, a unix socket, signals, exit codes).
//
//	go test -race -count=1 ./test/                 # all of them
//	go test ./test -run Golden -update             # rewrite testdata/metrics.golden
//
// The tests that need promtool or prometheus skip without them, except
// under CI=true, where a missing tool fails the run.
package test
