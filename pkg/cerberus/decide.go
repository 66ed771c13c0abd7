package cerberus

import (
	"fmt"
	"strings"
)

// Decision is the outcome of one authorization check and why.
type Decision struct {
	Allowed bool
	Reason  string
}

// Principal is the name bindings use for an identity: "user:alice@example.com",
// "service:ci", "agent:node-1".
func Principal(id *Identity) string { return string(id.Type) + ":" + id.ID }

// Decide checks whether id may perform action on res. The caller's roles are
// those its credential carries (API key roles, token role claims) plus those
// bound to its principal or to any of its groups. Deny is the default.
func (p *Policy) Decide(id *Identity, action Action, res Resource) Decision {
	if id == nil {
		return Decision{Reason: "no identity"}
	}
	var miss string
	var nroles int
	try := func(roles []string) (Decision, bool) {
		for _, rn := range roles {
			cr := p.roles[rn]
			if cr == nil {
				continue
			}
			nroles++
			ref, m := cr.allows(id, action, res)
			if ref != nil {
				return Decision{Allowed: true, Reason: "allowed by " + ref.reason}, true
			}
			if miss == "" {
				miss = m
			}
		}
		return Decision{}, false
	}
	if d, ok := try(id.Roles); ok {
		return d
	}
	principal := Principal(id)
	if d, ok := try(p.bindings[principal]); ok {
		return d
	}
	for _, g := range id.Groups {
		if d, ok := try(p.bindings["group:"+g]); ok {
			return d
		}
	}
	for _, wb := range p.wildBinds {
		if strings.HasPrefix(principal, wb.prefix) {
			if d, ok := try(wb.roles); ok {
				return d
			}
		}
		for _, g := range id.Groups {
			if strings.HasPrefix("group:"+g, wb.prefix) {
				if d, ok := try(wb.roles); ok {
					return d
				}
			}
		}
	}
	switch {
	case miss != "":
		return Decision{Reason: "denied: " + miss}
	case nroles == 0:
		return Decision{Reason: fmt.Sprintf("denied: %s has no role in the policy", principal)}
	default:
		return Decision{Reason: fmt.Sprintf("denied: no role of %s allows %s on %s", principal, action, res.Type)}
	}
}

// allows returns the first rule of the role that permits action on res, or
// why a rule for this resource and action did not apply.
func (cr *compiledRole) allows(id *Identity, action Action, res Resource) (*ruleRef, string) {
	var miss string
	for _, rt := range [2]string{string(res.Type), "*"} {
		byAction := cr.index[rt]
		if byAction == nil {
			continue
		}
		for _, a := range [2]Action{action, "*"} {
			b := byAction[a]
			if b == nil {
				continue
			}
			for _, ref := range b.scan {
				c, ok := ref.matches(id, res)
				if ok {
					return ref, ""
				}
				if miss == "" {
					miss = fmt.Sprintf("%s allows %s on %s only where %s is %q (it is %q)",
						ref.reason, action, res.Type, c.attr, c.want(id), c.got(res))
				}
			}
			for _, attr := range b.litAttrs {
				for _, ref := range b.byLiteral[litKey{attr, condition{attr: attr}.got(res)}] {
					if _, ok := ref.matches(id, res); ok {
						return ref, ""
					}
				}
			}
		}
	}
	return nil, miss
}

// matches checks every condition of the rule, returning the first that fails.
func (r *rule) matches(id *Identity, res Resource) (condition, bool) {
	for _, c := range r.conds {
		want := c.want(id)
		if want == "" || c.got(res) != want {
			return c, false
		}
	}
	return condition{}, true
}

func (c condition) got(res Resource) string {
	switch c.attr {
	case "tenant":
		return res.TenantID
	case "namespace":
		return res.Namespace
	case "id":
		return res.ID
	case "runtime":
		return res.Runtime
	}
	return ""
}

func (c condition) want(id *Identity) string {
	switch c.ref {
	case "":
		return c.literal
	case "tenant_id":
		return id.TenantID
	case "id":
		return id.ID
	case "type":
		return string(id.Type)
	}
	if name, ok := strings.CutPrefix(c.ref, "attributes."); ok {
		return id.Attributes[name]
	}
	return ""
}
