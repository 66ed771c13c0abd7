package cerberus

// DefaultPolicyYAML is the policy in force when the server is given no
// --auth-policy file: platform-admin may do anything; tenant-admin manages
// its own tenant's sandboxes, API keys and audit log; sandbox-user works
// with its own tenant's sandboxes, snapshots and templates, files included,
// and may name the microvm or gvisor runtime on create (the container
// runtimes share the host's kernel, so naming docker or containerd takes the
// any-runtime role an operator grants); viewer sees them but not their files.
const DefaultPolicyYAML = `# Built-in Tartarus policy (used when no --auth-policy file is given).
roles:
  - name: platform-admin
    description: everything, every tenant
    permissions:
      - resource: "*"
        actions: ["*"]

  - name: viewer
    description: see its own tenant's sandboxes and snapshots (not their files)
    permissions:
      - resource: sandbox
        actions: [read]
        conditions:
          tenant: "{{identity.tenant_id}}"
      - resource: snapshot
        actions: [read]
        conditions:
          tenant: "{{identity.tenant_id}}"
      - resource: template
        actions: [read]
      - resource: quarantine
        actions: [read]
        conditions:
          tenant: "{{identity.tenant_id}}"

  - name: sandbox-user
    description: create, use and remove its own tenant's sandboxes
    inherits: [viewer]
    permissions:
      - resource: sandbox
        actions: [create, read, update, delete, execute, read_files, write_files, fork, snapshot]
        conditions:
          tenant: "{{identity.tenant_id}}"
      # Only the runtimes with a kernel of their own between the code and the
      # host; docker and containerd take the any-runtime role.
      - resource: sandbox
        actions: [choose_runtime]
        conditions:
          tenant: "{{identity.tenant_id}}"
          runtime: microvm
      - resource: sandbox
        actions: [choose_runtime]
        conditions:
          tenant: "{{identity.tenant_id}}"
          runtime: gvisor
      - resource: snapshot
        actions: [create, read, delete]
        conditions:
          tenant: "{{identity.tenant_id}}"
      - resource: template
        actions: [create, delete]
        conditions:
          tenant: "{{identity.tenant_id}}"

  - name: tenant-admin
    description: sandbox-user plus its tenant's API keys and audit log
    inherits: [sandbox-user]
    permissions:
      - resource: sandbox
        actions: [admin]
        conditions:
          tenant: "{{identity.tenant_id}}"
      - resource: apikey
        actions: [create, read, delete]
        conditions:
          tenant: "{{identity.tenant_id}}"
      - resource: audit
        actions: [read]
        conditions:
          tenant: "{{identity.tenant_id}}"

  - name: any-runtime
    description: name any enabled runtime (docker and containerd too) on its tenant's creates; an operator grants it
    permissions:
      - resource: sandbox
        actions: [choose_runtime]
        conditions:
          tenant: "{{identity.tenant_id}}"

  - name: quarantine-examiner
    description: reach, examine and destroy quarantined sandboxes of every tenant
    permissions:
      - resource: sandbox
        actions: [read, execute, update]
      - resource: quarantine
        actions: [read, update, delete, execute]

  - name: quarantine-approver
    description: quarantine-examiner plus approving a release (never of a quarantine it took part in)
    inherits: [quarantine-examiner]
    permissions:
      - resource: quarantine
        actions: [admin]

bindings: []
`

// DefaultPolicy compiles DefaultPolicyYAML.
func DefaultPolicy() *Policy {
	p, err := ParsePolicy([]byte(DefaultPolicyYAML))
	if err != nil {
		panic("cerberus: built-in policy does not compile: " + err.Error())
	}
	return p
}
