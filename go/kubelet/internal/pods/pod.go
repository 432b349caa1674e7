package pods

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/downward"
	"github.com/istio-egress-harness/kubelet/internal/names"
	"github.com/istio-egress-harness/kubelet/internal/netns"
	"github.com/istio-egress-harness/kubelet/internal/volumes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Pod is one running pod.
type Pod struct {
	m         *Manager
	node      *Node
	uid       types.UID
	key       string // namespace/name
	namespace string
	dir       string // <runDir>/pods/<uid>
	vols      *volumes.Manager
	policy    corev1.RestartPolicy

	mu           sync.Mutex
	obj          *corev1.Pod // the latest pod object from the API server
	sandbox      netns.Sandbox
	ip           netip.Addr
	hostsPath    string
	resolvPath   string
	startTime    metav1.Time
	volumesReady bool
	volumesMsg   string
	tokenDue     time.Time // when the next service account token refresh is due
	initialized  bool
	containers   []*ctr // init containers then app containers, in spec order
	terminating  bool
	terminal     bool
	changed      chan struct{} // closed and replaced at every change (for waiters)

	ctx        context.Context // the lifecycle: cancelled when the pod stops
	cancel     context.CancelFunc
	lifecycle  sync.WaitGroup // the lifecycle goroutine and every container supervisor
	notifyCh   chan struct{}
	volKick    chan struct{}
	stopOnce   sync.Once
	deleteOnce sync.Once
	stopped    chan struct{} // closed once every process is gone and the network removed
}

func (p *Pod) hostNetwork() bool { return p.obj.Spec.HostNetwork }

// describe names the pod for messages.
func (p *Pod) describe() string { return fmt.Sprintf("pod %s (uid %s)", p.key, p.uid) }

// Create registers pod and builds its sandbox (network namespace, hosts and resolv.conf, pod
// directory); its containers then start in the background. An error leaves nothing behind.
func (m *Manager) Create(ctx context.Context, nodeName string, pod *corev1.Pod) error {
	node := m.nodes[nodeName]
	if node == nil {
		return fmt.Errorf("pod %s/%s is bound to node %q, which this kubelet does not serve", pod.Namespace, pod.Name, nodeName)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("pod %s/%s: the kubelet is shutting down", pod.Namespace, pod.Name)
	}
	if old := m.byKey[pod.Namespace+"/"+pod.Name]; old != nil {
		m.mu.Unlock()
		return fmt.Errorf("pod %s/%s: an earlier pod of that name (uid %s) is still stopping", pod.Namespace, pod.Name, old.uid)
	}
	m.mu.Unlock()

	p := &Pod{
		m: m, node: node, uid: pod.UID, key: pod.Namespace + "/" + pod.Name, namespace: pod.Namespace,
		dir: filepath.Join(m.cfg.PodsDir(), string(pod.UID)), obj: pod.DeepCopy(),
		changed: make(chan struct{}), notifyCh: make(chan struct{}, 1), volKick: make(chan struct{}, 1),
		stopped: make(chan struct{}), policy: pod.Spec.RestartPolicy,
	}
	p.vols = volumes.New(filepath.Join(p.dir, "volumes"), m, m, pod)
	p.containers = newContainers(pod)
	if err := p.makeSandbox(ctx); err != nil {
		return err
	}
	p.startTime = metav1.Now()

	m.mu.Lock()
	m.byUID[p.uid] = p
	m.byKey[p.key] = p
	m.mu.Unlock()

	p.ctx, p.cancel = context.WithCancel(context.Background())
	go p.notifier()
	p.lifecycle.Add(1)
	go p.run()
	klog.InfoS("Pod created", "pod", p.key, "uid", p.uid, "node", nodeName, "podIP", p.ip.String(), "netns", p.sandbox.Name)
	p.touch()
	return nil
}

