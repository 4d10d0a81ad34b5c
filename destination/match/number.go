package match

// decimal is a JSON number literal read exactly, without rounding it to a
// float64: 12345678901234567890 and 12345678901234567891 are different
// numbers here, and 0.1 + nothing is 0.1. Its value is 0.d1d2...dn × 10^e,
// where the significant digits d are the digits of ip then fp, the first
// lead of them and the last trail of them zeros that are dropped.
type decimal struct {
	neg    bool
	ip, fp string // the digits before and after the point
	lead   int    // leading zeros of ip+fp, skipped
	n      int    // significant digits after lead, trailing zeros dropped
	e      int64  // exponent of 0.d1d2...
}

// maxExp bounds an exponent: 1e999999999999999999 reads as 1e(2^50). Two
// numbers that differ only beyond it compare equal.
const maxExp = 1 << 50

// parseDecimal reads a JSON number literal (as gjson gives it in Raw, or as
// encoding/json gives it in a json.Number). It reports false for anything
// else.
func parseDecimal(s string) (decimal, bool) {
	var d decimal
	i := 0
	if i < len(s) && s[i] == '-' {
		d.neg = true
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == start {
		return d, false
	}
	d.ip = s[start:i]
	if i < len(s) && s[i] == '.' {
		i++
		start = i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return d, false
		}
		d.fp = s[start:i]
	}
	var exp int64
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		eneg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			eneg = s[i] == '-'
			i++
		}
		start = i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			if exp < maxExp {
				exp = exp*10 + int64(s[i]-'0')
			}
			i++
		}
		if i == start {
			return d, false
		}
		exp = min(exp, maxExp)
		if eneg {
			exp = -exp
		}
	}
	if i != len(s) {
		return d, false
	}
	total := len(d.ip) + len(d.fp)
	for d.lead < total && d.digit(d.lead) == '0' {
		d.lead++
	}
	last := total
	for last > d.lead && d.digit(last-1) == '0' {
		last--
	}
	d.n = last - d.lead
	d.e = int64(len(d.ip)-d.lead) + exp
	return d, true
}

// digit is the i-th digit of ip+fp.
func (d *decimal) digit(i int) byte {
	if i < len(d.ip) {
		return d.ip[i]
	}
	return d.fp[i-len(d.ip)]
}

func (d *decimal) sign() int {
	switch {
	case d.n == 0:
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// compareDecimal is -1, 0 or +1 as a is less than, equal to or greater
// than b.
func compareDecimal(a, b *decimal) int {
	sa, sb := a.sign(), b.sign()
	if sa != sb {
		if sa < sb {
			return -1
		}
		return 1
	}
	if sa == 0 {
		return 0
	}
	r := 0
	switch {
	case a.e > b.e:
		r = 1
	case a.e < b.e:
		r = -1
	default:
		for k := 0; k < a.n && k < b.n && r == 0; k++ {
			da, db := a.digit(a.lead+k), b.digit(b.lead+k)
			if da != db {
				r = 1
				if da < db {
					r = -1
				}
			}
		}
		if r == 0 {
			switch {
			case a.n > b.n:
				r = 1
			case a.n < b.n:
				r = -1
			}
		}
	}
	return r * sa
}
