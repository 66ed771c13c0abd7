package templates

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var dockerfileCases = []struct {
	name, in string
	want     []Instruction // Cmd and Args only
	err      string
}{
	{name: "all", in: `# comment
ARG BASE=python
FROM $BASE
RUN apt-get update && \
    # a comment inside
    apt-get install -y curl
RUN ["python3", "-c", "print(1)"]
COPY a.txt b/ /dst/
ADD files.tar /opt/
ENV A=1 B="two words"
ENV OLD style value
WORKDIR /app
USER nobody
ARG N
START python3 -m http.server 8080
READY curl -fs http://127.0.0.1:8080/
`, want: []Instruction{
		{Cmd: "FROM", Args: []string{"$BASE"}},
		{Cmd: "ARG", Args: []string{"BASE", "python"}},
		{Cmd: "RUN", Args: []string{"apt-get update &&  apt-get install -y curl"}},
		{Cmd: "RUN", Args: []string{"python3", "-c", "print(1)"}, Exec: true},
		{Cmd: "COPY", Args: []string{"a.txt", "b/", "/dst/"}},
		{Cmd: "ADD", Args: []string{"files.tar", "/opt/"}},
		{Cmd: "ENV", Args: []string{"A", "1", "B", "two words"}},
		{Cmd: "ENV", Args: []string{"OLD", "style value"}},
		{Cmd: "WORKDIR", Args: []string{"/app"}},
		{Cmd: "USER", Args: []string{"nobody"}},
		{Cmd: "ARG", Args: []string{"N", ""}, Bare: true},
		{Cmd: "START", Args: []string{"python3 -m http.server 8080"}},
		{Cmd: "READY", Args: []string{"curl -fs http://127.0.0.1:8080/"}},
	}},
	{name: "lowercase", in: "from base\nrun true\n", want: []Instruction{{Cmd: "FROM", Args: []string{"base"}}, {Cmd: "RUN", Args: []string{"true"}}}},
	{name: "empty", in: "# nothing\n", err: "no FROM"},
	{name: "run first", in: "RUN true\nFROM base\n", err: "first instruction must be FROM"},
	{name: "two FROMs", in: "FROM base\nFROM python\n", err: "one FROM only"},
	{name: "FROM AS", in: "FROM base AS b\n", err: "FROM takes one template name"},
	{name: "unknown", in: "FROM base\nFETCH x\n", err: `line 2: unknown instruction "FETCH"`},
	{name: "CMD", in: "FROM base\nCMD [\"sh\"]\n", err: "CMD is not supported"},
	{name: "ADD URL", in: "FROM base\nADD https://example.com/x /x\n", err: "URLs are not supported"},
	{name: "COPY from", in: "FROM base\nCOPY --from=b /x /y\n", err: "option --from=b is not supported"},
	{name: "COPY one arg", in: "FROM base\nCOPY x\n", err: "needs a source and a destination"},
	{name: "bad JSON", in: "FROM base\nRUN [\"a\",\n", err: "JSON array"},
	{name: "ENV bad", in: "FROM base\nENV 1A=x\n", err: "ENV"},
	{name: "WORKDIR relative", in: "FROM base\nWORKDIR app\n", err: "absolute path"},
	{name: "no args", in: "FROM base\nRUN\n", err: "RUN needs arguments"},
}

