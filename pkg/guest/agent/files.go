package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fileChunk is the payload size of file data frames.
const fileChunk = 256 << 10

// listChunk bounds the JSON of one directory-listing frame.
const listChunk = 512 << 10

// readFile streams path to the host. The host may stop reading at any time
// by closing the stream, which the watcher turns into a failed write.
func (a *Agent) readFile(st *yamux.Stream, fw *proto.FrameWriter, path string) (any, error) {
	a.activity.touch(a.clock.Now())
	defer func() { a.activity.touch(a.clock.Now()) }()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "read %s: is a directory", path)
	}
	go func() {
		// The host sends nothing after its request; any end of its side
		// before our result means it gave up.
		_, _ = io.Copy(io.Discard, st)
		_ = st.SetWriteDeadline(time.Unix(1, 0))
	}()
	buf := make([]byte, fileChunk)
	var size int64
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if werr := fw.Write(proto.FrameData, buf[:n]); werr != nil {
				return nil, fmt.Errorf("send %s: %w", path, werr)
			}
			size += int64(n)
		}
		if err == io.EOF {
			return &proto.FileResult{Size: size}, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// writeFile receives data frames into a temporary file beside path and
// renames it over path on FrameEOF, creating parent directories. A stream
// that ends without FrameEOF leaves nothing behind.
func (a *Agent) writeFile(fr *proto.FrameReader, path string, mode uint32) (any, error) {
	a.activity.touch(a.clock.Now())
	defer func() { a.activity.touch(a.clock.Now()) }()
	if mode == 0 {
		mode = proto.DefaultMode
	}
	if path == "/" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "write /: is a directory")
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "write %s: is a directory", path)
	}
	tmp, err := os.CreateTemp(dir, ".tartarus-upload-*")
	if err != nil {
		return nil, err
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var size int64
	for {
		t, p, err := fr.Next()
		if err != nil {
			return nil, fmt.Errorf("receive %s: %w", path, err)
		}
		switch t {
		case proto.FrameData:
			if _, err := tmp.Write(p); err != nil {
				return nil, err
			}
			size += int64(len(p))
			continue
		case proto.FrameEOF:
		default:
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "write %s: unexpected %s frame", path, t)
		}
		break
	}
	if err := tmp.Chmod(proto.ModeFromWire(mode)); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	committed = true
	return &proto.FileResult{Size: size}, nil
}

// drain reads frames until the host's FrameEOF or the stream's end, so a
// host still sending after an error never blocks on a full window.
func drain(fr *proto.FrameReader) {
	for {
		t, _, err := fr.Next()
		if err != nil || t == proto.FrameEOF {
			return
		}
	}
}

// listFiles sends the entries of a directory, and of its subdirectories
// down to depth levels, as JSON arrays in data frames. Symbolic links are
// listed, never followed.
func (a *Agent) listFiles(fw *proto.FrameWriter, path string, depth int) (any, error) {
	a.activity.touch(a.clock.Now())
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "list %s: not a directory", path)
	}
	var batch []tartarus.FileInfo
	size, count := 0, 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := fw.WriteJSON(proto.FrameData, batch)
		batch, size = batch[:0], 0
		return err
	}
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if level > 1 {
				return nil // a subdirectory we may not read, or gone
			}
			return err
		}
		for _, de := range entries {
			info, err := de.Info()
			if err != nil {
				continue // removed since ReadDir
			}
			fi := fileInfo(filepath.Join(dir, de.Name()), info)
			// An upper bound of the entry's JSON size (escapes take 6 bytes).
			est := 6*(len(fi.Name)+len(fi.Path)+len(fi.SymlinkTarget)) + 200
			if size+est > listChunk {
				if err := flush(); err != nil {
					return err
				}
			}
			batch = append(batch, fi)
			size += est
			count++
			if count > maxListWalk {
				return tartarus.Errorf(tartarus.ErrResourceExhausted, "list %s: more than %d entries", path, maxListWalk)
			}
			if de.IsDir() && level < depth {
				if err := walk(fi.Path, level+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(path, 1); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return &proto.ListResult{Count: count}, nil
}

// maxListWalk bounds the entries one listing sends.
const maxListWalk = 100_000

// listDepth is how many levels a list request descends (at least 1).
func listDepth(req *proto.Request) int {
	if req.File == nil || req.File.Depth < 1 {
		return 1
	}
	return req.File.Depth
}

// fileInfo describes the entry at path from its lstat information.
func fileInfo(path string, info os.FileInfo) tartarus.FileInfo {
	fi := tartarus.FileInfo{
		Name:    info.Name(),
		Path:    path,
		Size:    info.Size(),
		Mode:    info.Mode(),
		ModTime: info.ModTime().UTC(),
		IsDir:   info.IsDir(),
	}
	if info.Mode()&os.ModeSymlink != 0 {
		if t, err := os.Readlink(path); err == nil {
			fi.SymlinkTarget = t
		}
	}
	return fi
}
