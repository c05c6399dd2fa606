package cgroup

import "io/fs"

// NewResolverFS returns a Resolver reading <pid>/cgroup from fsys, a
// procfs that is not a directory: the simulated node's (sim's ProcFS), or
// a test's. NewResolver is NewResolverFS over os.DirFS(procfs).
func NewResolverFS(fsys fs.FS) *Resolver { return newResolverFS(fsys) }
