package cerberus

// DefaultPolicyYAML is the policy in force when the server is given no
// --auth-policy file: platform-admin may do anything; tenant-admin manages
// its own tenant's sandboxes, API keys and audit log; sandbox-user works
// with its own tenant's sandboxes and snapshots, their files included;
// viewer sees them but not their files.
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

  - name: sandbox-user
    description: create, use and remove its own tenant's sandboxes
    inherits: [viewer]
    permissions:
      - resource: sandbox
        actions: [create, read, update, delete, execute, read_files, write_files, fork, snapshot, choose_runtime]
        conditions:
          tenant: "{{identity.tenant_id}}"
      - resource: snapshot
        actions: [create, read, delete]
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
