// Package pods runs pods: one Manager per kubelet process holds every pod of every node it
// serves. A pod is a network namespace (or the node's, for hostNetwork), volume directories, and
// one process per container, each in its own mount namespace and root; the Manager reports their
// status through the node's virtual-kubelet notifier.
package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/config"
	"github.com/istio-egress-harness/kubelet/internal/container"
	"github.com/istio-egress-harness/kubelet/internal/names"
	"github.com/istio-egress-harness/kubelet/internal/netns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Node is one node this process serves.
type Node struct {
	Cfg         *config.Node
	IPAM        *netns.IPAM
	Allocatable corev1.ResourceList

	mu     sync.Mutex
	notify func(*corev1.Pod)
}

// SetNotifier installs virtual-kubelet's status callback for the node's pods.
func (n *Node) SetNotifier(cb func(*corev1.Pod)) {
	n.mu.Lock()
	n.notify = cb
	n.mu.Unlock()
}

func (n *Node) notifier() func(*corev1.Pod) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.notify
}

// Tools are the absolute paths of the programs the kubelet runs.
type Tools struct {
	Host   container.HostTools
	Script container.Tools
}

// FindTools looks every program up on PATH and fails naming the missing ones.
func FindTools() (Tools, error) {
	var missing []string
	find := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
			return name
		}
		abs, _ := filepath.Abs(p)
		return abs
	}
	t := Tools{
		Host: container.HostTools{IP: find("ip"), Unshare: find("unshare"), Nsenter: find("nsenter")},
		Script: container.Tools{
			Sh: "/bin/sh", Mount: find("mount"), Mkdir: find("mkdir"), Cp: find("cp"), Touch: find("touch"),
			Ln: find("ln"), Chroot: find("chroot"), Setpriv: find("setpriv"), Env: find("env"),
		},
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("programs the kubelet needs are not on PATH: %v (iproute2, util-linux, coreutils)", missing)
	}
	return t, nil
}

// Manager holds every pod of the process.
type Manager struct {
	cfg    *config.Config
	client kubernetes.Interface
	tools  Tools
	nodes  map[string]*Node

	services   corev1listers.ServiceLister
	configMaps corev1listers.ConfigMapLister
	secrets    corev1listers.SecretLister
	factory    informers.SharedInformerFactory
	rootBinds  []container.Bind
	etcFiles   []string

	mu     sync.Mutex
	byUID  map[types.UID]*Pod
	byKey  map[string]*Pod
	closed bool

	hostsKick chan struct{}
	extraMu   sync.Mutex
	extra     string
}

// NewManager prepares the manager; Start runs its informers.
func NewManager(cfg *config.Config, client kubernetes.Interface, tools Tools) (*Manager, error) {
	m := &Manager{
		cfg: cfg, client: client, tools: tools, nodes: map[string]*Node{},
		byUID: map[types.UID]*Pod{}, byKey: map[string]*Pod{}, hostsKick: make(chan struct{}, 1),
	}
	for i := range cfg.Nodes {
		n := &cfg.Nodes[i]
		alloc := corev1.ResourceList{}
		for k, v := range config.DefaultAllocatable {
			alloc[corev1.ResourceName(k)] = resource.MustParse(v)
		}
		for k, v := range n.Allocatable {
			alloc[corev1.ResourceName(k)] = resource.MustParse(v)
		}
		m.nodes[n.Name] = &Node{Cfg: n, IPAM: netns.NewIPAM(n.Prefix, n.Addr), Allocatable: alloc}
	}
	m.rootBinds = container.RootBindsFor(cfg.RootBinds)
	m.etcFiles = container.EtcFilesNotBound(cfg.EtcFiles, m.rootBinds)
	m.factory = informers.NewSharedInformerFactory(client, 10*time.Minute)
	m.services = m.factory.Core().V1().Services().Lister()
	m.configMaps = m.factory.Core().V1().ConfigMaps().Lister()
	m.secrets = m.factory.Core().V1().Secrets().Lister()
	return m, nil
}

// Node returns the served node named name.
func (m *Manager) Node(name string) *Node { return m.nodes[name] }

// Config is the kubelet configuration.
func (m *Manager) Config() *config.Config { return m.cfg }

