package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/config"
	"github.com/istio-egress-harness/kubelet/internal/pods"
	"github.com/istio-egress-harness/kubelet/internal/provider"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kversion "k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
)

// readyTimeout bounds the wait for every node to register and its pod controller to sync.
const readyTimeout = 2 * time.Minute

// apiCheckTimeout bounds the first API server request.
const apiCheckTimeout = 20 * time.Second

type kubelet struct {
	manager *pods.Manager
	nodes   []*nodeutil.Node
	failed  chan error
}

func start(ctx context.Context, cfg *config.Config) (*kubelet, error) {
	tools, err := pods.FindTools()
	if err != nil {
		return nil, err
	}
	if err := checkNodeNamespace(); err != nil {
		return nil, err
	}
	checkRootBinds(cfg, tools)
	warnMountNamespace()

	// nodeutil.NewNode builds a default client from $KUBECONFIG before taking ours; point it at
	// the same file so it does not log a failure.
	_ = os.Setenv("KUBECONFIG", cfg.Kubeconfig)
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	restCfg.UserAgent = "egh-kubelet/" + version
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	if err := checkAPI(ctx, client, restCfg.Host, cfg.Kubeconfig); err != nil {
		return nil, err
	}

	// Leftovers of an earlier kubelet of this run (a crash): their pods are re-created from the API.
	if err := pods.Cleanup(ctx, cfg, pods.CleanupKeepLogs); err != nil {
		return nil, fmt.Errorf("removing the leftovers of an earlier run with prefix %q: %w", cfg.NetnsPrefix, err)
	}
	enableForwarding()

	m, err := pods.NewManager(cfg, client, tools)
	if err != nil {
		return nil, err
	}
	if err := m.Start(ctx); err != nil {
		return nil, err
	}
	k := &kubelet{manager: m, failed: make(chan error, len(cfg.Nodes))}
	for i := range cfg.Nodes {
		n, err := newNode(cfg, &cfg.Nodes[i], m, client)
		if err != nil {
			return nil, err
		}
		k.nodes = append(k.nodes, n)
		go func() {
			if err := n.Run(ctx); err != nil && ctx.Err() == nil {
				k.failed <- fmt.Errorf("node %s: %w", cfg.Nodes[i].Name, err)
			}
		}()
	}
	for i, n := range k.nodes {
		if err := n.WaitReady(ctx, readyTimeout); err != nil {
			return nil, fmt.Errorf("node %s did not become ready within %s: %w", cfg.Nodes[i].Name, readyTimeout, err)
		}
		if err := removeNotReadyTaint(ctx, client, cfg.Nodes[i].Name); err != nil {
			return nil, err
		}
		klog.InfoS("Node ready", "node", cfg.Nodes[i].Name, "ip", cfg.Nodes[i].IP,
			"kubeletAPI", net.JoinHostPort(cfg.Nodes[i].IP, strconv.Itoa(cfg.KubeletPort)))
	}
	return k, nil
}

// notReadyTaint is what the API server's TaintNodesByCondition admission puts on a new Node; the
// node lifecycle controller, which the netns cluster does not run, would remove it once the node is
// Ready. The kubelet removes it itself.
const notReadyTaint = "node.kubernetes.io/not-ready"

func removeNotReadyTaint(ctx context.Context, client kubernetes.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, apiCheckTimeout)
	defer cancel()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var kept []corev1.Taint
		for _, t := range n.Spec.Taints {
			if t.Key != notReadyTaint {
				kept = append(kept, t)
			}
		}
		if len(kept) == len(n.Spec.Taints) {
			return nil
		}
		n.Spec.Taints = kept
		_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("removing the %s taint from node %s: %w", notReadyTaint, name, err)
	}
	return nil
}

