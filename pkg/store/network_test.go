package store

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestNetworkSpecKept(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "")
	plain := sandbox("plain", "a", tartarus.StateRunning)
	withNet := sandbox("net", "a", tartarus.StateRunning)
	withNet.Network = &tartarus.NetworkSpec{Mode: "restricted", Allow: []string{"*.example.com"}, EgressBitsPerSec: 1e6}
	for _, sb := range []*tartarus.Sandbox{plain, withNet} {
		if err := s.Create(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		id   string
		want *tartarus.NetworkSpec
	}{{"plain", nil}, {"net", withNet.Network}} {
		got, err := s.Get(ctx, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Network, tc.want) {
			t.Errorf("%s: network %+v, want %+v", tc.id, got.Network, tc.want)
		}
	}
	open := &tartarus.NetworkSpec{Mode: "open"}
	got, err := s.SetNetwork(ctx, "net", open)
	if err != nil || !reflect.DeepEqual(got.Network, open) {
		t.Fatalf("SetNetwork: %+v, %v", got, err)
	}
	if _, err := s.Move(ctx, "plain", tartarus.StateRunning, tartarus.StateFailed, Change{At: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetNetwork(ctx, "plain", open); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("SetNetwork on a failed sandbox: %v, want failed precondition", err)
	}
}