// makeSandbox allocates the pod IP and makes the network namespace and the name files.
func (p *Pod) makeSandbox(ctx context.Context) (err error) {
	if err := os.MkdirAll(filepath.Join(p.dir, "etc"), 0o755); err != nil {
		return fmt.Errorf("%s: %w", p.describe(), err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(p.dir)
		}
	}()
	if p.hostNetwork() {
		p.ip = p.node.Cfg.Addr
		p.hostsPath = filepath.Join(p.dir, "etc", "hosts")
		p.resolvPath = filepath.Join(p.dir, "etc", "resolv.conf")
	} else {
		ip, err := p.node.IPAM.Allocate(string(p.uid), p.obj.Status.PodIP)
		if err != nil {
			return fmt.Errorf("%s: %w", p.describe(), err)
		}
		nsName, veth := netns.Names(p.m.cfg.NetnsPrefix, p.obj.Namespace, p.obj.Name, string(p.uid))
		p.ip = ip
		p.sandbox = netns.Sandbox{Name: nsName, HostVeth: veth, IP: ip, NodeIP: p.node.Cfg.Addr}
		if err := netns.Create(ctx, p.sandbox); err != nil {
			p.node.IPAM.Release(string(p.uid), ip)
			return fmt.Errorf("%s: %w", p.describe(), err)
		}
		if err := netns.SetSysctls(nsName, p.sysctls()); err != nil {
			p.releaseNetwork(ctx)
			return fmt.Errorf("%s: %w", p.describe(), err)
		}
		etc := filepath.Join(netns.EtcDir, nsName)
		if err := os.MkdirAll(etc, 0o755); err != nil {
			p.releaseNetwork(ctx)
			return fmt.Errorf("%s: %w", p.describe(), err)
		}
		p.hostsPath = filepath.Join(etc, "hosts")
		p.resolvPath = filepath.Join(etc, "resolv.conf")
	}
	p.m.reloadExtraHosts()
	svcs, err := p.m.Services()
	if err == nil {
		err = p.writeHosts(names.ServicesFrom(svcs))
	}
	if err == nil {
		err = names.WriteInPlace(p.resolvPath, names.Resolv(p.obj, p.m.cfg.ClusterDomain, p.m.cfg.DNSServers))
	}
	if err != nil {
		p.releaseNetwork(ctx)
		return fmt.Errorf("%s: writing its hosts and resolv.conf: %w", p.describe(), err)
	}
	return nil
}

// sysctls are the pod's securityContext sysctls that belong to its network namespace; others
// are logged and skipped (the pod has no IPC namespace of its own).
func (p *Pod) sysctls() map[string]string {
	out := map[string]string{}
	sc := p.obj.Spec.SecurityContext
	if sc == nil {
		return out
	}
	for _, s := range sc.Sysctls {
		if len(s.Name) > 4 && (s.Name[:4] == "net." || s.Name[:4] == "net/") {
			out[s.Name] = s.Value
		} else {
			klog.InfoS("Skipping a sysctl outside the network namespace", "pod", p.key, "sysctl", s.Name)
		}
	}
	return out
}

// releaseNetwork removes the network namespace and frees the address (idempotent).
func (p *Pod) releaseNetwork(ctx context.Context) {
	if p.sandbox.Name == "" {
		return
	}
	p.mu.Lock()
	p.hostsPath = "" // its /etc/netns folder goes with the namespace: no more hosts rewrites
	p.mu.Unlock()
	if err := netns.Delete(ctx, p.sandbox); err != nil {
		klog.ErrorS(err, "Removing a pod's network namespace", "pod", p.key, "netns", p.sandbox.Name)
	}
	p.node.IPAM.Release(string(p.uid), p.ip)
}

// writeHosts rewrites the pod's hosts file in place.
func (p *Pod) writeHosts(svcs []names.Service) error {
	p.mu.Lock()
	path := p.hostsPath
	in := names.HostsInput{
		PodIP: p.ip.String(), Hostname: names.Hostname(p.obj), Subdomain: p.obj.Spec.Subdomain,
		Namespace: p.obj.Namespace, ClusterDomain: p.m.cfg.ClusterDomain, HostAliases: p.obj.Spec.HostAliases,
		Services: svcs, Extra: p.m.extraHosts(),
	}
	p.mu.Unlock()
	if path == "" {
		return nil
	}
	return names.WriteInPlace(path, names.Hosts(in))
}

// runtimeInfo is what the downward API needs beyond the pod object.
func (p *Pod) runtimeInfo() downward.Runtime {
	return downward.Runtime{
		PodIPs:      []string{p.ip.String()},
		HostIPs:     []string{p.node.Cfg.Addr.String()},
		Allocatable: p.node.Allocatable,
	}
}

// object returns a copy of the latest pod object.
func (p *Pod) object() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.obj.DeepCopy()
}

// touch wakes waiters and schedules a status notification.
func (p *Pod) touch() {
	p.mu.Lock()
	p.touchLocked()
	p.mu.Unlock()
}

func (p *Pod) touchLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
	select {
	case p.notifyCh <- struct{}{}:
	default:
	}
}

// waitUntil blocks until cond (checked under the pod lock) holds or ctx ends.
func (p *Pod) waitUntil(ctx context.Context, cond func() bool) bool {
	for {
		p.mu.Lock()
		ok := cond()
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		}
	}
}

// notifier sends the pod's status to virtual-kubelet after changes (coalescing bursts).
func (p *Pod) notifier() {
	for {
		select {
		case <-p.stopped:
			return
		case <-p.notifyCh:
		}
		p.sendStatus()
	}
}

func (p *Pod) sendStatus() {
	cb := p.node.notifier()
	if cb == nil {
		return
	}
	cb(p.Snapshot())
}

func (p *Pod) kickVolumes() {
	select {
	case p.volKick <- struct{}{}:
	default:
	}
}

// Snapshot is the pod object with its current status.
func (p *Pod) Snapshot() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.obj.DeepCopy()
	out.Status = p.statusLocked()
	return out
}

// UID is the pod's UID.
func (p *Pod) UID() types.UID { return p.uid }
