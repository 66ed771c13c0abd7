package proto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadLine(t *testing.T) {
	m := handshakeMagic
	tests := []struct {
		name  string
		in    string
		verbs []string // verb:nonce read before EOF
	}{
		{"clean", m + "HELLO abc\n", []string{"HELLO:abc"}},
		{"garbage before", "\x00\x00\x00\x0c\x01junk" + m + "ACK n1\n", []string{"ACK:n1"}},
		{"two lines", m + "ACK n1\n" + m + "READY n1\n", []string{"ACK:n1", "READY:n1"}},
		{"partial magic then real", m[:5] + m + "GO x\n", []string{"GO:x"}},
		{"magic restarts mid-line", m + "HEL" + m + "GO y\n", []string{"GO:y"}},
		{"too long line skipped", m + strings.Repeat("A", 100) + "\n" + m + "GO z\n", []string{"GO:z"}},
		{"wrong field count skipped", m + "HELLO\n" + m + "HELLO a b\n" + m + "GO ok\n", []string{"GO:ok"}},
		{"cut short", m + "HELLO ab", nil},
		{"nothing", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			var got []string
			for {
				v, n, err := readLine(br)
				if err != nil {
					if err != io.EOF {
						t.Fatalf("error %v", err)
					}
					break
				}
				got = append(got, v+":"+n)
			}
			if strings.Join(got, ",") != strings.Join(tc.verbs, ",") {
				t.Fatalf("lines = %v, want %v", got, tc.verbs)
			}
		})
	}
}

// TestHandshake runs both sides over a socket pair with junk from an old
// session in front of each, then checks the bytes after the handshake.
func TestHandshake(t *testing.T) {
	host, guest := socketpair(t)
	defer host.Close()
	defer guest.Close()
	type result struct {
		r   io.Reader
		err error
	}
	gdone := make(chan result, 1)
	go func() {
		r, err := ServerHandshake(guest)
		if err == nil {
			_, err = guest.Write([]byte("from-guest"))
		}
		gdone <- result{r, err}
	}()
	// Stale bytes the guest reads first: a yamux header and a stray ACK.
	go host.Write(append([]byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, handshakeMagic+"ACK stale\n"...))
	time.Sleep(10 * time.Millisecond)
	r, err := ClientHandshake(host)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Write([]byte("from-host!")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "from-guest" {
		t.Fatalf("host read %q %v", buf, err)
	}
	g := <-gdone
	if g.err != nil {
		t.Fatal(g.err)
	}
	if _, err := io.ReadFull(g.r, buf); err != nil || string(buf) != "from-host!" {
		t.Fatalf("guest read %q %v", buf, err)
	}
}

// TestHandshakeRepeatsHello: a guest that drops the first hellos (its old
// session swallowed them) still gets one.
func TestHandshakeRepeatsHello(t *testing.T) {
	host, guest := socketpair(t)
	defer host.Close()
	defer guest.Close()
	done := make(chan error, 1)
	go func() {
		// Swallow input for a while, as a dying session would.
		br := bufio.NewReader(guest)
		deadline := time.Now().Add(3 * HelloInterval)
		for time.Now().Before(deadline) {
			if _, err := br.ReadByte(); err != nil {
				done <- err
				return
			}
		}
		_, err := ServerHandshake(guest)
		done <- err
	}()
	r, err := ClientHandshake(host)
	if err != nil {
		t.Fatal(err)
	}
	// Reading after the handshake needs the guest's READY.
	go host.Write([]byte("x"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	go guest.Write([]byte("y"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(r, b); err != nil || b[0] != 'y' {
		t.Fatalf("%q %v", b, err)
	}
}

func TestHandshakeClosed(t *testing.T) {
	host, guest := socketpair(t)
	guest.Close()
	if _, err := ClientHandshake(host); !errors.Is(err, ErrHandshake) {
		t.Fatalf("client on closed pipe: %v", err)
	}
	host2, guest2 := socketpair(t)
	host2.Close()
	if _, err := ServerHandshake(guest2); err == nil {
		t.Fatal("server on closed pipe succeeded")
	}
}

// The handshake lines can never be taken for a yamux header: yamux's
// version byte is 0 and the lines have no zero byte.
func TestHandshakeHasNoZeroByte(t *testing.T) {
	for _, v := range []string{"HELLO", "ACK", "GO", "READY"} {
		var b bytes.Buffer
		writeLine(&b, v, "0123456789abcdef")
		if bytes.IndexByte(b.Bytes(), 0) >= 0 {
			t.Fatalf("%s line has a zero byte", v)
		}
	}
}

// socketpair returns a buffered, bidirectional byte stream like the real
// channel (net.Pipe is unbuffered and would deadlock the handshake).
func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}
