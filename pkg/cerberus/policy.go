package cerberus

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxPolicySize bounds a policy file; 10,000 rules take about 1 MiB.
const MaxPolicySize = 16 << 20

// PolicyError is one problem in a policy file, with the line it is on.
type PolicyError struct {
	Line   int
	Reason string
}

func (e *PolicyError) Error() string {
	if e.Line <= 0 {
		return "policy: " + e.Reason
	}
	return fmt.Sprintf("policy line %d: %s", e.Line, e.Reason)
}

// Policy is a compiled RBAC policy: the seed's YAML (roles with permissions
// and inherits, bindings of identities to roles) turned into an index so
// that one decision costs a few map lookups per role of the caller, however
// many rules the file has. A Policy is immutable and safe for concurrent use.
type Policy struct {
	quotas    QuotaSet
	roles     map[string]*compiledRole
	bindings  map[string][]string // principal ("user:alice") → role names
	wildBinds []wildBinding       // principals ending in "*"
	ruleCount int
	roleNames []string
	inherited map[string][]string // role → every role it inherits, transitively
}

type wildBinding struct {
	prefix string
	roles  []string
}

type compiledRole struct {
	name string
	// index[resource type][action]: every rule of the role and of the roles it
	// inherits; "*" keys hold the wildcard rules.
	index map[string]map[Action]*bucket
}

// bucket holds the rules for one resource type and action. Rules with a
// literal condition (id: sb-1) are found by that value, so even thousands of
// them on one resource cost one map lookup; the rest are scanned.
type bucket struct {
	scan      []*ruleRef
	byLiteral map[litKey][]*ruleRef
	litAttrs  []string // the attrs used as keys in byLiteral
}

type litKey struct{ attr, value string }

func (b *bucket) add(ref *ruleRef) {
	for _, c := range ref.conds {
		if c.ref == "" {
			if b.byLiteral == nil {
				b.byLiteral = map[litKey][]*ruleRef{}
			}
			k := litKey{c.attr, c.literal}
			b.byLiteral[k] = append(b.byLiteral[k], ref)
			if !slices.Contains(b.litAttrs, c.attr) {
				b.litAttrs = append(b.litAttrs, c.attr)
			}
			return
		}
	}
	b.scan = append(b.scan, ref)
}

// rule is one permission entry of the file.
type rule struct {
	role     string
	line     int
	resource string
	actions  []Action
	conds    []condition
}

// ruleRef is a rule as seen from one role (itself or one inheriting it).
type ruleRef struct {
	*rule
	reason string // precomputed "role R (rule of role S at line N)"
}

type condition struct {
	attr    string // tenant | namespace | id | runtime
	literal string
	ref     string // identity field when the value is a {{identity.…}} template
}

// The actions a policy may name besides "*".
var knownActions = []Action{ActionCreate, ActionRead, ActionUpdate, ActionDelete, ActionExecute, ActionAdmin,
	ActionReadFiles, ActionWriteFiles, ActionFork, ActionSnapshot, ActionChooseRuntime}

var (
	resourceName  = regexp.MustCompile(`^([a-z][a-z0-9_-]*|\*)$`)
	templateValue = regexp.MustCompile(`^\{\{\s*identity\.([a-z_]+(?:\.[A-Za-z0-9_.-]+)?)\s*\}\}$`)
	yamlLine      = regexp.MustCompile(`line (\d+)`)
)

func knownActionList() string {
	names := make([]string, len(knownActions))
	for i, a := range knownActions {
		names[i] = string(a)
	}
	return strings.Join(names, ", ")
}

// The principal kinds a binding may name.
var principalKinds = []string{"user:", "group:", "service:", "agent:", "system:"}

// ParsePolicy parses and compiles a policy file. Every problem found is
// returned at once (errors.Join of *PolicyError, each with its line).
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > MaxPolicySize {
		return nil, &PolicyError{Reason: fmt.Sprintf("file is %d bytes, more than the %d allowed", len(data), MaxPolicySize)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(err)
	}
	p := &policyParser{}
	roles, bindings := p.document(&doc)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	pol, err := compile(roles, bindings)
	if err != nil {
		return nil, err
	}
	pol.quotas = p.quotaSet
	return pol, nil
}

