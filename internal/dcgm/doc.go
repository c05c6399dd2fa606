// Package dcgm reads DCGM's profiling fields (the DCGM_FI_PROF_* family:
// graphics engine, SM and tensor activity, DRAM activity, PCIe bytes) for
// every GPU, from an embedded host engine or a standalone nv-hostengine.
// It is the agent's only importer of go-dcgm (lib.go); the Source depends
// on the narrow library interface it declares, and publishes the latest
// values per GPU UUID for readers that never call DCGM.
//
// DCGM is optional and its failures are contained: a missing
// libdcgm.so.4, a host engine that refuses or goes away, a profiling
// module another tool holds, a call that never returns. Each is one log
// line on a change of state, gpu_agent_dcgm_up 0 and a count in
// gpu_agent_dcgm_errors_total{reason}; the Source reconnects with backoff
// and NVML's metrics carry on.
//
// The costs and failure modes of each call, as go-dcgm v1.4611.2 makes
// them (see /work/notes/dcgm-research.md for the file:line facts):
//
//   - Connect: dlopen("libdcgm.so.4") by soname, dcgmInit, then
//     dcgmStartEmbedded (loads the host engine's modules into this process:
//     seconds on a real node) or dcgmConnect_v2 (a socket connect; hangs
//     as long as the kernel lets a TCP connect hang). A missing library is
//     "libdcgm.so.4 not found".
//   - go-dcgm keeps one global connection and locks only Init and
//     Shutdown: every call here is serialised through one slot (caller),
//     so a reconnect never races a read.
//   - go-dcgm flattens most errors to strings ("... failed with error code
//     N", or the library's errorString text): status parses them back.
//   - A call the loaded library does not export kills the process (exit
//     127); the agent calls only the entry points the fake library in
//     test/internal/fakedcgm exports.
package dcgm
