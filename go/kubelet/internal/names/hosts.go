// Package names writes each pod's /etc/hosts and resolv.conf. There is no DNS server: every
// Service name (name, name.ns, name.ns.svc, name.ns.svc.<domain>) and every external host of the
// run is a line of the pod's hosts file, which the kubelet rewrites in place when they change.
package names

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Service is what a hosts file needs of a Service.
type Service struct {
	Namespace, Name, ClusterIP string
}

// ServicesFrom keeps the Services that have a cluster IP (not headless, not ExternalName), sorted.
func ServicesFrom(svcs []*corev1.Service) []Service {
	var out []Service
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		out = append(out, Service{Namespace: s.Namespace, Name: s.Name, ClusterIP: ip})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// HostsInput is everything one pod's hosts file is made of.
type HostsInput struct {
	PodIP         string
	Hostname      string
	Subdomain     string
	Namespace     string
	ClusterDomain string
	HostAliases   []corev1.HostAlias
	Services      []Service
	// Extra is the run's extra hosts file ("IP name..." lines), copied as is.
	Extra string
}

// Hosts renders a pod's hosts file: the kubelet's own header and pod line, the pod's hostAliases,
// then one line per Service (the short name only in the pod's own namespace), then Extra.
func Hosts(in HostsInput) []byte {
	var b bytes.Buffer
	b.WriteString("# Kubernetes-managed hosts file (egh-kubelet).\n")
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	if in.PodIP != "" && in.Hostname != "" {
		if in.Subdomain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.%s\t%s\n", in.PodIP, in.Hostname, in.Subdomain, in.Namespace, in.ClusterDomain, in.Hostname)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", in.PodIP, in.Hostname)
		}
	}
	if len(in.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range in.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	if len(in.Services) > 0 {
		b.WriteString("\n# Services (egh-kubelet: there is no cluster DNS).\n")
		for _, s := range in.Services {
			fqdn := fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, in.ClusterDomain)
			names := []string{fqdn, s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace}
			if s.Namespace == in.Namespace {
				names = append(names, s.Name)
			}
			fmt.Fprintf(&b, "%s\t%s\n", s.ClusterIP, strings.Join(names, " "))
		}
	}
	if extra := strings.TrimSpace(in.Extra); extra != "" {
		b.WriteString("\n# The run's extra hosts.\n")
		b.WriteString(extra)
		b.WriteString("\n")
	}
	return b.Bytes()
}

// Resolv renders a pod's resolv.conf for dnsPolicy ClusterFirst: the cluster search list, ndots 5,
// the configured name servers, then the pod's dnsConfig (added, as the kubelet merges it).
// dnsPolicy None uses only dnsConfig.
func Resolv(pod *corev1.Pod, clusterDomain string, servers []string) []byte {
	var search, ns []string
	opts := []string{"ndots:5"}
	if pod.Spec.DNSPolicy != corev1.DNSNone {
		search = []string{pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
		ns = append(ns, servers...)
	} else {
		opts = nil
	}
	if c := pod.Spec.DNSConfig; c != nil {
		ns = append(ns, c.Nameservers...)
		search = append(search, c.Searches...)
		for _, o := range c.Options {
			if o.Value != nil {
				opts = append(opts, o.Name+":"+*o.Value)
			} else {
				opts = append(opts, o.Name)
			}
		}
	}
	var b bytes.Buffer
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, s := range ns {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(opts) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return b.Bytes()
}

// WriteInPlace replaces path's content without replacing the file: the file is bind-mounted into
// running containers, and a rename would leave them with the old inode. It writes over the old
// bytes, then cuts the file to the new length (no window with an empty file). Unchanged content is
// not written.
func WriteInPlace(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		f.Close()
		return fmt.Errorf("truncating %s: %w", path, err)
	}
	return f.Close()
}

// Hostname is the pod's hostname as the kubelet makes it: spec.hostname or the pod name, cut to 63
// characters without a trailing "-" or ".".
func Hostname(pod *corev1.Pod) string {
	h := pod.Spec.Hostname
	if h == "" {
		h = pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}
