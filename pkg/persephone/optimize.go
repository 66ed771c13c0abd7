package persephone

import (
	"math"
	"sort"
)

// minimiseBox minimises fn over [0,1]^3 from start with a Nelder-Mead
// simplex whose points are projected into the box, restarting from the best
// point until a restart no longer improves it.
func minimiseBox(fn func([3]float64) float64, start [3]float64) [3]float64 {
	best, fbest := start, fn(start)
	step := 0.1
	for restart := 0; restart < 8; restart++ {
		p, fp := nelderMead(fn, best, step)
		improved := fbest-fp > 1e-10*math.Max(1, math.Abs(fbest))
		if fp < fbest {
			best, fbest = p, fp
		}
		if !improved && restart > 0 {
			break
		}
		step = 0.05
	}
	return best
}

func project(p [3]float64) [3]float64 {
	for i := range p {
		p[i] = math.Max(0, math.Min(1, p[i]))
	}
	return p
}

func nelderMead(fn func([3]float64) float64, x0 [3]float64, step float64) ([3]float64, float64) {
	type vertex struct {
		p [3]float64
		f float64
	}
	v := make([]vertex, 4)
	v[0] = vertex{project(x0), fn(project(x0))}
	for i := 0; i < 3; i++ {
		p := x0
		if p[i]+step <= 1 {
			p[i] += step
		} else {
			p[i] -= step
		}
		p = project(p)
		v[i+1] = vertex{p, fn(p)}
	}
	for iter := 0; iter < 2000; iter++ {
		sort.Slice(v, func(i, j int) bool { return v[i].f < v[j].f })
		size := 0.0
		for i := 1; i < 4; i++ {
			for k := 0; k < 3; k++ {
				size = math.Max(size, math.Abs(v[i].p[k]-v[0].p[k]))
			}
		}
		if size < 1e-9 || v[3].f-v[0].f <= 1e-13*math.Max(1, math.Abs(v[0].f)) && size < 1e-6 {
			break
		}
		var c [3]float64
		for i := 0; i < 3; i++ {
			for k := 0; k < 3; k++ {
				c[k] += v[i].p[k] / 3
			}
		}
		at := func(t float64) [3]float64 {
			var p [3]float64
			for k := 0; k < 3; k++ {
				p[k] = c[k] + t*(v[3].p[k]-c[k])
			}
			return project(p)
		}
		r := at(-1)
		fr := fn(r)
		switch {
		case fr < v[0].f:
			e := at(-2)
			if fe := fn(e); fe < fr {
				v[3] = vertex{e, fe}
			} else {
				v[3] = vertex{r, fr}
			}
		case fr < v[2].f:
			v[3] = vertex{r, fr}
		default:
			t := 0.5
			if fr < v[3].f {
				t = -0.5
			}
			cp := at(t)
			if fc := fn(cp); fc < math.Min(fr, v[3].f) {
				v[3] = vertex{cp, fc}
				continue
			}
			for i := 1; i < 4; i++ {
				var p [3]float64
				for k := 0; k < 3; k++ {
					p[k] = v[0].p[k] + 0.5*(v[i].p[k]-v[0].p[k])
				}
				v[i] = vertex{p, fn(p)}
			}
		}
	}
	sort.Slice(v, func(i, j int) bool { return v[i].f < v[j].f })
	return v[0].p, v[0].f
}
