package envvars

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ServiceEnv returns the service link variables a pod in namespace ns sees, as the kubelet makes
// them: always the "kubernetes" Service of namespace default; the Services of ns too when
// enableServiceLinks is true (the default). Services without a cluster IP are skipped.
func ServiceEnv(services []*corev1.Service, ns string, enableServiceLinks bool) map[string]string {
	chosen := map[string]*corev1.Service{}
	for _, s := range services {
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		if s.Namespace == "default" && s.Name == "kubernetes" {
			if _, ok := chosen[s.Name]; !ok {
				chosen[s.Name] = s
			}
		} else if s.Namespace == ns && enableServiceLinks {
			chosen[s.Name] = s
		}
	}
	names := make([]string, 0, len(chosen))
	for n := range chosen {
		names = append(names, n)
	}
	sort.Strings(names)
	env := map[string]string{}
	for _, n := range names {
		addServiceVars(env, chosen[n])
	}
	return env
}

func envName(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
}

// addServiceVars follows pkg/kubelet/envvars: <NAME>_SERVICE_HOST/_PORT/_PORT_<PORTNAME> and the
// Docker-link style <NAME>_PORT, <NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR].
func addServiceVars(env map[string]string, s *corev1.Service) {
	name := envName(s.Name)
	ip := s.Spec.ClusterIP
	env[name+"_SERVICE_HOST"] = ip
	if len(s.Spec.Ports) == 0 {
		return
	}
	env[name+"_SERVICE_PORT"] = strconv.Itoa(int(s.Spec.Ports[0].Port))
	for _, p := range s.Spec.Ports {
		if p.Name != "" {
			env[name+"_SERVICE_PORT_"+envName(p.Name)] = strconv.Itoa(int(p.Port))
		}
	}
	host := ip
	if strings.Contains(ip, ":") {
		host = "[" + ip + "]"
	}
	first := s.Spec.Ports[0]
	env[name+"_PORT"] = fmt.Sprintf("%s://%s:%d", strings.ToLower(string(first.Protocol)), host, first.Port)
	for _, p := range s.Spec.Ports {
		proto := strings.ToLower(string(p.Protocol))
		prefix := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(proto))
		env[prefix] = fmt.Sprintf("%s://%s:%d", proto, host, p.Port)
		env[prefix+"_PROTO"] = proto
		env[prefix+"_PORT"] = strconv.Itoa(int(p.Port))
		env[prefix+"_ADDR"] = ip
	}
}