func TestParseDockerfile(t *testing.T) {
	for _, c := range dockerfileCases {
		t.Run(c.name, func(t *testing.T) {
			d, err := ParseDockerfile(strings.NewReader(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, tartarus.ErrInvalid) {
					t.Fatalf("err %v, want one with %q (invalid)", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []Instruction
			for _, in := range d.Instructions {
				got = append(got, Instruction{Cmd: in.Cmd, Args: in.Args, Exec: in.Exec, Bare: in.Bare})
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func FuzzParseDockerfile(f *testing.F) {
	for _, c := range dockerfileCases {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		d, err := ParseDockerfile(strings.NewReader(in))
		if err != nil {
			return
		}
		if len(d.Instructions) == 0 || d.Instructions[0].Cmd != "FROM" || len(d.Instructions[0].Args) != 1 {
			t.Fatalf("parsed without a FROM first: %+v", d.Instructions)
		}
		for _, in := range d.Instructions {
			if len(in.Args) == 0 {
				t.Fatalf("%s without arguments", in.Cmd)
			}
		}
	})
}

func TestIgnore(t *testing.T) {
	ig, err := ParseIgnore(strings.NewReader("# comment\n*.log\nsecret/\n!secret/keep.txt\n**/node_modules\n/build\n"))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		"a.log": true, "dir/a.log": false, "secret/x": true, "secret/keep.txt": false, "secret": true,
		"node_modules/x.js": true, "a/b/node_modules/x.js": true, "build/out": true, "src/build": false,
		"main.go": false, DockerfileInContext: true,
	} {
		if got := ig.Excluded(path); got != want {
			t.Errorf("Excluded(%q) = %v, want %v", path, got, want)
		}
	}
	if _, err := ParseIgnore(strings.NewReader("[\n")); err == nil {
		t.Error("a bad pattern was accepted")
	}
}

// tarOf makes a tar stream of the given headers; regular files get body.
func tarOf(t *testing.T, hs ...*tar.Header) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len("body"))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("body"))
		}
	}
	tw.Close()
	return &b
}

// TestUnpackContextStaysInside: names that climb out, absolute names,
// links and devices are refused; nothing is written outside the directory.
func TestUnpackContextStaysInside(t *testing.T) {
	for _, c := range []struct {
		name string
		h    *tar.Header
	}{
		{"dotdot", &tar.Header{Name: "../escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}},
		{"deep dotdot", &tar.Header{Name: "a/../../escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}},
		{"absolute", &tar.Header{Name: "/tmp/escape.txt", Typeflag: tar.TypeReg, Mode: 0o644}},
		{"symlink", &tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}},
		{"hardlink", &tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}},
		{"device", &tar.Header{Name: "dev", Typeflag: tar.TypeChar}},
	} {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "ctx")
			os.Mkdir(dir, 0o755)
			err := UnpackContext(tarOf(t, c.h), dir)
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("err %v, want invalid", err)
			}
			if _, err := os.Stat(filepath.Join(parent, "escape.txt")); err == nil {
				t.Fatal("a file was written outside the context")
			}
		})
	}
	dir := t.TempDir()
	err := UnpackContext(tarOf(t, &tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "a/b.txt", Typeflag: tar.TypeReg, Mode: 0o755}), dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a", "b.txt")); err != nil || string(b) != "body" {
		t.Fatalf("a/b.txt: %q %v", b, err)
	}
}

func TestResolveCopy(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"app.py", "lib/x.py", "lib/y.log", "notes.md"} {
		p := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(f), 0o644)
	}
	ig, _ := ParseIgnore(strings.NewReader("*.log\n**/*.log\n"))
	dsts := func(files []copyFile) []string {
		var out []string
		for _, f := range files {
			out = append(out, f.dst)
		}
		return out
	}
	for _, c := range []struct {
		srcs []string
		dst  string
		want []string
	}{
		{[]string{"app.py"}, "/srv/main.py", []string{"/srv/main.py"}},
		{[]string{"app.py"}, "/srv/", []string{"/srv/app.py"}},
		{[]string{"app.py"}, "rel/", []string{"/work/rel/app.py"}},
		{[]string{"lib"}, "/opt/lib", []string{"/opt/lib/x.py"}},
		{[]string{"*.py", "notes.md"}, "/d", []string{"/d/app.py", "/d/notes.md"}},
		{[]string{"."}, "/ctx/", []string{"/ctx/app.py", "/ctx/lib/x.py", "/ctx/notes.md"}},
	} {
		files, _, err := resolveCopy(dir, ig, c.srcs, c.dst, "/work")
		if err != nil {
			t.Errorf("COPY %v %s: %v", c.srcs, c.dst, err)
			continue
		}
		if got := dsts(files); !reflect.DeepEqual(got, c.want) {
			t.Errorf("COPY %v %s: %v, want %v", c.srcs, c.dst, got, c.want)
		}
	}
	for _, srcs := range [][]string{{"../etc/passwd"}, {"missing.txt"}, {"lib/y.log"}} {
		if _, _, err := resolveCopy(dir, ig, srcs, "/x", "/"); err == nil {
			t.Errorf("COPY %v was accepted", srcs)
		}
	}
	// The digest follows the content.
	_, d1, _ := resolveCopy(dir, ig, []string{"app.py"}, "/a", "/")
	os.WriteFile(filepath.Join(dir, "app.py"), []byte("changed"), 0o644)
	_, d2, _ := resolveCopy(dir, ig, []string{"app.py"}, "/a", "/")
	if d1 == d2 {
		t.Error("the digest did not change with the file")
	}
}
