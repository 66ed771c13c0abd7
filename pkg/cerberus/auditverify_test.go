package cerberus

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeChain appends n entries to a fresh log in dir that rotates every
// few entries, and returns the log's files, oldest first.
func writeChain(t *testing.T, dir string, n int) []string {
	t.Helper()
	ctx := context.Background()
	clk := newFakeClock()
	l, err := OpenAuditLog(AuditLogConfig{Dir: dir, MaxSize: 2 << 10, Keep: 100, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		clk.Advance(time.Millisecond)
		if err := l.Append(ctx, AuditRecord{Timestamp: clk.Now(), RequestID: fmt.Sprintf("r%03d", i), Result: AuditResultSuccess,
			Path: "/v1/sandboxes"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	names, err := auditFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func editFile(t *testing.T, file string, edit func(lines [][]byte) [][]byte) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	lines = edit(lines)
	out := append(bytes.Join(lines, []byte("\n")), '\n')
	if len(lines) == 0 {
		out = nil
	}
	if err := os.WriteFile(file, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuditVerify(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		tamper   func(t *testing.T, dir string, files []string)
		wantFile int // index into files of the reported break; -1: none
		wantLine int
	}{
		{name: "untouched", tamper: func(*testing.T, string, []string) {}, wantFile: -1},
		{name: "one field edited", wantFile: 1, wantLine: 4, tamper: func(t *testing.T, dir string, files []string) {
			editFile(t, filepath.Join(dir, files[1]), func(l [][]byte) [][]byte {
				l[2] = bytes.Replace(l[2], []byte(`"success"`), []byte(`"denied"`), 1)
				return l
			})
		}},
		{name: "one line deleted", wantFile: 1, wantLine: 3, tamper: func(t *testing.T, dir string, files []string) {
			editFile(t, filepath.Join(dir, files[1]), func(l [][]byte) [][]byte { return append(l[:2], l[3:]...) })
		}},
		{name: "first line of a later file deleted", wantFile: 2, wantLine: 1, tamper: func(t *testing.T, dir string, files []string) {
			editFile(t, filepath.Join(dir, files[2]), func(l [][]byte) [][]byte { return l[1:] })
		}},
		{name: "last line of a rotated file deleted", wantFile: 2, wantLine: 1, tamper: func(t *testing.T, dir string, files []string) {
			editFile(t, filepath.Join(dir, files[1]), func(l [][]byte) [][]byte { return l[:len(l)-1] })
		}},
		{name: "two lines swapped", wantFile: 0, wantLine: 3, tamper: func(t *testing.T, dir string, files []string) {
			editFile(t, filepath.Join(dir, files[0]), func(l [][]byte) [][]byte { l[2], l[3] = l[3], l[2]; return l })
		}},
		{name: "a rotated file removed from the middle", wantFile: 2, wantLine: 1, tamper: func(t *testing.T, dir string, files []string) {
			if err := os.Remove(filepath.Join(dir, files[1])); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "chain fields stripped from a line", wantFile: 0, wantLine: 2, tamper: func(t *testing.T, dir string, files []string) {
			editFile(t, filepath.Join(dir, files[0]), func(l [][]byte) [][]byte {
				i := bytes.Index(l[1], []byte(`"timestamp"`))
				l[1] = append([]byte("{"), l[1][i:]...)
				return l
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			files := writeChain(t, dir, 60)
			if len(files) < 4 {
				t.Fatalf("only %d files; the test needs rotations", len(files))
			}
			tt.tamper(t, dir, files)
			rep, err := VerifyAuditDir(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantFile < 0 {
				if rep.Broken != nil || rep.Entries != 60 || rep.FirstSeq != 1 || rep.LastSeq != 60 || len(rep.Head) != 64 {
					t.Fatalf("untouched log: %+v", rep)
				}
				return
			}
			if rep.Broken == nil {
				t.Fatalf("tampering not reported: %+v", rep)
			}
			if rep.Broken.File != files[tt.wantFile] || rep.Broken.Line != tt.wantLine {
				t.Errorf("break at %s, want %s line %d", rep.Broken, files[tt.wantFile], tt.wantLine)
			}
		})
	}
}

func TestAuditChainSurvivesReopenAndTornLine(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeChain(t, dir, 10)
	// A crash in the middle of a write.
	f, _ := os.OpenFile(filepath.Join(dir, auditFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":11,"prev":"ab`)
	f.Close()
	clk := newFakeClock()
	l, err := OpenAuditLog(AuditLogConfig{Dir: dir, MaxSize: 2 << 10, Keep: 100, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := l.Append(ctx, AuditRecord{Timestamp: clk.Now(), Result: AuditResultSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	rep, err := VerifyAuditDir(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Broken != nil || rep.Torn != 1 || rep.Entries != 15 || rep.LastSeq != 16 {
		t.Fatalf("after a torn line and a reopen: %+v", rep)
	}
	if err := l.Append(ctx, AuditRecord{Seq: 3}); err == nil || !strings.Contains(err.Error(), "seq") {
		t.Errorf("a record carrying its own seq: %v", err)
	}
}
