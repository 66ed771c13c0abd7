package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Bounds of one watch.
const (
	maxWatchDirs  = 8192 // directories watched below the root
	watchQueueLen = 4096 // events waiting for the host; beyond, one overflow event
	watchBatch    = 50 * time.Millisecond
)

const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// watcher is one inotify instance watching a tree.
type watcher struct {
	f         *os.File
	fd        int
	root      string
	recursive bool

	mu   sync.Mutex
	dirs map[int]string // watch descriptor → directory
}

// add watches dir and, when recursive, the directories below it.
func (w *watcher) add(dir string) error {
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	w.mu.Lock()
	w.dirs[wd] = dir
	n := len(w.dirs)
	w.mu.Unlock()
	if n > maxWatchDirs {
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "watch %s: more than %d directories", w.root, maxWatchDirs)
	}
	if !w.recursive {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // gone or unreadable since: nothing below to watch
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := w.add(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	return nil
}

// watch streams the changes below a directory until the host closes the
// stream. Events queue up to watchQueueLen; past that they are dropped and
// one overflow event says so.
func (a *Agent) watch(st *yamux.Stream, fw *proto.FrameWriter, req *proto.Request) {
	fail := func(err error) { _ = fw.WriteJSON(proto.FrameError, proto.ErrorFrom(err)) }
	fi, err := os.Stat(req.Path)
	if err != nil {
		fail(err)
		return
	}
	if !fi.IsDir() {
		fail(tartarus.Errorf(tartarus.ErrInvalid, "watch %s: not a directory", req.Path))
		return
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		fail(fmt.Errorf("inotify: %w", err))
		return
	}
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, root: req.Path,
		recursive: req.Watch != nil && req.Watch.Recursive, dirs: map[int]string{}}
	defer w.f.Close()
	if err := w.add(req.Path); err != nil {
		fail(err)
		return
	}
	// The watch is in place: say so, so the host may change files now.
	if err := fw.WriteJSON(proto.FrameData, []proto.WatchEvent{}); err != nil {
		return
	}
	go func() {
		// The host sends nothing more; its end of the stream ends the watch.
		_, _ = io.Copy(io.Discard, st)
		_ = st.SetWriteDeadline(time.Unix(1, 0))
		w.f.Close()
	}()

	events := make(chan proto.WatchEvent, watchQueueLen)
	var overflow sync.Mutex
	overflowed := false
	push := func(ev proto.WatchEvent) {
		select {
		case events <- ev:
		default:
			overflow.Lock()
			overflowed = true
			overflow.Unlock()
		}
	}
	go func() {
		defer close(events)
		w.read(push)
	}()
	for {
		ev, ok := <-events
		if !ok {
			return
		}
		batch := []proto.WatchEvent{ev}
	more:
		for len(batch) < proto.MaxWatchEvents {
			select {
			case ev, ok := <-events:
				if !ok {
					break more
				}
				batch = append(batch, ev)
			default:
				break more
			}
		}
		overflow.Lock()
		if overflowed {
			batch = append(batch, proto.WatchEvent{Type: proto.WatchOverflow})
			overflowed = false
		}
		overflow.Unlock()
		if fw.WriteJSON(proto.FrameData, batch) != nil {
			return
		}
	}
}

// read turns inotify records into events until the inotify file closes.
func (w *watcher) read(push func(proto.WatchEvent)) {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int(int32(binary.NativeEndian.Uint32(buf[off:])))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			end := off + unix.SizeofInotifyEvent + nameLen
			if end > n {
				break
			}
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:end]), "\x00")
			off = end
			if mask&unix.IN_Q_OVERFLOW != 0 {
				push(proto.WatchEvent{Type: proto.WatchOverflow})
				continue
			}
			w.mu.Lock()
			dir, ok := w.dirs[wd]
			if mask&unix.IN_IGNORED != 0 {
				delete(w.dirs, wd)
			}
			w.mu.Unlock()
			if !ok || mask&unix.IN_IGNORED != 0 {
				continue
			}
			full := filepath.Join(dir, name)
			rel, err := filepath.Rel(w.root, full)
			if err != nil {
				continue
			}
			isDir := mask&unix.IN_ISDIR != 0
			for _, t := range eventTypes(mask) {
				if name == "" && t != proto.WatchRemove && t != proto.WatchRename {
					continue // the directory itself changed attributes: its parent reports it
				}
				push(proto.WatchEvent{Type: t, Name: rel, IsDir: isDir})
			}
			if isDir && w.recursive && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
				if err := w.add(full); err != nil && !errors.Is(err, unix.ENOENT) {
					push(proto.WatchEvent{Type: proto.WatchOverflow})
				}
			}
		}
	}
}

// eventTypes maps an inotify mask to event types; a move into the tree is a
// create, a move out of it a rename.
func eventTypes(mask uint32) []string {
	var out []string
	if mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
		out = append(out, proto.WatchCreate)
	}
	if mask&unix.IN_MODIFY != 0 {
		out = append(out, proto.WatchWrite)
	}
	if mask&(unix.IN_DELETE|unix.IN_DELETE_SELF) != 0 {
		out = append(out, proto.WatchRemove)
	}
	if mask&(unix.IN_MOVED_FROM|unix.IN_MOVE_SELF) != 0 {
		out = append(out, proto.WatchRename)
	}
	if mask&unix.IN_ATTRIB != 0 {
		out = append(out, proto.WatchChmod)
	}
	return out
}
