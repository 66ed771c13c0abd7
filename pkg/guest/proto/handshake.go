package proto

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// The handshake puts host and guest in step on a raw byte channel whose far
// end may still run an old session: after a snapshot restore the guest's
// agent can be mid-session with a host that no longer exists, and stale
// bytes can sit in either direction. Lines of the form
//
//	"\x7fTARTARUS-GUEST/1 VERB NONCE\n"
//
// contain no zero byte, so an old yamux session that reads them fails at
// once (yamux headers start with version 0) and the guest starts afresh.
//
//	host:  HELLO n   (repeated every HelloInterval until answered)
//	guest: ACK n     (for every HELLO it sees)
//	host:  GO n      (then yamux, at once)
//	guest: READY n   (then yamux)
//
// Each side skips whatever precedes the line it waits for.
const handshakeMagic = "\x7fTARTARUS-GUEST/1 "

// HelloInterval is how often the host repeats HELLO until the guest answers.
const HelloInterval = 30 * time.Millisecond

const maxHandshakeLine = 64

// ErrHandshake reports a handshake that could not complete.
var ErrHandshake = errors.New("proto: handshake failed")

// readLine skips input up to the next handshake line and returns its verb
// and nonce. Garbage and malformed lines are skipped.
func readLine(br *bufio.Reader) (verb, nonce string, err error) {
	for {
		matched := 0
		for matched < len(handshakeMagic) {
			b, err := br.ReadByte()
			if err != nil {
				return "", "", err
			}
			switch {
			case b == handshakeMagic[matched]:
				matched++
			case b == handshakeMagic[0]:
				matched = 1
			default:
				matched = 0
			}
		}
		var line [maxHandshakeLine]byte
		n := 0
		for {
			b, err := br.ReadByte()
			if err != nil {
				return "", "", err
			}
			if b == '\n' {
				break
			}
			if n == len(line) || b == handshakeMagic[0] {
				n = -1
				if b == handshakeMagic[0] {
					_ = br.UnreadByte()
				}
				break
			}
			line[n] = b
			n++
		}
		if n < 0 {
			continue
		}
		f := strings.Fields(string(line[:n]))
		if len(f) == 2 {
			return f[0], f[1], nil
		}
	}
}

func writeLine(w io.Writer, verb, nonce string) error {
	_, err := io.WriteString(w, handshakeMagic+verb+" "+nonce+"\n")
	return err
}

// ServerHandshake is the guest's side: it waits for a host's HELLO and GO
// and returns the reader to use for the rest of the session (it holds bytes
// read past the handshake). It returns when conn fails; the caller bounds it
// by closing conn.
func ServerHandshake(conn io.ReadWriter) (io.Reader, error) {
	br := bufio.NewReaderSize(conn, 64<<10)
	acked := ""
	for {
		verb, nonce, err := readLine(br)
		if err != nil {
			return nil, fmt.Errorf("wait for host hello: %w", err)
		}
		switch {
		case verb == "HELLO":
			acked = nonce
			if err := writeLine(conn, "ACK", nonce); err != nil {
				return nil, fmt.Errorf("answer host hello: %w", err)
			}
		case verb == "GO" && nonce == acked:
			if err := writeLine(conn, "READY", nonce); err != nil {
				return nil, fmt.Errorf("answer host go: %w", err)
			}
			return br, nil
		}
	}
}

// ClientHandshake is the host's side. It returns once the guest has
// acknowledged; the returned reader skips to the guest's READY on its first
// Read, so the caller may start writing at once. It returns when conn fails;
// the caller bounds it by closing conn.
func ClientHandshake(conn io.ReadWriter) (io.Reader, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("handshake nonce: %w", err)
	}
	nonce := hex.EncodeToString(rnd[:])

	// Repeat HELLO until answered: the first may be swallowed by a stale
	// session on the guest, which then restarts and waits for another.
	var mu sync.Mutex // held around every write, so no HELLO follows GO
	stop := make(chan struct{})
	helloErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(HelloInterval)
		defer t.Stop()
		for {
			mu.Lock()
			select {
			case <-stop:
				mu.Unlock()
				return
			default:
			}
			err := writeLine(conn, "HELLO", nonce)
			mu.Unlock()
			if err != nil {
				helloErr <- err
				return
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	stopHello := func() { once.Do(func() { close(stop) }) }
	defer stopHello()

	br := bufio.NewReaderSize(conn, 64<<10)
	for {
		verb, got, err := readLine(br)
		if err != nil {
			select {
			case werr := <-helloErr:
				err = errors.Join(err, werr)
			default:
			}
			return nil, fmt.Errorf("%w: wait for guest ack: %w", ErrHandshake, err)
		}
		if verb == "ACK" && got == nonce {
			break
		}
	}
	mu.Lock()
	stopHello()
	err := writeLine(conn, "GO", nonce)
	mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: send go: %w", ErrHandshake, err)
	}
	return &readyReader{br: br, nonce: nonce}, nil
}

// readyReader skips the guest's extra ACKs up to its READY, then passes
// bytes through.
type readyReader struct {
	br    *bufio.Reader
	nonce string
	ready bool
}

func (r *readyReader) Read(p []byte) (int, error) {
	for !r.ready {
		verb, got, err := readLine(r.br)
		if err != nil {
			return 0, fmt.Errorf("%w: wait for guest ready: %w", ErrHandshake, err)
		}
		r.ready = verb == "READY" && got == r.nonce
	}
	return r.br.Read(p)
}
