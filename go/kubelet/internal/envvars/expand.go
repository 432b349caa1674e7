// Package envvars builds a container's environment as the kubelet does (envFrom, env with
// valueFrom, service links) and expands $(VAR) references in env values, command and args.
package envvars

import "strings"

// Expand replaces $(VAR) in input with mapping(VAR), following Kubernetes' rules
// (third_party/forked/golang/expansion): "$$" is an escaped "$", a reference whose name is
// unknown is left as written, an unterminated "$(" is kept as is.
func Expand(input string, mapping func(string) (string, bool)) string {
	var b strings.Builder
	checkpoint := 0
	for cursor := 0; cursor < len(input); cursor++ {
		if input[cursor] != '$' || cursor+1 >= len(input) {
			continue
		}
		b.WriteString(input[checkpoint:cursor])
		read, isVar, advance := readVariable(input[cursor+1:])
		if isVar {
			if v, ok := mapping(read); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + read + ")")
			}
		} else {
			b.WriteString(read)
		}
		cursor += advance
		checkpoint = cursor + 1
	}
	return b.String() + input[checkpoint:]
}

func readVariable(input string) (string, bool, int) {
	switch input[0] {
	case '$':
		return "$", false, 1
	case '(':
		for i := 1; i < len(input); i++ {
			if input[i] == ')' {
				return input[1:i], true, i + 1
			}
		}
		return "$(", false, 1
	default:
		return "$" + input[0:1], false, 1
	}
}

// MappingFor looks a name up in each map in turn.
func MappingFor(maps ...map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for _, m := range maps {
			if v, ok := m[name]; ok {
				return v, true
			}
		}
		return "", false
	}
}

// ExpandAll expands every element of list.
func ExpandAll(list []string, mapping func(string) (string, bool)) []string {
	if list == nil {
		return nil
	}
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = Expand(s, mapping)
	}
	return out
}
