package e2b

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The Connect protocol (connectrpc.com) over HTTP/1.1 with the JSON codec,
// which E2B's JS SDK uses: a unary call is a POST of one JSON message
// (Content-Type application/json) answered by one, or by a status and
// {"code","message"}; a server-streaming call (application/connect+json)
// sends and receives envelopes, five bytes (flags, big-endian length) and
// a message, the last answer envelope (flag 0x02) carrying the end of the
// stream and its error. Messages follow protobuf's JSON mapping: lowerCamel
// names, 64-bit integers as strings, bytes as base64, enums by name.

const (
	maxRPCMessage   = 8 << 20 // a request message; file data does not travel over RPC
	flagEndStream   = 0x02
	flagCompressed  = 0x01
	connectJSON     = "application/json"
	connectStreamCT = "application/connect+json"
)

// unary serves a unary call: it decodes the request into in, runs fn and
// writes its answer.
func unary[In any](h *Handler, w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, in *In) (any, error)) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, connectJSON) {
		writeRPCError(w, &rpcError{Code: "invalid_argument", Message: fmt.Sprintf("content type %q: this server speaks Connect with JSON only", ct)})
		return
	}
	if enc := r.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		writeRPCError(w, &rpcError{Code: "unimplemented", Message: "compression " + enc + " is not supported"})
		return
	}
	ctx, cancel := rpcContext(r)
	defer cancel()
	in := new(In)
	data, err := io.ReadAll(io.LimitReader(r.Body, maxRPCMessage+1))
	if err == nil && len(data) > maxRPCMessage {
		err = invalidf("request message over 8 MiB")
	}
	if err == nil && len(bytes.TrimSpace(data)) > 0 {
		if jerr := json.Unmarshal(data, in); jerr != nil {
			err = invalidf("request message: " + jerr.Error())
		}
	}
	if err != nil {
		writeRPCError(w, h.toRPC(r, err))
		return
	}
	out, err := fn(ctx, in)
	if err != nil {
		writeRPCError(w, h.toRPC(r, err))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func writeRPCError(w http.ResponseWriter, e *rpcError) {
	writeJSON(w, connectStatus(e.Code), e)
}

// rpcContext bounds a call by its Connect-Timeout-Ms header.
func rpcContext(r *http.Request) (context.Context, context.CancelFunc) {
	if s := r.Header.Get("Connect-Timeout-Ms"); s != "" {
		if ms, err := strconv.ParseInt(s, 10, 64); err == nil && ms > 0 {
			return context.WithTimeout(r.Context(), time.Duration(ms)*time.Millisecond)
		}
	}
	return context.WithCancel(r.Context())
}

// stream is the answer side of a server-streaming call.
type stream struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	mu  sync.Mutex
	err error
}

// send writes one message envelope and flushes it.
func (s *stream) send(msg any) error {
	data, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	return s.envelope(0, data)
}

func (s *stream) envelope(flags byte, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	var hdr [5]byte
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(data)))
	if _, err := s.w.Write(hdr[:]); err != nil {
		s.err = err
		return err
	}
	if _, err := s.w.Write(data); err != nil {
		s.err = err
		return err
	}
	if err := s.rc.Flush(); err != nil {
		s.err = err
	}
	return s.err
}

// end writes the end-of-stream envelope, with err when there is one.
func (s *stream) end(e *rpcError) {
	body := map[string]any{}
	if e != nil {
		body["error"] = e
	}
	data, _ := json.Marshal(body)
	_ = s.envelope(flagEndStream, data)
}

// serverStream serves a server-streaming call: it reads the one request
// envelope into in, answers 200 and lets fn send messages; fn's error
// ends the stream.
func serverStream[In any](h *Handler, w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, in *In, s *stream) error) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, connectStreamCT) {
		writeRPCError(w, &rpcError{Code: "invalid_argument", Message: fmt.Sprintf("content type %q: this server speaks Connect with JSON only", ct)})
		return
	}
	ctx, cancel := rpcContext(r)
	defer cancel()
	in := new(In)
	err := readEnvelope(r.Body, in)
	w.Header().Set("Content-Type", connectStreamCT)
	w.WriteHeader(http.StatusOK)
	s := &stream{w: w, rc: http.NewResponseController(w)}
	if err == nil {
		_ = s.rc.Flush()
		err = fn(ctx, in, s)
	}
	if err != nil {
		s.end(h.toRPC(r, err))
		return
	}
	s.end(nil)
}

// readEnvelope reads one request envelope into v.
func readEnvelope(body io.Reader, v any) error {
	var hdr [5]byte
	if _, err := io.ReadFull(body, hdr[:]); err != nil {
		return invalidf("request envelope: " + err.Error())
	}
	if hdr[0]&flagCompressed != 0 {
		return &rpcError{Code: "unimplemented", Message: "compressed messages are not supported"}
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxRPCMessage {
		return invalidf("request message over 8 MiB")
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(body, data); err != nil {
		return invalidf("request message: " + err.Error())
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return invalidf("request message: " + err.Error())
	}
	return nil
}

// pbUint is a protobuf 32-bit unsigned integer in JSON: a number or a
// decimal string.
type pbUint uint32

func (u *pbUint) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("%s: not an unsigned 32-bit integer", b)
	}
	*u = pbUint(n)
	return nil
}

// pbEnum is a protobuf enum in JSON: its name or its number.
type pbEnum string

func (e *pbEnum) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*e = pbEnum(s)
		return nil
	}
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return fmt.Errorf("%s: not an enum value", b)
	}
	*e = pbEnum(strconv.Itoa(n))
	return nil
}
