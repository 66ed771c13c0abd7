package persephone

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// capacityHorizon is how far ahead RecommendCapacity looks: about the time
// an operator's autoscaler needs to bring a node up.
const capacityHorizon = time.Hour

// RecommendCapacity implements SeasonalScaler: enough nodes for the
// forecast's peak upper bound of demand over the next hour (or the demand
// now, if more) at the target utilization, within the season's min and max
// nodes. targetUtil 0 takes the season's (or 0.7).
func (s *Scaler) RecommendCapacity(ctx context.Context, targetUtil float64) (*CapacityRecommendation, error) {
	if math.IsNaN(targetUtil) || targetUtil < 0 || targetUtil > 1 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "target utilization %v must be within (0,1]", targetUtil)
	}
	now := s.cfg.Clock.Now()
	season := s.SeasonAt(now)
	if targetUtil == 0 {
		targetUtil = 0.7
		if season != nil && season.TargetUtilization > 0 {
			targetUtil = season.TargetUtilization
		}
	}
	rec := &CapacityRecommendation{ConfidenceLevel: s.cfg.Level}
	recent, err := s.cfg.Usage.Range(ctx, now.Add(-5*time.Minute), now)
	if err != nil {
		return nil, fmt.Errorf("recommend capacity: %w", err)
	}
	demandNow := 0
	for _, r := range recent {
		demandNow = max(demandNow, r.ActiveVMs+r.QueueDepth)
	}
	basis := ""
	fc, err := s.Forecast(ctx, capacityHorizon)
	switch {
	case err == nil:
		var peakAt time.Time
		for _, p := range fc.Predictions {
			if p.UpperBound > rec.PeakUpper {
				rec.PeakUpper, peakAt = p.UpperBound, p.Time
			}
		}
		basis = fmt.Sprintf("peak demand upper bound %d VMs (%.0f%% interval, %s) at %s", rec.PeakUpper, 100*s.cfg.Level, fc.Model, peakAt.UTC().Format("15:04"))
	case errors.Is(err, tartarus.ErrFailedPrecondition):
		rec.ConfidenceLevel = 0
		basis = "no forecast yet (too little history)"
	default:
		return nil, err
	}
	need := max(rec.PeakUpper, demandNow)
	perNode := float64(s.cfg.VMsPerNode) * targetUtil
	nodes := max(1, int(math.Ceil(float64(need)/perNode-1e-9)))
	reason := fmt.Sprintf("%s; demand now %d VMs; %d VMs per node at %.0f%% target -> %d nodes", basis, demandNow, s.cfg.VMsPerNode, 100*targetUtil, nodes)
	if season != nil {
		rec.Season = season.ID
		if nodes < season.MinNodes {
			nodes = season.MinNodes
			reason += fmt.Sprintf("; raised to season %s's min %d", season.ID, season.MinNodes)
		}
		if season.MaxNodes > 0 && nodes > season.MaxNodes {
			nodes = season.MaxNodes
			reason += fmt.Sprintf("; held to season %s's max %d", season.ID, season.MaxNodes)
		}
	}
	rec.RecommendedNodes = nodes
	if s.cfg.Nodes != nil {
		n, err := s.cfg.Nodes.NodeCount(ctx)
		if err != nil {
			return nil, fmt.Errorf("recommend capacity: count nodes: %w", err)
		}
		rec.CurrentNodes = n
	}
	rec.CostDelta = float64(rec.RecommendedNodes-rec.CurrentNodes) * s.cfg.NodeCostPerHour
	rec.Reason = reason
	return rec, nil
}
