package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

func frame(t FrameType, payload string) []byte {
	return AppendFrame(nil, t, []byte(payload))
}

func header(t byte, n uint32) []byte {
	b := []byte{t, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], n)
	return b
}

// frameTests are the framing cases; they also seed FuzzReadFrame.
var frameTests = []struct {
	name  string
	input []byte
	want  []FrameType // frames read before the error
	err   error       // nil means a clean io.EOF after the frames
}{
	{"empty stream", nil, nil, nil},
	{"one request", frame(FrameRequest, `{"op":"ping"}`), []FrameType{FrameRequest}, nil},
	{"empty payload", frame(FrameEOF, ""), []FrameType{FrameEOF}, nil},
	{"several", bytes.Join([][]byte{frame(FrameRequest, "{}"), frame(FrameStdin, "abc"), frame(FrameEOF, "")}, nil),
		[]FrameType{FrameRequest, FrameStdin, FrameEOF}, nil},
	{"max payload", append(header(byte(FrameData), MaxPayload), make([]byte, MaxPayload)...), []FrameType{FrameData}, nil},
	{"too large", header(byte(FrameData), MaxPayload+1), nil, ErrFrameTooLarge},
	{"huge length", header(byte(FrameData), 0xffffffff), nil, ErrFrameTooLarge},
	{"type zero", header(0, 0), nil, ErrUnknownFrame},
	{"type past last", header(byte(FrameControl)+1, 0), nil, ErrUnknownFrame},
	{"short header", []byte{1, 0, 0}, nil, io.ErrUnexpectedEOF},
	{"short payload", append(header(byte(FrameStdout), 10), "abc"...), nil, io.ErrUnexpectedEOF},
	{"good then bad", append(frame(FrameStdout, "x"), header(200, 1)...), []FrameType{FrameStdout}, ErrUnknownFrame},
}

func TestFrameReader(t *testing.T) {
	for _, tc := range frameTests {
		t.Run(tc.name, func(t *testing.T) {
			fr := NewFrameReader(bytes.NewReader(tc.input))
			var got []FrameType
			var err error
			for {
				var ft FrameType
				ft, _, err = fr.Next()
				if err != nil {
					break
				}
				got = append(got, ft)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("frames = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("frames = %v, want %v", got, tc.want)
				}
			}
			want := tc.err
			if want == nil {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Fatalf("error = %v, want %v", err, want)
			}
		})
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	payloads := []string{"", "a", strings.Repeat("x", 70000), strings.Repeat("y", MaxPayload)}
	for i, p := range payloads {
		if err := fw.Write(FrameType(1+i), []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Write(FrameData, make([]byte, MaxPayload+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
	if err := fw.WriteJSON(FrameResult, map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	fr := NewFrameReader(&buf)
	for i, p := range payloads {
		ft, got, err := fr.Next()
		if err != nil || ft != FrameType(1+i) || string(got) != p {
			t.Fatalf("frame %d: %v %d bytes %v", i, ft, len(got), err)
		}
	}
	ft, got, err := fr.Next()
	if err != nil || ft != FrameResult || string(got) != `{"a":1}` {
		t.Fatalf("json frame: %v %q %v", ft, got, err)
	}
	if _, _, err := fr.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

// TestFrameWriterConcurrent: frames written from many goroutines never
// interleave.
func TestFrameWriterConcurrent(t *testing.T) {
	pr, pw := io.Pipe()
	fw := NewFrameWriter(pw)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte('a' + i)}, 1000+i)
			for range 50 {
				if err := fw.Write(FrameStdout, p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); pw.Close() }()
	fr := NewFrameReader(pr)
	n := 0
	for {
		_, p, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(p) < 1000 || !bytes.Equal(p, bytes.Repeat(p[:1], len(p))) || len(p) != 1000+int(p[0]-'a') {
			t.Fatalf("frame mixed up: %d bytes starting %q", len(p), p[:1])
		}
		n++
	}
	if n != 400 {
		t.Fatalf("%d frames", n)
	}
}

func TestFrameTypeString(t *testing.T) {
	if FrameStdin.String() != "stdin" || FrameType(0).String() != "frame(0)" || FrameType(42).String() != "frame(42)" {
		t.Fatal(FrameStdin.String(), FrameType(0).String())
	}
}

// FuzzReadFrame: any input yields valid frames or an error, never a panic,
// and memory in proportion to the input.
func FuzzReadFrame(f *testing.F) {
	for _, tc := range frameTests {
		if len(tc.input) < 4096 {
			f.Add(tc.input)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		total := 0
		for {
			ft, p, err := fr.Next()
			if err != nil {
				break
			}
			if !ft.Valid() || len(p) > MaxPayload {
				t.Fatalf("bad frame %v of %d bytes", ft, len(p))
			}
			total += HeaderSize + len(p)
			if total > len(b) {
				t.Fatalf("read %d bytes of frames from %d bytes of input", total, len(b))
			}
		}
		// The buffer grows with the payload bytes actually present, never
		// by the length a header claims.
		if cap(fr.buf) > 2*len(b)+2*growStep {
			t.Fatalf("buffer of %d bytes for %d bytes of input", cap(fr.buf), len(b))
		}
	})
}
