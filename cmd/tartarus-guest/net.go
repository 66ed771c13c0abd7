//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// netConfig is the guest's network as the kernel command line gives it:
//
//	tartarus.net=ADDR/BITS,GATEWAY[,DNS]
//
// Every sandbox uses the same values (the host gives each its own
// namespace), so a restored or forked guest keeps them.
type netConfig struct {
	Addr    netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr // zero: leave /etc/resolv.conf alone
}

// netIface is the virtio-net NIC's name; the guest has only that one.
const netIface = "eth0"

// netWait bounds the wait for the NIC to appear after its module loads.
const netWait = 3 * time.Second

// parseNet reads a tartarus.net value.
func parseNet(v string) (netConfig, error) {
	parts := strings.Split(v, ",")
	if len(parts) < 2 || len(parts) > 3 {
		return netConfig{}, fmt.Errorf("tartarus.net=%q: want ADDR/BITS,GATEWAY[,DNS]", v)
	}
	var c netConfig
	var err error
	if c.Addr, err = netip.ParsePrefix(parts[0]); err != nil || !c.Addr.Addr().Is4() {
		return netConfig{}, fmt.Errorf("tartarus.net address %q: want IPv4 ADDR/BITS", parts[0])
	}
	if c.Gateway, err = netip.ParseAddr(parts[1]); err != nil || !c.Gateway.Is4() || !c.Addr.Contains(c.Gateway) {
		return netConfig{}, fmt.Errorf("tartarus.net gateway %q: want an IPv4 address in %s", parts[1], c.Addr.Masked())
	}
	if len(parts) == 3 {
		if c.DNS, err = netip.ParseAddr(parts[2]); err != nil || !c.DNS.Is4() {
			return netConfig{}, fmt.Errorf("tartarus.net resolver %q: want an IPv4 address", parts[2])
		}
	}
	return c, nil
}

// apply configures the NIC, the default route and the resolver, and is
// safe to repeat: after a restore it puts back whatever differs.
func (c netConfig) apply() error {
	if err := waitFor("/sys/class/net/"+netIface, netWait); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(netIface)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(c.Addr.Addr().AsSlice()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("network: set address %s: %w", c.Addr, err)
	}
	m := ^uint32(0) << (32 - c.Addr.Bits())
	if err := ifr.SetInet4Addr(binary.BigEndian.AppendUint32(nil, m)); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("network: set netmask: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("network: read flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("network: set %s up: %w", netIface, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return fmt.Errorf("network: index of %s: %w", netIface, err)
	}
	if err := defaultRoute(c.Gateway, ifr.Uint32()); err != nil {
		return fmt.Errorf("network: default route via %s: %w", c.Gateway, err)
	}
	if c.DNS.IsValid() {
		if err := writeResolvConf("/etc/resolv.conf", c.DNS); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	return nil
}

// check re-applies the configuration; the agent calls it on every sync,
// which the host sends after boot and after each restore. A guest without
// network has nothing to check.
func (c *netConfig) check() error {
	if c == nil {
		return nil
	}
	return c.apply()
}

// defaultRoute creates or replaces the main table's default route.
func defaultRoute(gw netip.Addr, ifindex uint32) error {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	attr := func(typ uint16, data []byte) []byte {
		b := make([]byte, 4, 4+len(data))
		binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		return append(b, data...) // 4-byte payloads need no padding
	}
	msg := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofRtMsg)
	rt := msg[unix.NLMSG_HDRLEN:]
	rt[0] = unix.AF_INET
	rt[4] = unix.RT_TABLE_MAIN
	rt[5] = unix.RTPROT_BOOT
	rt[6] = unix.RT_SCOPE_UNIVERSE
	rt[7] = unix.RTN_UNICAST
	msg = append(msg, attr(unix.RTA_GATEWAY, gw.AsSlice())...)
	msg = append(msg, attr(unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, ifindex))...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.RTM_NEWROUTE)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.NLMSG_HDRLEN+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return errors.New("no netlink ack")
	}
	if code := int32(binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN:])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}

// writeResolvConf points the guest's resolver at dns, unless it already is.
// A symlink (systemd-resolved's) is replaced by a file.
func writeResolvConf(path string, dns netip.Addr) error {
	want := fmt.Sprintf("# written by tartarus-guest: the sandbox resolver\nnameserver %s\n", dns)
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		if b, err := os.ReadFile(path); err == nil && string(b) == want {
			return nil
		}
	}
	tmp := path + ".tartarus"
	if err := os.WriteFile(tmp, []byte(want), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