func newNode(cfg *config.Config, n *config.Node, m *pods.Manager, client kubernetes.Interface) (*nodeutil.Node, error) {
	tlsCfg, err := provider.TLSConfig(cfg, n)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	spec := provider.NodeObject(cfg, n, m.Node(n.Name).Allocatable, version)
	newProvider := func(nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		return provider.New(m, n.Name), nil, nil
	}
	return nodeutil.NewNode(n.Name, newProvider,
		nodeutil.WithClient(client),
		func(c *nodeutil.NodeConfig) error {
			c.NodeSpec = spec
			c.HTTPListenAddr = net.JoinHostPort(n.IP, strconv.Itoa(cfg.KubeletPort))
			c.Handler = mux
			c.TLSConfig = tlsCfg
			c.SkipDownwardAPIResolution = true // env is resolved at container start (status.podIP is known only then)
			c.NumWorkers = cfg.Workers
			c.StreamIdleTimeout = 30 * time.Minute
			c.StreamCreationTimeout = 30 * time.Second
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
	)
}

// stop stops every pod (short grace), removes the namespaces, then stops the node controllers.
func (k *kubelet) stop(cancel context.CancelFunc) {
	ctx, done := context.WithTimeout(context.Background(), 2*time.Minute)
	defer done()
	k.manager.Shutdown(ctx)
	cancel()
	var wg sync.WaitGroup
	for _, n := range k.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-n.Done():
			case <-ctx.Done():
			}
		}()
	}
	wg.Wait()
	klog.InfoS("Stopped")
}

func checkAPI(ctx context.Context, client kubernetes.Interface, host, kubeconfig string) error {
	ctx, cancel := context.WithTimeout(ctx, apiCheckTimeout)
	defer cancel()
	raw, err := client.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		return fmt.Errorf("the API server %s (kubeconfig %s) does not answer: %w", host, kubeconfig, err)
	}
	var v kversion.Info
	_ = json.Unmarshal(raw, &v)
	klog.InfoS("API server answers", "server", host, "version", v.GitVersion)
	return nil
}

// checkRootBinds warns when the programs run inside container roots are not under a root bind.
func checkRootBinds(cfg *config.Config, t pods.Tools) {
	for _, prog := range []string{t.Script.Setpriv, t.Script.Env} {
		dir := filepath.Dir(prog)
		covered := false
		for _, b := range cfg.RootBinds {
			if dir == b || strings.HasPrefix(dir, strings.TrimSuffix(b, "/")+"/") {
				covered = true
			}
		}
		if !covered {
			klog.InfoS("WARNING: a program containers need is not under any rootBinds path; containers will fail to start",
				"program", prog, "rootBinds", cfg.RootBinds)
		}
	}
}

// checkNodeNamespace refuses to run in the network namespace of PID 1 (the machine's own): the
// kubelet adds routes, enables forwarding and makes veths where it runs.
func checkNodeNamespace() error {
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net")
	if err1 == nil && err2 == nil && self == init {
		return fmt.Errorf("egh-kubelet runs in the network namespace of PID 1 (%s); start it inside the run's node "+
			"namespace: nsenter --net=/var/run/netns/<node netns> egh-kubelet --config FILE", self)
	}
	return nil
}

// warnMountNamespace tells when the kubelet runs in a mount namespace of its own (as under
// `ip netns exec`): the pod namespaces it names under /var/run/netns are then visible only to it.
func warnMountNamespace() {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	parent, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err1 == nil && err2 == nil && self != parent {
		klog.InfoS("Note: this process runs in another mount namespace than its parent (ip netns exec?): " +
			"pod network namespaces will be listed by `ip netns` only inside it; start it with " +
			"`nsenter --net=/var/run/netns/<node netns> egh-kubelet ...` to share them")
	}
}

// enableForwarding turns on IPv4 forwarding in the node namespace: pod-to-pod and pod-to-Service
// traffic is routed by it.
func enableForwarding() {
	const f = "/proc/sys/net/ipv4/ip_forward"
	if data, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(data)) == "1" {
		return
	}
	if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
		klog.ErrorS(err, "Enabling IPv4 forwarding in the node namespace")
		return
	}
	klog.InfoS("Enabled IPv4 forwarding in the node namespace")
}
