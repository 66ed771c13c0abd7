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
	return installFilter(prog)
}

// strictDenied are the system calls the strict filter answers EPERM,
// whatever their arguments: ways to reach other processes (ptrace,
// process_vm_*), large kernel attack surfaces QEMU does not use (bpf,
// perf_event_open, keyrings, userfaultfd: QEMU needs it only for
// post-copy migration, which Tartarus never does), mounts and namespaces,
// kernel modules, kexec and personality. QEMU 7.2 system emulation under
// TCG calls none of them to start, restore a snapshot or run.
var strictDenied = []uint32{
	unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV,
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN,
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_USERFAULTFD,
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT,
	unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK,
	unix.SYS_MOVE_MOUNT, unix.SYS_OPEN_TREE, unix.SYS_MOUNT_SETATTR,
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD,
	unix.SYS_PERSONALITY,
}

// cloneNewNS are clone's flags that make namespaces: with unshare denied,
// clone must not be the way around it.
const cloneNewNS = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// strictFilter is the filter of Spec.StrictSeccomp: EPERM to socket() of
// any family but AF_UNIX (QEMU's network is the TAP descriptor it is
// given or opens from /dev/net/tun; its chardevs are Unix sockets), to
// clone with a namespace flag, to every call of strictDenied and to every
// x32 call (whose numbers a filter of x86-64 numbers would not match);
// ENOSYS to clone3, whose flags a classic filter cannot read (glibc falls
// back to clone). Any other architecture is killed.
func strictFilter() []unix.SockFilter {
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge  = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
		// offsets in struct seccomp_data
		offNr   = 0
		offArch = 4
		offArg0 = 16
		x32Bit  = 0x40000000
	)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	enosys := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS))
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	prog := []unix.SockFilter{
		{Code: ld, K: offArch},
		{Code: jeq, K: unix.AUDIT_ARCH_X86_64, Jt: 1},
		{Code: ret, K: unix.SECCOMP_RET_KILL_PROCESS},
		{Code: ld, K: offNr},
		{Code: jge, K: x32Bit, Jf: 1},
		{Code: ret, K: eperm},
		{Code: jeq, K: unix.SYS_CLONE3, Jf: 1},
		{Code: ret, K: enosys},
		{Code: jeq, K: unix.SYS_SOCKET, Jf: 4},
		{Code: ld, K: offArg0},
		{Code: jeq, K: unix.AF_UNIX, Jf: 1},
		{Code: ret, K: allow},
		{Code: ret, K: eperm},
		{Code: jeq, K: unix.SYS_CLONE, Jf: 4},
		{Code: ld, K: offArg0},
		{Code: jset, K: cloneNewNS, Jf: 1},
		{Code: ret, K: eperm},
		{Code: ret, K: allow},
	}
	// Each denied call jumps to the EPERM at the end; none falls to ALLOW.
	n := len(strictDenied)
	for i, nr := range strictDenied {
		prog = append(prog, unix.SockFilter{Code: jeq, K: nr, Jt: uint8(n - i)})
	}
	return append(prog,
		unix.SockFilter{Code: ret, K: allow},
		unix.SockFilter{Code: ret, K: eperm},
	)
}

// installFilter installs prog on every thread of this process. The
// caller has set no_new_privs (an unprivileged process must).
func installFilter(prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return errno
	}
	return nil
}
