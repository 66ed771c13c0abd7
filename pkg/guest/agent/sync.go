package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// sync applies the host's clock and entropy, as far as Options allow, and
// answers the guest's Info.
func (a *Agent) sync(req *proto.SyncRequest) (*proto.Info, error) {
	if a.opts.SetClock && req.UnixNano > 0 {
		ts := unix.NsecToTimespec(req.UnixNano)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return nil, fmt.Errorf("set clock: %w", err)
		}
	}
	if a.opts.SeedRNG && len(req.Entropy) > 0 {
		if err := SeedRNG(req.Entropy); err != nil {
			return nil, err
		}
	}
	if a.opts.SetHostname && req.Hostname != "" {
		if err := unix.Sethostname([]byte(req.Hostname)); err != nil {
			return nil, fmt.Errorf("set hostname: %w", err)
		}
	}
	if a.opts.OnSync != nil {
		if err := a.opts.OnSync(); err != nil {
			return nil, fmt.Errorf("sync: %w", err)
		}
	}
	return a.info(), nil
}

func (a *Agent) info() *proto.Info {
	in := &proto.Info{AgentVersion: Version, BootError: a.opts.BootError}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		in.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	in.Hostname, _ = os.Hostname()
	var up unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &up); err == nil {
		in.BootedAt = a.clock.Now().Add(-time.Duration(up.Nano())).UTC()
	}
	return in
}

// SeedRNG mixes b into the kernel's random pool, credited as full entropy
// (the host drew it from its own CSPRNG), and makes the kernel reseed its
// CRNG at once, so two VMs restored from one snapshot diverge from here on.
// It needs CAP_SYS_ADMIN.
func SeedRNG(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("seed rng: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b)+3)
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	fd := f.Fd()
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("seed rng: RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("seed rng: RNDRESEEDCRNG: %w", e)
	}
	return nil
}
