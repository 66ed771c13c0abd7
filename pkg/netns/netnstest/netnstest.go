// Package netnstest builds a stand-in internet in network namespaces a
// test owns: an uplink namespace for sandbox networks, joined by a veth to
// an "internet" namespace with HTTP, HTTPS (own CA) and DNS servers on
// documentation-range addresses. No traffic leaves the test's namespaces.
package netnstest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
)

// The stand-in internet's addresses.
var (
	UplinkAddr   = netip.MustParseAddr("198.51.100.1") // the uplink namespace's address toward the internet
	RouterAddr   = netip.MustParseAddr("198.51.100.2") // the internet namespace's address
	HTTPAddr     = netip.MustParseAddr("203.0.113.10") // allowed.example, *.cdn.example
	HTTPSAddr    = netip.MustParseAddr("203.0.113.11") // tls.example
	DNSAddr      = netip.MustParseAddr("203.0.113.53")
	OtherAddr    = netip.MustParseAddr("203.0.113.66") // blocked.example
	OtherDNSAddr = netip.MustParseAddr("203.0.113.54") // a second DNS server a guest might pick
	MetadataAddr = netip.MustParseAddr("169.254.169.254")
	// IPv6: the uplink reaches an HTTP server at HTTP6Addr (documentation
	// range), so a sandbox's IPv6 would have somewhere to go if it had a
	// path; it must not.
	Uplink6Addr = netip.MustParseAddr("2001:db8:100::1")
	Router6Addr = netip.MustParseAddr("2001:db8:100::2")
	HTTP6Addr   = netip.MustParseAddr("2001:db8:113::10")
)

// Names the stand-in DNS servers answer, with TTL 60.
var Names = map[string]netip.Addr{
	"allowed.example":  HTTPAddr,
	"tls.example":      HTTPSAddr,
	"blocked.example":  OtherAddr,
	"metadata.example": MetadataAddr,
}

// BigSize is the size of /big on the HTTP servers.
const BigSize = 10 << 20

// SinkWarmup is how much of an upload /sink leaves out of its timing.
const SinkWarmup = 1 << 20

// HostPort is where the uplink namespace runs its "host services" (on
// 127.0.0.1 and on UplinkAddr): stand-ins for the API server, Redis and
// the agent, which no sandbox may reach.
const HostPort = 8080

// Internet is a stand-in internet and an uplink into it.
type Internet struct {
	// Uplink is the `ip netns` name to give netns.Config.UplinkNetns.
	Uplink string
	// Inet is the internet namespace's name.
	Inet string
	// CA verifies the HTTPS server's certificate (for tls.example).
	CA *x509.CertPool
	// CAPEM is CA in PEM, for guests.
	CAPEM []byte
	// BigSHA256 is the hex SHA-256 of /big.
	BigSHA256 string
	// DNS is the stand-in resolver, for netns.Config.DNSUpstream.
	DNS string

	big []byte
}

// Skip skips t unless it runs as root with ip, nft and tc; with
// TARTARUS_E2E=1 a missing piece fails t instead.
func Skip(t testing.TB) {
	t.Helper()
	skip := t.Skip
	if os.Getenv("TARTARUS_E2E") == "1" {
		skip = func(args ...any) { t.Helper(); t.Fatal(append([]any{"TARTARUS_E2E=1 but:"}, args...)...) }
	}
	if os.Geteuid() != 0 {
		skip("needs root: creates network namespaces")
	}
	for _, bin := range []string{"ip", "nft", "tc"} {
		if _, err := exec.LookPath(bin); err != nil {
			skip("needs " + bin + " (scripts/deps.sh installs nftables and iproute2)")
		}
	}
}

