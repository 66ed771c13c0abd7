# Example Nomad system job: a Tartarus node agent on every Nomad client that
# matches the constraint (docs/cluster.md). NOT TESTED: Nomad cannot run on the
# machine this was written on; only its HCL syntax was checked. Read it as a
# starting point, and adjust datacenters, paths, addresses and the constraint.
#
# Each client needs, before the job is placed there:
#   - QEMU (apt-get install -y qemu-system-x86 qemu-utils) and /dev/kvm if
#     the host has it (the agent falls back to TCG, software emulation);
#   - /usr/local/bin/tartarus and /usr/local/bin/tartarus-guest;
#   - /etc/tartarus/certs/ca.pem, agent.pem and agent-key.pem: a certificate
#     naming agent:<this client's node name> for its address
#     (`tartarus certs client agent:NODE --dir CA-DIR --host IP`);
#   - the raw_exec driver enabled in the client's configuration
#     (plugin "raw_exec" { config { enabled = true } }): the agent must run
#     as root on the host, next to the VMs it starts.
#
# Restarts: when Nomad stops or restarts this task it kills every process of
# the task, QEMU included (raw_exec keeps the task's processes together), so
# unlike the systemd unit with KillMode=process the VMs do NOT survive a
# restart of the agent here: the next start finds them gone and the cluster
# marks those sandboxes failed. Hibernate them first (with shared snapshots
# they wake on another node), or run the agent under systemd on the host.

job "tartarus-agent" {
  datacenters = ["dc1"]
  type        = "system"

  # Only hosts meant for sandboxes: their client configuration carries
  #   meta { tartarus = "agent", tartarus_pool = "general" }
  # (tartarus_pool becomes the node's pool label below).
  constraint {
    attribute = "${meta.tartarus}"
    value     = "agent"
  }

  update {
    # One host at a time; see "Restarts" above.
    max_parallel = 1
    stagger      = "60s"
  }

  group "agent" {
    restart {
      attempts = 10
      interval = "5m"
      delay    = "2s" # well inside the servers' --node-timeout (10s)
      mode     = "delay"
    }

    task "agent" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/tartarus"
        args = [
          "agent",
          # The node's name is the Nomad client's: its certificate must name
          # agent:<that name> (1-64 characters of a-z, 0-9, '-', '_', '.').
          "--name", "${node.unique.name}",
          "--data-dir", "/var/lib/tartarus-agent",
          "--server", "https://10.0.0.1:7701,https://10.0.0.2:7701",
          "--listen", "0.0.0.0:7702",
          "--advertise", "https://${attr.unique.network.ip-address}:7702",
          "--tls-cert", "/etc/tartarus/certs/agent.pem",
          "--tls-key", "/etc/tartarus/certs/agent-key.pem",
          "--tls-ca", "/etc/tartarus/certs/ca.pem",
          "--labels", "dc=${node.datacenter},pool=${meta.tartarus_pool}",
          "--runtimes", "microvm",
          # Shared snapshots let a hibernated sandbox of a lost host wake
          # elsewhere; credentials come from the env block below.
          # "--snapshots", "s3://tartarus-snapshots?endpoint=s3.example.internal:9000",
        ]
      }

      env {
        # AWS_ACCESS_KEY_ID     = "…"   # better: a template block reading Vault
        # AWS_SECRET_ACCESS_KEY = "…"
      }

      # The agent waits up to 15s (--shutdown-timeout) for node API calls in flight.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      # What the agent itself uses. The VMs are the agent's children: if your
      # Nomad version puts raw_exec tasks in a cgroup with these limits
      # enforced, the VMs count against them too. Check that before relying
      # on these numbers; raise memory_max to what sandboxes may take on the
      # host, or the kernel's OOM killer will end VMs.
      resources {
        cpu    = 500 # MHz
        memory = 256 # MiB
      }

      logs {
        max_files     = 5
        max_file_size = 20
      }
    }
  }
}
