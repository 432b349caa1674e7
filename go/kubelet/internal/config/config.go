// Package config reads and checks the harness kubelet's JSON configuration file.
//
// The harness writes the file; README.md documents every field. Unknown fields are an error, so a
// typo in the harness's writer fails at start naming the field instead of being ignored.
package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Defaults for optional fields.
const (
	DefaultKubeletPort          = 10250
	DefaultClusterDomain        = "cluster.local"
	DefaultShutdownGraceSeconds = 5
	DefaultKubeletVersion       = "v1.36.3"
)

// DefaultEtcFiles are the host /etc entries copied into every container's /etc (those that exist).
var DefaultEtcFiles = []string{
	"passwd", "group", "nsswitch.conf", "ssl", "ca-certificates", "ca-certificates.conf",
	"ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "services",
	"protocols", "host.conf", "gai.conf", "mime.types",
}

// DefaultAllocatable is what a node offers when the config names nothing: large, so the scheduler
// never refuses a pod for resources (istiod alone requests 500m CPU and 2 GiB).
var DefaultAllocatable = map[string]string{
	"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "1Ti",
}

// Config is the whole configuration file.
type Config struct {
	// Kubeconfig is the admin kubeconfig the kubelet talks to the API server with.
	Kubeconfig string `json:"kubeconfig"`
	// RunDir holds every pod's directory (volumes, logs, container roots).
	RunDir string `json:"runDir"`
	// NetnsPrefix starts the name of every network namespace the kubelet creates.
	NetnsPrefix string `json:"netnsPrefix"`
	// KubeletVersion is reported in node.status.nodeInfo.kubeletVersion (Istio reads it).
	KubeletVersion string `json:"kubeletVersion,omitempty"`
	// TLSCert and TLSKey serve the kubelet API; both empty: a self-signed certificate in memory.
	TLSCert string `json:"tlsCert,omitempty"`
	TLSKey  string `json:"tlsKey,omitempty"`
	// KubeletPort is the kubelet API port on every node IP.
	KubeletPort int `json:"kubeletPort,omitempty"`
	// Nodes are registered as Node objects; every pod bound to one of them runs here.
	Nodes []Node `json:"nodes"`
	// HostsFile holds extra "IP name..." lines for every pod's /etc/hosts (optional).
	HostsFile string `json:"hostsFile,omitempty"`
	// Images maps image references to host binaries.
	Images []Image `json:"images"`
	// RootBinds are host paths bound read-only at the same path in every container root.
	RootBinds []string `json:"rootBinds"`
	// EtcFiles are the host /etc entries copied into each container's /etc (default DefaultEtcFiles).
	EtcFiles []string `json:"etcFiles,omitempty"`
	// DNSServers become "nameserver" lines of every pod's resolv.conf (none by default: names
	// are served from /etc/hosts).
	DNSServers []string `json:"dnsServers,omitempty"`
	// ClusterDomain is the Services' DNS suffix.
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// ShutdownGraceSeconds caps each pod's grace period when the kubelet itself stops.
	ShutdownGraceSeconds int `json:"shutdownGraceSeconds,omitempty"`
	// Workers is the number of virtual-kubelet pod sync workers per node (default 8).
	Workers int `json:"workers,omitempty"`

	// Path is the file the config was read from (for messages).
	Path string `json:"-"`
}

// Node is one Node object served by this process.
type Node struct {
	Name    string `json:"name"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR"`
	// Labels are added to the standard ones (kubernetes.io/hostname, kubernetes.io/os, ...).
	Labels map[string]string `json:"labels,omitempty"`
	Taints []corev1.Taint    `json:"taints,omitempty"`
	// Allocatable overrides DefaultAllocatable entries (resource name -> quantity).
	Allocatable map[string]string `json:"allocatable,omitempty"`

	Addr   netip.Addr   `json:"-"`
	Prefix netip.Prefix `json:"-"`
}

// Load reads, defaults and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the kubelet config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("kubelet config %s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// Parse decodes data (unknown fields are errors), applies defaults and validates.
func Parse(data []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *Config) applyDefaults() {
	if c.KubeletPort == 0 {
		c.KubeletPort = DefaultKubeletPort
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.ShutdownGraceSeconds == 0 {
		c.ShutdownGraceSeconds = DefaultShutdownGraceSeconds
	}
	if c.KubeletVersion == "" {
		c.KubeletVersion = DefaultKubeletVersion
	}
	if c.EtcFiles == nil {
		c.EtcFiles = DefaultEtcFiles
	}
	if c.Workers == 0 {
		c.Workers = 8
	}
}

func (c *Config) validate() error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if c.Kubeconfig == "" {
		bad(`"kubeconfig" is required`)
	}
	if !filepath.IsAbs(c.RunDir) {
		bad(`"runDir" must be an absolute path, not %q`, c.RunDir)
	}
	if c.NetnsPrefix == "" || strings.ContainsAny(c.NetnsPrefix, "/ \t\n") {
		bad(`"netnsPrefix" must be a non-empty name without "/" or spaces, not %q`, c.NetnsPrefix)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad(`"tlsCert" and "tlsKey" go together (both or neither)`)
	}
	if len(c.Nodes) == 0 {
		bad(`"nodes" must name at least one node`)
	}
	seen := map[string]bool{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == "" {
			bad("nodes[%d]: \"name\" is required", i)
		}
		if seen[n.Name] {
			bad("nodes[%d]: node %q appears twice", i, n.Name)
		}
		seen[n.Name] = true
		addr, err := netip.ParseAddr(n.IP)
		if err != nil || !addr.Is4() {
			bad("node %q: \"ip\" must be an IPv4 address, not %q", n.Name, n.IP)
		}
		prefix, err := netip.ParsePrefix(n.PodCIDR)
		if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 30 {
			bad("node %q: \"podCIDR\" must be an IPv4 prefix of /30 or wider, not %q", n.Name, n.PodCIDR)
		}
		n.Addr, n.Prefix = addr, prefix.Masked()
		for name, q := range n.Allocatable {
			if _, err := resource.ParseQuantity(q); err != nil {
				bad("node %q: allocatable %s=%q is not a quantity", n.Name, name, q)
			}
		}
	}
	for i, img := range c.Images {
		if err := img.validate(); err != nil {
			bad("images[%d]: %v", i, err)
		}
	}
	for _, b := range c.RootBinds {
		if !filepath.IsAbs(b) || filepath.Clean(b) == "/" {
			bad("rootBinds: %q must be an absolute path other than /", b)
		}
	}
	for _, e := range c.EtcFiles {
		if e == "" || strings.Contains(e, "..") || filepath.IsAbs(e) || e == "hosts" || e == "resolv.conf" {
			bad("etcFiles: %q must be a relative name under /etc other than hosts and resolv.conf", e)
		}
	}
	for _, s := range c.DNSServers {
		if _, err := netip.ParseAddr(s); err != nil {
			bad("dnsServers: %q is not an IP address", s)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// NodeByName returns the node config named name, or nil.
func (c *Config) NodeByName(name string) *Node {
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i]
		}
	}
	return nil
}

// PodsDir is where every pod's directory lives.
func (c *Config) PodsDir() string { return filepath.Join(c.RunDir, "pods") }
