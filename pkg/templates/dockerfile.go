// Package templates makes tenant templates from a Dockerfile or an OCI
// image. A Dockerfile build runs every step inside a microVM sandbox (never
// on the host), keeps each finished step as a cached layer keyed by the
// digest of what it depends on, and saves the result, memory included, as
// a template of the building tenant. An image's layers are unpacked on the
// host inside an os.Root, so no entry reaches outside the new tree.
//
// The Dockerfile language here is a subset of Docker's: FROM (a Tartarus
// template), RUN, COPY and ADD (from the build context; ADD unpacks a local
// tar), ENV, WORKDIR, USER and ARG, plus two of Tartarus's own: START, a
// command started in the background before the template is snapshotted,
// and READY, a command polled until it succeeds before the snapshot is
// taken. Sandboxes created from the template find the START process
// running (a server already listening).
package templates

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Limits of a Dockerfile.
const (
	MaxDockerfileBytes = 1 << 20
	MaxInstructions    = 256
)

// Instruction is one parsed line of a Dockerfile.
type Instruction struct {
	// Cmd is the instruction, upper case: FROM, RUN, COPY, ADD, ENV,
	// WORKDIR, USER, ARG, START, READY.
	Cmd string
	// Args are its arguments: for RUN, START and READY one shell command
	// (Exec false) or an argv (Exec true); for COPY and ADD the sources
	// then the destination; for ENV and ARG pairs key, value (an ARG
	// without a default has an empty value and Bare set); otherwise one
	// word.
	Args []string
	Exec bool
	Bare bool
	// Line is where the instruction starts, counting from 1.
	Line int
	// Text is the instruction as written (continuations joined), for logs
	// and the cache key.
	Text string
}

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	Instructions []Instruction
}

// From is the FROM instruction's template name.
func (d *Dockerfile) From() string { return d.Instructions[0].Args[0] }

