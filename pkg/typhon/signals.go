package typhon

import (
	"time"

	"cel.dev/cel-go/cel"
)

// Signals is what the triggers see of one sandbox at one tick. Host says
// whether CPU and memory come from host counters (the QEMU process) or
// from the guest's own report; everything else is recorded on the host
// (exec history is the API's log of what it ran, network counts come from
// the sandbox's namespace).
type Signals struct {
	SandboxID string
	Tenant    string
	Template  string
	Runtime   string
	Age       time.Duration
	// CPUPercent is the share of one host core used over the last interval.
	CPUPercent float64
	// CPUDemand is the share of the last interval the sandbox's busiest
	// host thread was on a core or waiting for one (host counters only):
	// near 100 for a guest that spins, however loaded the host.
	CPUDemand float64
	MemoryMB  float64
	// MemoryPercent is MemoryMB of the sandbox's memory size, 0-100.
	MemoryPercent float64
	Processes     int
	// NetAttempts and NetDenied count outbound connections tried and
	// refused by the egress policy since the sandbox started.
	NetAttempts int
	NetDenied   int
	// FileWrites counts file writes through the API.
	FileWrites int
	// ExecHistory holds the recent commands run through the API, newest
	// last, each as its argv joined with spaces.
	ExecHistory []string
	Metadata    map[string]string
	// HostCounters says CPU and memory are host-observed.
	HostCounters bool
}

// History is a sandbox's recent CPU and memory readings, oldest first,
// which the manager keeps across ticks.
type History struct {
	CPU    []float64
	Demand []float64
	Memory []float64
}

// maxHistory bounds each sandbox's kept readings (and so the cost of a
// trigger that walks them).
const maxHistory = 60

// maxExecHistory bounds the exec history a trigger sees.
const maxExecHistory = 64

// celVariables declares the trigger language's variables (docs/quarantine.md).
func celVariables() []cel.EnvOption {
	return []cel.EnvOption{
		cel.Variable("sandbox_id", cel.StringType),
		cel.Variable("tenant", cel.StringType),
		cel.Variable("template", cel.StringType),
		cel.Variable("runtime", cel.StringType),
		cel.Variable("age_s", cel.DoubleType),
		cel.Variable("cpu_percent", cel.DoubleType),
		cel.Variable("cpu_demand", cel.DoubleType),
		cel.Variable("cpu_demand_history", cel.ListType(cel.DoubleType)),
		cel.Variable("memory_mb", cel.DoubleType),
		cel.Variable("memory_percent", cel.DoubleType),
		cel.Variable("processes", cel.IntType),
		cel.Variable("net_attempts", cel.IntType),
		cel.Variable("net_denied", cel.IntType),
		cel.Variable("file_writes", cel.IntType),
		cel.Variable("exec_history", cel.ListType(cel.StringType)),
		cel.Variable("exec_count", cel.IntType),
		cel.Variable("cpu_history", cel.ListType(cel.DoubleType)),
		cel.Variable("memory_history", cel.ListType(cel.DoubleType)),
		cel.Variable("metadata", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("host_counters", cel.BoolType),
	}
}

// activation turns signals and history into the triggers' variables.
func activation(s *Signals, h *History) map[string]any {
	execs := s.ExecHistory
	if len(execs) > maxExecHistory {
		execs = execs[len(execs)-maxExecHistory:]
	}
	if execs == nil {
		execs = []string{}
	}
	md := s.Metadata
	if md == nil {
		md = map[string]string{}
	}
	cpu, demand, mem := []float64{}, []float64{}, []float64{}
	if h != nil {
		cpu, mem = h.CPU, h.Memory
		if h.Demand != nil {
			demand = h.Demand
		}
	}
	return map[string]any{
		"sandbox_id": s.SandboxID, "tenant": s.Tenant, "template": s.Template, "runtime": s.Runtime,
		"age_s": s.Age.Seconds(), "cpu_percent": s.CPUPercent, "memory_mb": s.MemoryMB,
		"cpu_demand": s.CPUDemand, "cpu_demand_history": demand,
		"memory_percent": s.MemoryPercent, "processes": int64(s.Processes),
		"net_attempts": int64(s.NetAttempts), "net_denied": int64(s.NetDenied), "file_writes": int64(s.FileWrites),
		"exec_history": execs, "exec_count": int64(len(s.ExecHistory)),
		"cpu_history": cpu, "memory_history": mem, "metadata": md, "host_counters": s.HostCounters,
	}
}