func yamlError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = strings.TrimSpace(strings.TrimPrefix(strings.Replace(msg, m[0], "", 1), ":"))
	}
	// The YAML library's line for a syntax error is where the enclosing
	// construct starts, which can be a line above the mistake.
	return &PolicyError{Line: line, Reason: "not valid YAML (at or just after this line): " + msg}
}

type roleDef struct {
	name     string
	line     int
	inherits []string
	inhLine  int
	rules    []*rule
}

type bindingDef struct {
	principal string
	line      int
	roles     []string
	rolesLine int
}

type policyParser struct {
	errs     []error
	quotaSet QuotaSet
}

func (p *policyParser) errf(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &PolicyError{Line: line, Reason: fmt.Sprintf(format, args...)})
}

// mapping calls f for each key of a mapping node, rejecting keys not in allowed.
func (p *policyParser) mapping(n *yaml.Node, what string, allowed []string, f func(key string, k, v *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		p.errf(n, "%s must be a mapping", what)
		return false
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errf(k, "%s has a key that is not a string", what)
			continue
		}
		if !slices.Contains(allowed, k.Value) {
			p.errf(k, "%s has unknown key %q (allowed: %s)", what, k.Value, strings.Join(allowed, ", "))
			continue
		}
		if seen[k.Value] {
			p.errf(k, "%s has key %q twice", what, k.Value)
			continue
		}
		seen[k.Value] = true
		f(k.Value, k, v)
	}
	return true
}

func (p *policyParser) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errf(n, "%s must be a string", what)
		return "", false
	}
	return n.Value, true
}

// stringList accepts a sequence of strings, or one string.
func (p *policyParser) stringList(n *yaml.Node, what string) []string {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}
	}
	if n.Kind != yaml.SequenceNode {
		p.errf(n, "%s must be a list of strings", what)
		return nil
	}
	var out []string
	for _, c := range n.Content {
		if s, ok := p.scalar(c, what+" entry"); ok {
			out = append(out, s)
		}
	}
	return out
}

func (p *policyParser) document(doc *yaml.Node) ([]*roleDef, []*bindingDef) {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.errf(doc, "file is empty; a policy needs roles")
		return nil, nil
	}
	var roles []*roleDef
	var bindings []*bindingDef
	top := doc.Content[0]
	p.mapping(top, "the policy", []string{"roles", "bindings", "quotas"}, func(key string, k, v *yaml.Node) {
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			return // "bindings:" with nothing under it
		}
		if key == "quotas" {
			p.quotas(v)
			return
		}
		if v.Kind != yaml.SequenceNode {
			p.errf(v, "%s must be a list", key)
			return
		}
		for _, item := range v.Content {
			switch key {
			case "roles":
				if r := p.role(item); r != nil {
					roles = append(roles, r)
				}
			case "bindings":
				if b := p.binding(item); b != nil {
					bindings = append(bindings, b)
				}
			}
		}
	})
	if len(roles) == 0 && len(p.errs) == 0 {
		p.errf(top, "policy defines no roles")
	}
	return roles, bindings
}

func (p *policyParser) role(n *yaml.Node) *roleDef {
	r := &roleDef{line: n.Line}
	ok := p.mapping(n, "a role", []string{"name", "inherits", "permissions", "description"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			r.name, _ = p.scalar(v, "role name")
		case "description":
			p.scalar(v, "role description")
		case "inherits":
			r.inherits, r.inhLine = p.stringList(v, "inherits"), v.Line
		case "permissions":
			if v.Kind != yaml.SequenceNode {
				p.errf(v, "permissions must be a list")
				return
			}
			for _, pn := range v.Content {
				if ru := p.permission(pn); ru != nil {
					r.rules = append(r.rules, ru)
				}
			}
		}
	})
	if !ok {
		return nil
	}
	if r.name == "" {
		p.errf(n, "role has no name")
		return nil
	}
	for _, ru := range r.rules {
		ru.role = r.name
	}
	return r
}