// ParseDockerfile reads a Dockerfile. Every problem is reported with its line;
// instructions this builder does not know are refused rather than ignored,
// so that a build never silently differs from what was written.
func ParseDockerfile(r io.Reader) (*Dockerfile, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxDockerfileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read Dockerfile: %w", err)
	}
	if len(b) > MaxDockerfileBytes {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "Dockerfile: larger than %d bytes", MaxDockerfileBytes)
	}
	d := &Dockerfile{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 64<<10), MaxDockerfileBytes)
	var (
		cur   strings.Builder
		start int
		n     int
		errs  []string
	)
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		in, err := parseInstruction(text)
		if err != nil {
			errs = append(errs, fmt.Sprintf("line %d: %v", start, err))
			return
		}
		in.Line = start
		d.Instructions = append(d.Instructions, in)
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 {
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			start = n
		} else if strings.HasPrefix(trimmed, "#") {
			continue // comments inside a continued instruction
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`))
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	if err := sc.Err(); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "Dockerfile: %v", err)
	}
	flush()
	if len(d.Instructions) > MaxInstructions {
		errs = append(errs, fmt.Sprintf("more than %d instructions", MaxInstructions))
	}
	if len(errs) == 0 {
		first := -1
		for i, in := range d.Instructions {
			if in.Cmd != "ARG" {
				first = i
				break
			}
		}
		switch {
		case first < 0:
			errs = append(errs, "no FROM instruction")
		case d.Instructions[first].Cmd != "FROM":
			errs = append(errs, fmt.Sprintf("line %d: the first instruction must be FROM (after ARGs)", d.Instructions[first].Line))
		default:
			for _, in := range d.Instructions[first+1:] {
				if in.Cmd == "FROM" {
					errs = append(errs, fmt.Sprintf("line %d: one FROM only (multi-stage builds are not supported)", in.Line))
				}
			}
			// ARGs before FROM only parameterise FROM; keep FROM first.
			pre := d.Instructions[:first]
			d.Instructions = append([]Instruction{d.Instructions[first]}, append(append([]Instruction{}, pre...), d.Instructions[first+1:]...)...)
		}
	}
	if len(errs) > 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "Dockerfile: %s", strings.Join(errs, "; "))
	}
	return d, nil
}

// parseInstruction parses one joined instruction line.
func parseInstruction(text string) (Instruction, error) {
	word, rest, _ := strings.Cut(text, " ")
	in := Instruction{Cmd: strings.ToUpper(word), Text: text}
	rest = strings.TrimSpace(rest)
	if rest == "" {
		return in, fmt.Errorf("%s needs arguments", in.Cmd)
	}
	switch in.Cmd {
	case "FROM":
		f := strings.Fields(rest)
		if len(f) != 1 {
			return in, fmt.Errorf("FROM takes one template name (no --platform, no AS)")
		}
		in.Args = f
	case "RUN", "START", "READY":
		if strings.HasPrefix(rest, "[") {
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil || len(argv) == 0 {
				return in, fmt.Errorf("%s: a JSON array of strings, or a shell command", in.Cmd)
			}
			in.Args, in.Exec = argv, true
		} else {
			in.Args = []string{rest}
		}
	case "COPY", "ADD":
		var args []string
		if strings.HasPrefix(rest, "[") {
			if err := json.Unmarshal([]byte(rest), &args); err != nil {
				return in, fmt.Errorf("%s: a JSON array of strings: %v", in.Cmd, err)
			}
		} else {
			args = strings.Fields(rest)
		}
		for _, a := range args {
			if strings.HasPrefix(a, "--") {
				return in, fmt.Errorf("%s: option %s is not supported", in.Cmd, a)
			}
			if in.Cmd == "ADD" && (strings.Contains(a, "://") || strings.HasPrefix(a, "git@")) {
				return in, fmt.Errorf("ADD: URLs are not supported; put the file in the build context")
			}
		}
		if len(args) < 2 {
			return in, fmt.Errorf("%s needs a source and a destination", in.Cmd)
		}
		in.Args = args
	case "ENV":
		pairs, err := parseEnv(rest)
		if err != nil {
			return in, err
		}
		in.Args = pairs
	case "ARG":
		name, val, ok := strings.Cut(rest, "=")
		if !validVar(name) || strings.ContainsAny(rest, " \t") && !ok {
			return in, fmt.Errorf("ARG %q: want NAME or NAME=default", rest)
		}
		in.Args, in.Bare = []string{name, unquote(val)}, !ok
	case "WORKDIR":
		if !strings.HasPrefix(rest, "/") && !strings.HasPrefix(rest, "$") {
			return in, fmt.Errorf("WORKDIR %q: an absolute path", rest)
		}
		in.Args = []string{rest}
	case "USER":
		if strings.ContainsAny(rest, " \t") {
			return in, fmt.Errorf("USER %q: one user name or uid", rest)
		}
		in.Args = []string{rest}
	case "LABEL", "EXPOSE", "MAINTAINER", "CMD", "ENTRYPOINT", "SHELL", "HEALTHCHECK", "VOLUME", "STOPSIGNAL", "ONBUILD":
		return in, fmt.Errorf("%s is not supported by Tartarus builds (START and READY say what runs)", in.Cmd)
	default:
		return in, fmt.Errorf("unknown instruction %q", word)
	}
	return in, nil
}

// parseEnv reads `ENV K=V K2="V 2"` or the old `ENV K V` form.
func parseEnv(rest string) ([]string, error) {
	if k, v, ok := strings.Cut(rest, " "); ok && !strings.Contains(k, "=") {
		if !validVar(k) {
			return nil, fmt.Errorf("ENV: bad name %q", k)
		}
		return []string{k, strings.TrimSpace(v)}, nil
	}
	var out []string
	for _, w := range splitQuoted(rest) {
		k, v, ok := strings.Cut(w, "=")
		if !ok || !validVar(k) {
			return nil, fmt.Errorf("ENV: want NAME=value, got %q", w)
		}
		out = append(out, k, unquote(v))
	}
	return out, nil
}

// splitQuoted splits on spaces outside double or single quotes.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote = r
			cur.WriteRune(r)
		case r == ' ' || r == '\t':
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		return v[1 : len(v)-1]
	}
	return v
}

// validVar reports whether s is a shell variable name.
func validVar(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// expand replaces $NAME and ${NAME} from vars (ENV and ARG values so far),
// as Docker does in every instruction but RUN, START and READY (there the
// shell does it).
func expand(s string, vars map[string]string) string {
	return os.Expand(s, func(k string) string { return vars[k] })
}
