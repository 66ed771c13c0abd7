package guest_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/yamux"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestHostileGuestInteractive: what a guest says about processes, files
// and watches is bounded and checked on the host.
func TestHostileGuestInteractive(t *testing.T) {
	long := strings.Repeat("x", proto.MaxPathLen+1)
	c := hostileGuest(t, func(_ *yamux.Session, op proto.Op, fw *proto.FrameWriter) {
		switch op {
		case proto.OpSync:
			fw.WriteJSON(proto.FrameResult, &proto.Info{})
		case proto.OpProcList:
			fw.WriteJSON(proto.FrameResult, &proto.ProcList{Processes: make([]proto.ProcInfo, 2000)})
		case proto.OpProcStart:
			fw.WriteJSON(proto.FrameResult, &proto.ProcInfo{Pid: 1, Tag: long, Cmd: []string{long}})
		case proto.OpStat:
			fw.WriteJSON(proto.FrameResult, &tartarus.FileInfo{Name: long})
		case proto.OpWatch:
			fw.WriteJSON(proto.FrameData, []proto.WatchEvent{})
			fw.WriteJSON(proto.FrameData, []proto.WatchEvent{{Type: "explode", Name: "x"}})
		case proto.OpListFiles:
			fw.WriteJSON(proto.FrameData, []tartarus.FileInfo{{Name: "ok", Path: long}})
			fw.WriteJSON(proto.FrameResult, &proto.ListResult{Count: 1})
		}
	})
	ctx := ctxT(t)
	if _, err := c.ListProcesses(ctx); err == nil {
		t.Error("a listing of 2000 processes was accepted")
	}
	p, err := c.StartProcess(ctx, &tartarus.ProcessRequest{Cmd: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Tag) > proto.MaxTagLen+4 || len(p.Cmd[0]) > 300 {
		t.Errorf("kept a tag of %d and an argument of %d bytes", len(p.Tag), len(p.Cmd[0]))
	}
	if _, err := c.StatFile(ctx, "/x"); err == nil {
		t.Error("an entry name beyond MaxPathLen was accepted")
	}
	if _, err := c.ListFilesDepth(ctx, "/", 2); err == nil {
		t.Error("a listed path beyond MaxPathLen was accepted")
	}
	w, err := c.WatchDir(ctx, "/", true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Next(); err == nil || errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("unknown event type: %v", err)
	}
}