func (p *policyParser) permission(n *yaml.Node) *rule {
	ru := &rule{line: n.Line}
	var haveRes, haveAct bool
	ok := p.mapping(n, "a permission", []string{"resource", "actions", "conditions"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "resource":
			s, ok := p.scalar(v, "resource")
			if !ok {
				return
			}
			if !resourceName.MatchString(s) {
				p.errf(v, "resource %q is not a resource type name or \"*\"", s)
				return
			}
			ru.resource, haveRes = s, true
		case "actions":
			for _, a := range p.stringList(v, "actions") {
				if a != "*" && !slices.Contains(knownActions, Action(a)) {
					p.errf(v, "unknown action %q (known: %s, *)", a, knownActionList())
					continue
				}
				ru.actions = append(ru.actions, Action(a))
			}
			haveAct = len(ru.actions) > 0
		case "conditions":
			p.mapping(v, "conditions", []string{"tenant", "namespace", "id", "runtime"}, func(attr string, ck, cv *yaml.Node) {
				s, ok := p.scalar(cv, "condition "+attr)
				if !ok {
					return
				}
				c := condition{attr: attr}
				if strings.Contains(s, "{{") {
					m := templateValue.FindStringSubmatch(s)
					if m == nil || !validIdentityRef(m[1]) {
						p.errf(cv, "condition %s: %q is not a known template (use {{identity.tenant_id}}, {{identity.id}}, {{identity.type}} or {{identity.attributes.NAME}})", attr, s)
						return
					}
					c.ref = m[1]
				} else {
					if s == "" {
						p.errf(cv, "condition %s is empty", attr)
						return
					}
					c.literal = s
				}
				ru.conds = append(ru.conds, c)
			})
		}
	})
	if !ok {
		return nil
	}
	if !haveRes {
		p.errf(n, "permission has no resource")
	}
	if !haveAct {
		p.errf(n, "permission has no actions")
	}
	if !haveRes || !haveAct {
		return nil
	}
	return ru
}

func validIdentityRef(ref string) bool {
	switch ref {
	case "tenant_id", "id", "type":
		return true
	}
	name, ok := strings.CutPrefix(ref, "attributes.")
	return ok && name != ""
}

func (p *policyParser) binding(n *yaml.Node) *bindingDef {
	b := &bindingDef{line: n.Line}
	ok := p.mapping(n, "a binding", []string{"identity", "roles"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "identity":
			s, ok := p.scalar(v, "binding identity")
			if !ok {
				return
			}
			if !slices.ContainsFunc(principalKinds, func(k string) bool { return strings.HasPrefix(s, k) && len(s) > len(k) }) {
				p.errf(v, "binding identity %q must start with one of %s and name someone", s, strings.Join(principalKinds, " "))
				return
			}
			if i := strings.IndexByte(s, '*'); i >= 0 && i != len(s)-1 {
				p.errf(v, "binding identity %q: a wildcard may only end the name", s)
				return
			}
			b.principal = s
		case "roles":
			b.roles, b.rolesLine = p.stringList(v, "binding roles"), v.Line
		}
	})
	if !ok {
		return nil
	}
	if b.principal == "" {
		p.errf(n, "binding has no identity")
		return nil
	}
	if len(b.roles) == 0 {
		p.errf(n, "binding for %s has no roles", b.principal)
		return nil
	}
	return b
}

