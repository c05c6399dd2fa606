package testutil

import "syscall"

// groupAttr starts a process in a group of its own, killed if this
// process dies first.
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
