package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// NFLOG over netfilter netlink: the few constants we need from
// linux/netfilter/nfnetlink_log.h.
const (
	nfnlSubsysULOG    = 4
	nfulnlMsgPacket   = 0
	nfulnlMsgConfig   = 1
	nfulaCfgCmd       = 1
	nfulaCfgMode      = 2
	nfulaCfgQThresh   = 5
	nfulaPayload      = 9
	nfulaPrefix       = 10
	nfulnlCfgCmdBind  = 1
	nfulnlCopyPacket  = 2
	nlaTypeMask       = 0x3fff
	nflogCopyRange    = 64 // IPv4 header and the ports are all we read
	nflogReadBuf      = 1 << 16
	nflogSocketBuffer = 1 << 20
)

// nflogReader receives the packets our log rules hand to one NFLOG group.
type nflogReader struct {
	f    *os.File
	done sync.WaitGroup
}

// startNFLOG binds group in the namespace at path and calls fn with each
// record's prefix and packet head until close.
func startNFLOG(path string, group uint16, fn func(prefix string, payload []byte)) (*nflogReader, error) {
	var fd int
	err := Do(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nflog socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, nflogSocketBuffer)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nflog bind: %w", err)
	}
	qthresh := binary.BigEndian.AppendUint32(nil, 1) // deliver each record at once
	mode := binary.BigEndian.AppendUint32(nil, nflogCopyRange)
	mode = append(mode, nfulnlCopyPacket, 0)
	for i, attrs := range [][]byte{
		nlAttr(nfulaCfgCmd, []byte{nfulnlCfgCmdBind}),
		append(nlAttr(nfulaCfgMode, mode), nlAttr(nfulaCfgQThresh, qthresh)...),
	} {
		if err := nflogConfig(fd, uint32(i+1), group, attrs); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("nflog bind group %d: %w", group, err)
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	r := &nflogReader{f: os.NewFile(uintptr(fd), "nflog")}
	r.done.Add(1)
	go r.loop(fn)
	return r, nil
}

// nflogConfig sends one config request and waits for its ack.
func nflogConfig(fd int, seq uint32, group uint16, attrs []byte) error {
	msg := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	msg = append(msg, attrs...)
	binary.NativeEndian.PutUint32(msg[0:4], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:6], nfnlSubsysULOG<<8|nfulnlMsgConfig)
	binary.NativeEndian.PutUint16(msg[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:12], seq)
	msg[16] = unix.AF_UNSPEC
	binary.BigEndian.PutUint16(msg[18:20], group)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
	return errors.New("no ack")
}

func nlAttr(typ uint16, data []byte) []byte {
	l := unix.NLA_HDRLEN + len(data)
	b := make([]byte, (l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[4:], data)
	return b
}

func (r *nflogReader) loop(fn func(string, []byte)) {
	defer r.done.Done()
	buf := make([]byte, nflogReadBuf)
	for {
		n, err := r.f.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			continue // ENOBUFS: the kernel dropped records; keep reading
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			prefix, payload := nflogAttrs(m.Data[4:])
			if payload != nil {
				fn(prefix, payload)
			}
		}
	}
}

// nflogAttrs picks the prefix and payload out of a packet message's
// attributes.
func nflogAttrs(b []byte) (prefix string, payload []byte) {
	for len(b) >= unix.NLA_HDRLEN {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < unix.NLA_HDRLEN || l > len(b) {
			return prefix, payload
		}
		data := b[unix.NLA_HDRLEN:l]
		switch typ {
		case nfulaPrefix:
			for i, c := range data {
				if c == 0 {
					data = data[:i]
					break
				}
			}
			prefix = string(data)
		case nfulaPayload:
			payload = data
		}
		adv := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if adv > len(b) {
			break
		}
		b = b[adv:]
	}
	return prefix, payload
}

func (r *nflogReader) close() error {
	if r == nil {
		return nil
	}
	err := r.f.Close()
	r.done.Wait()
	return err
}