// New builds the stand-in internet and removes it when t ends.
func New(t testing.TB) *Internet {
	t.Helper()
	Skip(t)
	tag := fmt.Sprintf("%06x", mrand.IntN(1<<24))
	in := &Internet{Uplink: "txu-" + tag, Inet: "txi-" + tag, DNS: netip.AddrPortFrom(DNSAddr, 53).String()}
	t.Cleanup(func() {
		for _, ns := range []string{in.Uplink, in.Inet} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	sh(t, "ip", "netns", "add", in.Uplink)
	sh(t, "ip", "netns", "add", in.Inet)
	batchUp := fmt.Sprintf(`link set lo up
link add up0 type veth peer name inet0 netns %s
addr add %s/30 dev up0
link set up0 up
route add default via %s
addr add %s/64 dev up0 nodad
route add default via %s
`, in.Inet, UplinkAddr, RouterAddr, Uplink6Addr, Router6Addr)
	shIn(t, batchUp, "ip", "-n", in.Uplink, "-batch", "-")
	sh(t, "ip", "netns", "exec", in.Uplink, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	var b strings.Builder
	fmt.Fprintf(&b, "link set lo up\naddr add %s/30 dev inet0\nlink set inet0 up\n", RouterAddr)
	fmt.Fprintf(&b, "addr add %s/64 dev inet0 nodad\naddr add %s/128 dev lo\n", Router6Addr, HTTP6Addr)
	for _, a := range []netip.Addr{HTTPAddr, HTTPSAddr, DNSAddr, OtherAddr, OtherDNSAddr, MetadataAddr} {
		fmt.Fprintf(&b, "addr add %s/32 dev lo\n", a)
	}
	shIn(t, b.String(), "ip", "-n", in.Inet, "-batch", "-")

	in.big = make([]byte, BigSize)
	r := mrand.NewChaCha8([32]byte{1})
	_, _ = r.Read(in.big)
	sum := sha256.Sum256(in.big)
	in.BigSHA256 = hex.EncodeToString(sum[:])

	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(in.big)))
		_, _ = w.Write(in.big)
	})
	// /sink reads the body and answers "<bytes> <ns>": how many bytes came
	// after the first SinkWarmup, and in how long (the receiver's view of
	// an upload's steady-state rate).
	mux.HandleFunc("/sink", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.CopyN(io.Discard, r.Body, SinkWarmup); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		start := time.Now()
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %d", n, time.Since(start).Nanoseconds())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Host)
	})
	inetPath := netns.Path(in.Inet)
	for _, a := range []netip.Addr{HTTPAddr, OtherAddr, MetadataAddr, HTTP6Addr} {
		serveHTTP(t, inetPath, netip.AddrPortFrom(a, 80).String(), mux, nil)
	}
	ca, caPEM, leaf := makeCA(t, "tls.example")
	in.CA, in.CAPEM = ca, caPEM
	serveHTTP(t, inetPath, netip.AddrPortFrom(HTTPSAddr, 443).String(), mux, &tls.Config{Certificates: []tls.Certificate{leaf}})
	for _, a := range []netip.Addr{DNSAddr, OtherDNSAddr} {
		serveDNS(t, inetPath, netip.AddrPortFrom(a, 53).String())
	}
	host := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "host service") })
	for _, a := range []string{"127.0.0.1", UplinkAddr.String()} {
		serveHTTP(t, netns.Path(in.Uplink), net.JoinHostPort(a, fmt.Sprint(HostPort)), host, nil)
	}
	return in
}

// Big returns /big's content.
func (in *Internet) Big() []byte { return in.big }

func sh(t testing.TB, name string, args ...string) { t.Helper(); shIn(t, "", name, args...) }

