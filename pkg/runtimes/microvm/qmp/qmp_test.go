package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeQEMU answers QMP on one end of a pipe the way QEMU 7.2 does. It is a
// fake for testing this client only.
func fakeQEMU(t *testing.T, conn net.Conn, answers map[string]string) {
	t.Helper()
	go func() {
		defer conn.Close()
		w := bufio.NewWriter(conn)
		w.WriteString(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}` + "\r\n")
		w.Flush()
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req struct {
				Execute string `json:"execute"`
				ID      string `json:"id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				return
			}
			idJSON, _ := json.Marshal(req.ID)
			switch req.Execute {
			case "qmp_capabilities":
				w.WriteString(`{"return": {}, "id": ` + string(idJSON) + "}\r\n")
			case "stop":
				w.WriteString(`{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "STOP"}` + "\r\n")
				w.WriteString(`{"return": {}, "id": ` + string(idJSON) + "}\r\n")
			case "quit":
				w.WriteString(`{"return": {}, "id": ` + string(idJSON) + "}\r\n")
				w.Flush()
				return
			default:
				if a, ok := answers[req.Execute]; ok {
					w.WriteString(`{"return": ` + a + `, "id": ` + string(idJSON) + "}\r\n")
				} else {
					w.WriteString(`{"id": ` + string(idJSON) + `, "error": {"class": "CommandNotFound", "desc": "The command ` + req.Execute + ` has not been found"}}` + "\r\n")
				}
			}
			w.Flush()
		}
	}()
}

func TestClient(t *testing.T) {
	host, qemu := net.Pipe()
	fakeQEMU(t, qemu, map[string]string{"query-status": `{"status": "running", "running": true}`})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if v := c.Greeting().QMP.Version.QEMU; v.Major != 7 || v.Minor != 2 {
		t.Fatalf("greeting version %+v", v)
	}

	tests := []struct {
		cmd     string
		want    string
		wantErr string
	}{
		{"query-status", `{"status": "running", "running": true}`, ""},
		{"stop", `{}`, ""},
		{"no-such", "", "CommandNotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			ret, err := c.Execute(ctx, tt.cmd, nil)
			if tt.wantErr != "" {
				var qe *Error
				if !errors.As(err, &qe) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(ret) != tt.want {
				t.Fatalf("got %s, %v; want %s", ret, err, tt.want)
			}
		})
	}
	select {
	case ev := <-c.Events():
		if ev.Event != "STOP" || ev.Time().Unix() != 1700000000 {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no STOP event")
	}
	if _, err := c.Execute(ctx, "quit", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after QEMU hung up")
	}
	if _, err := c.Execute(ctx, "query-status", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after hang-up: %v, want ErrClosed", err)
	}
}

func TestBadGreeting(t *testing.T) {
	host, qemu := net.Pipe()
	go func() {
		qemu.Write([]byte("hello\n"))
		qemu.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := New(ctx, host); err == nil {
		t.Fatal("a bad greeting must fail")
	}
}
