// Package proto defines the wire protocol between the Tartarus host and the
// guest agent: a byte-level handshake on the raw channel, then yamux streams
// that each carry one RPC as a sequence of typed frames.
//
// A frame is [type uint8][length uint32 big-endian][payload], with a payload
// of at most MaxPayload bytes. The host opens a stream per RPC and sends a
// FrameRequest (JSON Request) first, then data frames (stdin, file chunks,
// FrameEOF). The guest answers with data frames (stdout, stderr, file
// chunks) and ends with exactly one FrameResult (JSON) or FrameError (JSON
// Error). Decoding never trusts a length field before checking it against
// MaxPayload, so hostile input cannot make a reader allocate more.
package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// FrameType says what a frame's payload is.
type FrameType uint8

// The frame types. Values are part of the wire format: never renumber.
const (
	// FrameRequest carries the JSON Request; it is the first frame of every stream.
	FrameRequest FrameType = 1
	// FrameStdin carries bytes for an exec's standard input.
	FrameStdin FrameType = 2
	// FrameStdout and FrameStderr carry an exec's output as it is produced.
	FrameStdout FrameType = 3
	FrameStderr FrameType = 4
	// FrameData carries file bytes (read and write) or a JSON array of
	// directory entries (list).
	FrameData FrameType = 5
	// FrameEOF ends the host's data: it closes an exec's stdin or completes
	// a file upload. A stream that ends without it was abandoned.
	FrameEOF FrameType = 6
	// FrameCancel asks the guest to kill the exec running on this stream.
	FrameCancel FrameType = 7
	// FrameResult is the guest's final, successful answer (JSON).
	FrameResult FrameType = 8
	// FrameError is the guest's final, failed answer (JSON Error).
	FrameError FrameType = 9
	// FrameControl carries a JSON Control from the host during a PTY
	// session (a resize).
	FrameControl FrameType = 10
)

var frameNames = [...]string{
	FrameRequest: "request", FrameStdin: "stdin", FrameStdout: "stdout",
	FrameStderr: "stderr", FrameData: "data", FrameEOF: "eof",
	FrameCancel: "cancel", FrameResult: "result", FrameError: "error",
	FrameControl: "control",
}

func (t FrameType) String() string {
	if t.Valid() {
		return frameNames[t]
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// Valid reports whether t is a known frame type.
func (t FrameType) Valid() bool { return t >= FrameRequest && t <= FrameControl }

// MaxPayload is the largest payload a frame may carry.
const MaxPayload = 1 << 20

// HeaderSize is the length of a frame header.
const HeaderSize = 5

// Errors a FrameReader returns for malformed input.
var (
	ErrFrameTooLarge = errors.New("proto: frame payload exceeds 1 MiB")
	ErrUnknownFrame  = errors.New("proto: unknown frame type")
)

// FrameReader reads frames from a stream, reusing one buffer.
type FrameReader struct {
	r   io.Reader
	hdr [HeaderSize]byte
	buf []byte
}

// NewFrameReader returns a reader of the frames in r.
func NewFrameReader(r io.Reader) *FrameReader { return &FrameReader{r: r} }

// Next reads the next frame. The payload is valid until the following call.
// It returns io.EOF when the stream ends cleanly between frames and
// io.ErrUnexpectedEOF when it ends inside one.
func (fr *FrameReader) Next() (FrameType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	t := FrameType(fr.hdr[0])
	n := binary.BigEndian.Uint32(fr.hdr[1:])
	if !t.Valid() {
		return 0, nil, fmt.Errorf("%w %d", ErrUnknownFrame, fr.hdr[0])
	}
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("%w (%s frame of %d bytes)", ErrFrameTooLarge, t, n)
	}
	// Grow the buffer as the payload arrives rather than trusting the
	// length: a peer that announces 1 MiB and sends 10 bytes costs little.
	buf := fr.buf[:0]
	for uint32(len(buf)) < n {
		want := int(n) - len(buf)
		if room := cap(buf) - len(buf); room > 0 {
			want = min(want, room)
		} else {
			want = min(want, max(len(buf), growStep))
			buf = slices.Grow(buf, want)
		}
		m, err := io.ReadFull(fr.r, buf[len(buf):len(buf)+want])
		buf = buf[:len(buf)+m]
		if err != nil {
			fr.buf = buf[:0]
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
	}
	fr.buf = buf[:0]
	return t, buf, nil
}

// growStep is the first allocation for a payload; the buffer then doubles.
const growStep = 32 << 10

// FrameWriter writes frames to a stream. It is safe for concurrent use; each
// frame goes out in one Write call, so frames never interleave.
type FrameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewFrameWriter returns a writer of frames to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// Write sends one frame.
func (fw *FrameWriter) Write(t FrameType, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w (%s frame of %d bytes)", ErrFrameTooLarge, t, len(payload))
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.buf = AppendFrame(fw.buf[:0], t, payload)
	_, err := fw.w.Write(fw.buf)
	if cap(fw.buf) > 64<<10 {
		fw.buf = nil // do not pin a large buffer between bursts
	}
	return err
}

// WriteJSON sends one frame whose payload is v encoded as JSON.
func (fw *FrameWriter) WriteJSON(t FrameType, v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", t, err)
	}
	return fw.Write(t, p)
}

// AppendFrame appends the encoding of one frame to b. The caller checks
// that payload is at most MaxPayload bytes.
func AppendFrame(b []byte, t FrameType, payload []byte) []byte {
	b = append(b, byte(t), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(len(payload)))
	return append(b, payload...)
}