func shIn(t testing.TB, stdin, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func listenIn(t testing.TB, nsPath, network, addr string) (ln net.Listener, pc net.PacketConn) {
	t.Helper()
	err := netns.Do(nsPath, func() error {
		var err error
		if network == "udp" {
			pc, err = net.ListenPacket("udp4", addr)
		} else {
			ln, err = net.Listen("tcp", addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, nsPath, err)
	}
	return ln, pc
}

func serveHTTP(t testing.TB, nsPath, addr string, h http.Handler, tc *tls.Config) {
	t.Helper()
	ln, _ := listenIn(t, nsPath, "tcp", addr)
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

func serveDNS(t testing.TB, nsPath, addr string) {
	t.Helper()
	_, pc := listenIn(t, nsPath, "udp", addr)
	ln, _ := listenIn(t, nsPath, "tcp", addr)
	t.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := dnsAnswer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, int(l[0])<<8|int(l[1]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp := dnsAnswer(q)
				_, _ = c.Write(append([]byte{byte(len(resp) >> 8), byte(len(resp))}, resp...))
			}()
		}
	}()
}

// dnsAnswer answers A queries for Names and *.cdn.example.
func dnsAnswer(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	qq, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(strings.TrimSuffix(qq.Name.String(), "."))
	addr, ok := Names[name]
	if strings.HasSuffix(name, ".cdn.example") {
		addr, ok = HTTPAddr, true
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	if !ok {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	_ = b.StartQuestions()
	_ = b.Question(qq)
	_ = b.StartAnswers()
	if ok && qq.Type == dnsmessage.TypeA {
		_ = b.AResource(dnsmessage.ResourceHeader{Name: qq.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: addr.As4()})
	}
	out, _ := b.Finish()
	return out
}

func makeCA(t testing.TB, name string) (*x509.CertPool, []byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stand-in CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Client is an HTTP client whose sockets live in the namespace at nsPath
// and whose names resolve through the sandbox resolver (netns.GatewayAddr).
// It stands in for a guest in tests that run before any VM.
func Client(nsPath string, tc *tls.Config) *http.Client {
	dialer := Dialer(nsPath)
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:       dialer,
			TLSClientConfig:   tc,
			DisableKeepAlives: true,
		},
	}
}

// Dialer dials from inside the namespace at nsPath, resolving names
// through the sandbox resolver.
func Dialer(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	res := Resolver(nsPath, netip.AddrPortFrom(netns.GatewayAddr, 53).String())
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if _, err := netip.ParseAddr(host); err != nil {
			ips, err := res.LookupHost(ctx, host)
			if err != nil {
				return nil, err
			}
			host = ips[0]
		}
		var c net.Conn
		err = netns.Do(nsPath, func() error {
			d := net.Dialer{Timeout: 3 * time.Second}
			var err error
			c, err = d.DialContext(ctx, "tcp4", net.JoinHostPort(host, port))
			return err
		})
		return c, err
	}
}

// Resolver resolves through server (host:port), from inside nsPath.
func Resolver(nsPath, server string) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(nsPath, func() error {
				d := net.Dialer{Timeout: 2 * time.Second}
				var err error
				c, err = d.DialContext(ctx, network, server)
				return err
			})
			return c, err
		},
	}
}

// State lists what sandbox networks own on the host and in the uplink:
// namespaces whose name starts with prefix, the uplink's links, and the
// chains, sets and maps of the uplink's nftables table. Equal before and
// after shows nothing was left behind.
func (in *Internet) State(t testing.TB, prefix string) string {
	t.Helper()
	var b strings.Builder
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			fmt.Fprintln(&b, "netns", e.Name())
		}
	}
	out, _ := exec.Command("ip", "-n", in.Uplink, "-o", "link", "show").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			fmt.Fprintln(&b, "link", f[1])
		}
	}
	out, _ = exec.Command("ip", "netns", "exec", in.Uplink, "nft", "list", "table", "inet", "tartarus").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map ") || strings.Contains(l, "jump sb") {
			fmt.Fprintln(&b, l)
		}
	}
	return b.String()
}

// Serve serves h over HTTP on port 80 of addr, an address this stand-in
// internet gains for it: a test's own service, such as a package
// repository.
func (in *Internet) Serve(t testing.TB, addr netip.Addr, h http.Handler) {
	t.Helper()
	shIn(t, fmt.Sprintf("addr add %s/32 dev lo\n", addr), "ip", "-n", in.Inet, "-batch", "-")
	serveHTTP(t, netns.Path(in.Inet), netip.AddrPortFrom(addr, 80).String(), h, nil)
}
