package guest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// hostileGuest speaks the protocol but answers as code that took over the
// guest might: every request gets answer(op, frame writer).
func hostileGuest(t *testing.T, answer func(sess *yamux.Session, op proto.Op, fw *proto.FrameWriter)) *guest.Client {
	t.Helper()
	hostEnd, guestEnd := socketpair(t)
	go func() {
		r, err := proto.ServerHandshake(guestEnd)
		if err != nil {
			return
		}
		sess, err := yamux.Server(struct {
			io.Reader
			io.WriteCloser
		}{r, guestEnd}, proto.YamuxConfig(testLogger(t), proto.GuestWindow))
		if err != nil {
			return
		}
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				fr := proto.NewFrameReader(st)
				_, p, err := fr.Next()
				if err != nil {
					return
				}
				req, err := proto.DecodeRequest(p)
				if err != nil {
					return
				}
				answer(sess, req.Op, proto.NewFrameWriter(st))
			}()
		}
	}()
	t.Cleanup(func() { guestEnd.Close() })
	c, err := guest.Dial(ctxT(t), hostEnd, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestHostileGuest(t *testing.T) {
	long := strings.Repeat("x", 100_000)
	t.Run("long strings are clipped", func(t *testing.T) {
		c := hostileGuest(t, func(_ *yamux.Session, op proto.Op, fw *proto.FrameWriter) {
			switch op {
			case proto.OpSync:
				fw.WriteJSON(proto.FrameResult, &proto.Info{AgentVersion: long, Kernel: long, Hostname: long, BootError: long})
			default:
				fw.WriteJSON(proto.FrameError, &proto.Error{Code: proto.CodeNotFound, Message: long})
			}
		})
		in := c.Info()
		if len(in.Hostname) > 300 || len(in.Kernel) > 300 || len(in.AgentVersion) > 300 || len(in.BootError) > 1100 {
			t.Errorf("info kept %d/%d/%d/%d bytes", len(in.Hostname), len(in.Kernel), len(in.AgentVersion), len(in.BootError))
		}
		err := c.Ping(ctxT(t))
		if !errors.Is(err, tartarus.ErrNotFound) || len(err.Error()) > 1200 {
			t.Errorf("error of %d bytes: %.80v", len(err.Error()), err)
		}
	})
	t.Run("endless listing", func(t *testing.T) {
		c := hostileGuest(t, func(_ *yamux.Session, op proto.Op, fw *proto.FrameWriter) {
			if op == proto.OpSync {
				fw.WriteJSON(proto.FrameResult, &proto.Info{})
				return
			}
			batch := make([]tartarus.FileInfo, 5000)
			for i := range batch {
				batch[i].Name = fmt.Sprint(i)
			}
			for {
				if fw.WriteJSON(proto.FrameData, batch) != nil {
					return
				}
			}
		})
		_, err := c.ListFiles(ctxT(t), "/")
		if !errors.Is(err, tartarus.ErrResourceExhausted) {
			t.Fatalf("list: %v", err)
		}
	})
	t.Run("listing of huge names", func(t *testing.T) {
		// 300 frames of one ~1 MiB name each once made the host hold 299 MiB.
		name := strings.Repeat("n", proto.MaxPayload-100)
		c := hostileGuest(t, func(_ *yamux.Session, op proto.Op, fw *proto.FrameWriter) {
			if op == proto.OpSync {
				fw.WriteJSON(proto.FrameResult, &proto.Info{})
				return
			}
			for range 300 {
				if fw.WriteJSON(proto.FrameData, []tartarus.FileInfo{{Name: name}}) != nil {
					return
				}
			}
		})
		list, err := c.ListFiles(ctxT(t), "/")
		if !errors.Is(err, tartarus.ErrResourceExhausted) || list != nil {
			t.Fatalf("list: %d entries, %v; want ErrResourceExhausted", len(list), err)
		}
	})
	t.Run("listing past the total", func(t *testing.T) {
		// Names of legal length, but more bytes of them than the host keeps.
		name := strings.Repeat("m", guest.MaxNameLen)
		batch := make([]tartarus.FileInfo, proto.MaxPayload/(guest.MaxNameLen+200))
		for i := range batch {
			batch[i].Name = name
		}
		c := hostileGuest(t, func(_ *yamux.Session, op proto.Op, fw *proto.FrameWriter) {
			if op == proto.OpSync {
				fw.WriteJSON(proto.FrameResult, &proto.Info{})
				return
			}
			for i := 0; i <= guest.MaxListBytes/(len(batch)*len(name))+1; i++ {
				if fw.WriteJSON(proto.FrameData, batch) != nil {
					return
				}
			}
			fw.WriteJSON(proto.FrameResult, struct{}{})
		})
		_, err := c.ListFiles(ctxT(t), "/")
		if !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.Contains(err.Error(), "in all") {
			t.Fatalf("list: %v; want ErrResourceExhausted for the total", err)
		}
	})
	t.Run("guest opens a stream", func(t *testing.T) {
		c := hostileGuest(t, func(sess *yamux.Session, op proto.Op, fw *proto.FrameWriter) {
			fw.WriteJSON(proto.FrameResult, &proto.Info{})
			if op == proto.OpPing {
				if st, err := sess.OpenStream(); err == nil {
					st.Write(make([]byte, 100_000))
				}
			}
		})
		c.Ping(ctxT(t))
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("session kept a stream the guest opened")
		}
		if err := c.Ping(context.Background()); !errors.Is(err, tartarus.ErrUnavailable) {
			t.Fatalf("ping after: %v", err)
		}
	})
}
