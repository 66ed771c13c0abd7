package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Conntrack destroy events (linux/netfilter/nfnetlink_conntrack.h) give a
// finished connection's byte counters; the connection log fills them into
// the record of its first packet.
const (
	nfnlSubsysCTNetlink  = 1
	ipctnlMsgCtDelete    = 2
	nfnlgrpConntrackDest = 3
	ctaTupleOrig         = 1
	ctaCountersOrig      = 9
	ctaCountersReply     = 10
	ctaTupleIP           = 1
	ctaTupleProto        = 2
	ctaIPv4Src           = 1
	ctaIPv4Dst           = 2
	ctaProtoNum          = 1
	ctaProtoSrcPort      = 2
	ctaProtoDstPort      = 3
	ctaCountersBytes     = 2
)

// flowEnd is one finished connection as conntrack reports it.
type flowEnd struct {
	src, dst          netip.Addr
	proto             uint8
	sport, dport      uint16
	bytesOut, bytesIn uint64
}

type conntrackReader struct {
	f    *os.File
	done sync.WaitGroup
}

// startConntrack subscribes to conntrack destroy events in the namespace at
// path, with byte accounting on there.
func startConntrack(path string, fn func(flowEnd)) (*conntrackReader, error) {
	for _, kv := range [][2]string{{"net.netfilter.nf_conntrack_acct", "1"}, {"net.netfilter.nf_conntrack_events", "1"}} {
		if err := writeSysctl(path, kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	var fd int
	err := Do(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("conntrack socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, nflogSocketBuffer)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (nfnlgrpConntrackDest - 1)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("conntrack subscribe: %w", err)
	}
	r := &conntrackReader{f: os.NewFile(uintptr(fd), "conntrack")}
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		buf := make([]byte, nflogReadBuf)
		for {
			n, err := r.f.Read(buf)
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if err != nil {
				continue // ENOBUFS: events were dropped
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				if m.Header.Type != nfnlSubsysCTNetlink<<8|ipctnlMsgCtDelete || len(m.Data) < 4 {
					continue
				}
				if fe, ok := parseFlowEnd(m.Data[4:]); ok {
					fn(fe)
				}
			}
		}
	}()
	return r, nil
}

func (r *conntrackReader) close() error {
	if r == nil {
		return nil
	}
	err := r.f.Close()
	r.done.Wait()
	return err
}

// nlAttrs walks netlink attributes, calling fn with each type and payload.
func nlAttrs(b []byte, fn func(typ uint16, data []byte)) {
	for len(b) >= unix.NLA_HDRLEN {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.NLA_HDRLEN || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[unix.NLA_HDRLEN:l])
		adv := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if adv >= len(b) {
			return
		}
		b = b[adv:]
	}
}

// parseFlowEnd reads the original tuple and both byte counters.
func parseFlowEnd(b []byte) (flowEnd, bool) {
	var fe flowEnd
	counter := func(data []byte) (v uint64) {
		nlAttrs(data, func(typ uint16, d []byte) {
			if typ == ctaCountersBytes && len(d) == 8 {
				v = binary.BigEndian.Uint64(d)
			}
		})
		return v
	}
	nlAttrs(b, func(typ uint16, data []byte) {
		switch typ {
		case ctaTupleOrig:
			nlAttrs(data, func(typ uint16, d []byte) {
				switch typ {
				case ctaTupleIP:
					nlAttrs(d, func(typ uint16, a []byte) {
						if len(a) != 4 {
							return
						}
						switch typ {
						case ctaIPv4Src:
							fe.src = netip.AddrFrom4([4]byte(a))
						case ctaIPv4Dst:
							fe.dst = netip.AddrFrom4([4]byte(a))
						}
					})
				case ctaTupleProto:
					nlAttrs(d, func(typ uint16, a []byte) {
						switch {
						case typ == ctaProtoNum && len(a) == 1:
							fe.proto = a[0]
						case typ == ctaProtoSrcPort && len(a) == 2:
							fe.sport = binary.BigEndian.Uint16(a)
						case typ == ctaProtoDstPort && len(a) == 2:
							fe.dport = binary.BigEndian.Uint16(a)
						}
					})
				}
			})
		case ctaCountersOrig:
			fe.bytesOut = counter(data)
		case ctaCountersReply:
			fe.bytesIn = counter(data)
		}
	})
	return fe, fe.src.IsValid() && fe.dst.IsValid()
}