// Start runs the informers (Services for hosts files, ConfigMaps and Secrets for volumes and env)
// and the hosts file writer; it returns once their caches are filled.
func (m *Manager) Start(ctx context.Context) error {
	if err := os.MkdirAll(m.cfg.PodsDir(), 0o755); err != nil {
		return fmt.Errorf("making the pods directory: %w", err)
	}
	kickHosts := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { m.KickHosts() },
		UpdateFunc: func(any, any) { m.KickHosts() },
		DeleteFunc: func(any) { m.KickHosts() },
	}
	if _, err := m.factory.Core().V1().Services().Informer().AddEventHandler(kickHosts); err != nil {
		return err
	}
	kickVolumes := func(obj any) {
		if meta, ok := obj.(interface{ GetNamespace() string }); ok {
			m.kickVolumes(meta.GetNamespace())
		}
	}
	for _, inf := range []cache.SharedIndexInformer{
		m.factory.Core().V1().ConfigMaps().Informer(), m.factory.Core().V1().Secrets().Informer(),
	} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: kickVolumes, UpdateFunc: func(_, o any) { kickVolumes(o) }, DeleteFunc: kickVolumes,
		}); err != nil {
			return err
		}
	}
	m.factory.Start(ctx.Done())
	for typ, ok := range m.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("the %v informer did not sync", typ)
		}
	}
	m.reloadExtraHosts()
	go m.hostsWriter(ctx)
	return nil
}

// KickHosts schedules a rewrite of every pod's hosts file.
func (m *Manager) KickHosts() {
	select {
	case m.hostsKick <- struct{}{}:
	default:
	}
}

// ReloadHosts re-reads the extra hosts file and rewrites every pod's hosts file (SIGHUP).
func (m *Manager) ReloadHosts() {
	m.reloadExtraHosts()
	m.KickHosts()
}

func (m *Manager) reloadExtraHosts() {
	if m.cfg.HostsFile == "" {
		return
	}
	data, err := os.ReadFile(m.cfg.HostsFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "Reading the extra hosts file", "file", m.cfg.HostsFile)
		return
	}
	m.extraMu.Lock()
	m.extra = string(data)
	m.extraMu.Unlock()
}

func (m *Manager) extraHosts() string {
	m.extraMu.Lock()
	defer m.extraMu.Unlock()
	return m.extra
}

func (m *Manager) hostsWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.hostsKick:
		}
		svcs, err := m.services.List(labelsEverything())
		if err != nil {
			klog.ErrorS(err, "Listing Services for hosts files")
			continue
		}
		list := names.ServicesFrom(svcs)
		for _, p := range m.all() {
			if err := p.writeHosts(list); err != nil {
				klog.ErrorS(err, "Rewriting a pod's hosts file", "pod", p.key)
			}
		}
	}
}

func (m *Manager) kickVolumes(namespace string) {
	for _, p := range m.all() {
		if p.namespace == namespace {
			p.kickVolumes()
		}
	}
}

func (m *Manager) all() []*Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Pod, 0, len(m.byUID))
	for _, p := range m.byUID {
		out = append(out, p)
	}
	return out
}

// Lookup returns the pod namespace/name on node (nil when unknown).
func (m *Manager) Lookup(node, namespace, name string) *Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.byKey[namespace+"/"+name]
	if p == nil || p.node.Cfg.Name != node {
		return nil
	}
	return p
}

// PodsOn returns the pods of node.
func (m *Manager) PodsOn(node string) []*Pod {
	var out []*Pod
	for _, p := range m.all() {
		if p.node.Cfg.Name == node {
			out = append(out, p)
		}
	}
	return out
}

func (m *Manager) remove(p *Pod) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.byUID[p.uid] == p {
		delete(m.byUID, p.uid)
	}
	if m.byKey[p.key] == p {
		delete(m.byKey, p.key)
	}
}

// Shutdown stops every pod with at most the configured grace, removes their network namespaces
// and volumes (keeping their logs), then sweeps anything left with the run's prefix.
func (m *Manager) Shutdown(ctx context.Context) {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	grace := time.Duration(m.cfg.ShutdownGraceSeconds) * time.Second
	var wg sync.WaitGroup
	for _, p := range m.all() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.shutdown(ctx, grace)
		}()
	}
	wg.Wait()
	if err := Cleanup(ctx, m.cfg, CleanupKeepLogs); err != nil {
		klog.ErrorS(err, "Sweeping leftovers at shutdown")
	}
}