// compile checks references and cycles and builds the index.
func compile(roles []*roleDef, bindings []*bindingDef) (*Policy, error) {
	var errs []error
	bad := func(line int, format string, args ...any) {
		errs = append(errs, &PolicyError{Line: line, Reason: fmt.Sprintf(format, args...)})
	}
	byName := map[string]*roleDef{}
	for _, r := range roles {
		if prev, dup := byName[r.name]; dup {
			bad(r.line, "role %q is defined twice (first at line %d)", r.name, prev.line)
			continue
		}
		byName[r.name] = r
	}
	for _, r := range roles {
		for _, in := range r.inherits {
			if _, ok := byName[in]; !ok {
				bad(r.inhLine, "role %q inherits unknown role %q", r.name, in)
			}
		}
	}
	for _, b := range bindings {
		for _, rn := range b.roles {
			if _, ok := byName[rn]; !ok {
				bad(b.rolesLine, "binding for %s names unknown role %q", b.principal, rn)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Flatten inheritance, detecting cycles with the usual three colours.
	const (
		white = iota
		grey
		black
	)
	colour := map[string]int{}
	flat := map[string][]*rule{}
	inherited := map[string][]string{}
	var visit func(r *roleDef, path []string) bool
	visit = func(r *roleDef, path []string) bool {
		switch colour[r.name] {
		case grey:
			i := slices.Index(path, r.name)
			bad(r.line, "role inheritance cycle: %s", strings.Join(append(slices.Clone(path[i:]), r.name), " → "))
			return false
		case black:
			return true
		}
		colour[r.name] = grey
		rules := slices.Clone(r.rules)
		ok := true
		for _, in := range r.inherits {
			if !visit(byName[in], append(path, r.name)) {
				ok = false
				continue
			}
			rules = append(rules, flat[in]...)
			inherited[r.name] = append(inherited[r.name], in)
			inherited[r.name] = append(inherited[r.name], inherited[in]...)
		}
		colour[r.name] = black
		flat[r.name] = rules
		return ok
	}
	for _, r := range roles {
		if colour[r.name] == white {
			visit(r, nil)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	pol := &Policy{roles: map[string]*compiledRole{}, bindings: map[string][]string{}, inherited: inherited}
	for _, r := range roles {
		cr := &compiledRole{name: r.name, index: map[string]map[Action]*bucket{}}
		for _, ru := range flat[r.name] {
			ref := &ruleRef{rule: ru}
			if ru.role == r.name {
				ref.reason = fmt.Sprintf("role %s (policy line %d)", r.name, ru.line)
			} else {
				ref.reason = fmt.Sprintf("role %s, inherited from role %s (policy line %d)", r.name, ru.role, ru.line)
			}
			byAction := cr.index[ru.resource]
			if byAction == nil {
				byAction = map[Action]*bucket{}
				cr.index[ru.resource] = byAction
			}
			for _, a := range slices.Compact(slices.Sorted(slices.Values(ru.actions))) {
				if byAction[a] == nil {
					byAction[a] = &bucket{}
				}
				byAction[a].add(ref)
			}
		}
		pol.roles[r.name] = cr
		pol.roleNames = append(pol.roleNames, r.name)
		pol.ruleCount += len(r.rules)
	}
	for _, b := range bindings {
		if prefix, ok := strings.CutSuffix(b.principal, "*"); ok {
			pol.wildBinds = append(pol.wildBinds, wildBinding{prefix: prefix, roles: b.roles})
			continue
		}
		pol.bindings[b.principal] = append(pol.bindings[b.principal], b.roles...)
	}
	return pol, nil
}

// Rules is how many permission entries the policy has.
func (p *Policy) Rules() int { return p.ruleCount }

// Roles lists the role names in file order.
func (p *Policy) Roles() []string { return slices.Clone(p.roleNames) }

// RolesOf returns every role id holds: from its credential, from bindings
// of its principal and groups, and the roles those inherit. Roles the policy
// does not define are left out.
func (p *Policy) RolesOf(id *Identity) []string {
	var out []string
	add := func(roles []string) {
		for _, r := range roles {
			if !p.HasRole(r) || slices.Contains(out, r) {
				continue
			}
			out = append(out, r)
			for _, in := range p.inherited[r] {
				if !slices.Contains(out, in) {
					out = append(out, in)
				}
			}
		}
	}
	add(id.Roles)
	principal := Principal(id)
	add(p.bindings[principal])
	for _, g := range id.Groups {
		add(p.bindings["group:"+g])
	}
	for _, wb := range p.wildBinds {
		if strings.HasPrefix(principal, wb.prefix) {
			add(wb.roles)
		}
		for _, g := range id.Groups {
			if strings.HasPrefix("group:"+g, wb.prefix) {
				add(wb.roles)
			}
		}
	}
	return out
}

// HasRole reports whether the policy defines role.
func (p *Policy) HasRole(role string) bool { _, ok := p.roles[role]; return ok }
