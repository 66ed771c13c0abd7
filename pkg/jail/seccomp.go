package jail

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// denySpawn installs a seccomp filter on every thread that answers EPERM
// to execve, execveat, fork, vfork and clone without CLONE_THREAD, and
// ENOSYS to clone3 (whose flags a classic filter cannot read; libc then
// falls back to clone). It is what QEMU's -sandbox spawn=deny denies, for
// the probes, which cannot run under QEMU's own filter.
func denySpawn() error {
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
		// offsets in struct seccomp_data
		offNr   = 0
		offArch = 4
		offArg0 = 16
	)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	enosys := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS))
	prog := []unix.SockFilter{
		{Code: ld, K: offArch},
		{Code: jeq, K: unix.AUDIT_ARCH_X86_64, Jt: 1},
		{Code: ret, K: unix.SECCOMP_RET_KILL_PROCESS},
		{Code: ld, K: offNr},
		{Code: jeq, K: unix.SYS_EXECVE, Jt: 7},   // 4
		{Code: jeq, K: unix.SYS_EXECVEAT, Jt: 6}, // 5
		{Code: jeq, K: unix.SYS_FORK, Jt: 5},     // 6
		{Code: jeq, K: unix.SYS_VFORK, Jt: 4},    // 7
		{Code: jeq, K: unix.SYS_CLONE3, Jt: 4},   // 8 → ENOSYS
		{Code: jeq, K: unix.SYS_CLONE, Jf: 4},    // 9 → ALLOW unless clone
		// clone: a thread (CLONE_THREAD) is fine, a process is not
		{Code: ld, K: offArg0},                    // 10
		{Code: jset, K: unix.CLONE_THREAD, Jt: 2}, // 11 → ALLOW
		{Code: ret, K: eperm},                     // 12
		{Code: ret, K: enosys},                    // 13
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},    // 14
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return errno
	}
	return nil
}
