package container

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fakeNets is a network manager that only records (unit tests; the real
// one is proven in containertest.Network).
type fakeNets struct{ live map[string]netns.Spec }

func (f *fakeNets) Create(_ context.Context, id string, spec netns.Spec) (*netns.Sandbox, error) {
	if _, ok := f.live[id]; ok {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "network of sandbox %s", id)
	}
	f.live[id] = spec
	return &netns.Sandbox{ID: id, GuestNetns: "/run/netns/x-" + id + "@g"}, nil
}

func (f *fakeNets) Recover(_ context.Context, id string, spec netns.Spec) (*netns.Sandbox, error) {
	f.live[id] = spec
	return &netns.Sandbox{ID: id}, nil
}

func (f *fakeNets) Destroy(_ context.Context, id string) error { delete(f.live, id); return nil }

func (f *fakeNets) AttachGuest(context.Context, string, int) error { return nil }

func TestNetworkState(t *testing.T) {
	ctx := context.Background()
	s := NetworkState{Dir: t.TempDir()}
	nets := &fakeNets{live: map[string]netns.Spec{}}
	open := &tartarus.NetworkSpec{Mode: tartarus.NetworkOpen}

	if ns, err := s.Create(ctx, nets, "test", "a", nil); ns != "" || err != nil || len(nets.live) != 0 {
		t.Errorf("no spec: %q %v %v, want nothing made", ns, err, nets.live)
	}
	if _, err := s.Create(ctx, nil, "test", "a", open); !errors.Is(err, tartarus.ErrNotImplemented) {
		t.Errorf("no manager: %v, want ErrNotImplemented", err)
	}
	if _, err := s.Create(ctx, nets, "test", "a", &tartarus.NetworkSpec{Mode: "bogus"}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("bad mode: %v, want ErrInvalid", err)
	}
	ns, err := s.Create(ctx, nets, "test", "a", open)
	if err != nil || ns == "" || !s.Has("a") || !nets.live["a"].GuestNetns {
		t.Fatalf("create: %q %v; has %v; live %v", ns, err, s.Has("a"), nets.live)
	}
	if b, err := os.ReadFile(s.ResolvConfPath("a")); err != nil || string(b) != ResolvConf {
		t.Errorf("resolv.conf %q %v", b, err)
	}
	// A second create of the same id leaves the first network and record.
	if _, err := s.Create(ctx, nets, "test", "a", open); !errors.Is(err, tartarus.ErrAlreadyExists) || !s.Has("a") {
		t.Errorf("second create: %v, has %v: want ErrAlreadyExists and the record kept", err, s.Has("a"))
	}
	delete(nets.live, "a") // a new agent's manager knows nothing
	if err := s.Recover(ctx, nets, "a"); err != nil || !nets.live["a"].GuestNetns {
		t.Errorf("recover: %v %v", err, nets.live)
	}
	if err := s.Recover(ctx, nets, "none"); err != nil {
		t.Errorf("recover without a network: %v", err)
	}
	if err := s.Destroy(ctx, nets, "a"); err != nil || s.Has("a") || len(nets.live) != 0 {
		t.Errorf("destroy: %v, has %v, live %v", err, s.Has("a"), nets.live)
	}
	if _, err := os.Stat(s.ResolvConfPath("a")); !os.IsNotExist(err) {
		t.Errorf("resolv.conf after destroy: %v", err)
	}
}

func TestPidsLimit(t *testing.T) {
	for _, tt := range []struct {
		mb   int
		want int64
	}{{128, 256}, {1024, 256}, {4096, 1024}, {65536, 4096}} {
		if got := PidsLimit(tt.mb); got != tt.want {
			t.Errorf("PidsLimit(%d) = %d, want %d", tt.mb, got, tt.want)
		}
	}
}
