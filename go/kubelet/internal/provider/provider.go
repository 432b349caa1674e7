// Package provider connects the pod manager to virtual-kubelet: one Provider per node implements
// node.PodLifecycleHandler, node.PodNotifier and the kubelet API handlers (logs, exec,
// port-forward, pods), and Node builds the Node object virtual-kubelet registers.
package provider

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/pods"
	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// Provider serves the pods of one node.
type Provider struct {
	node    string
	m       *pods.Manager
	started time.Time
}

// New returns the provider of node name.
func New(m *pods.Manager, name string) *Provider {
	return &Provider{node: name, m: m, started: time.Now()}
}

// CreatePod starts pod: its sandbox now, its containers in the background.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	return p.m.Create(ctx, p.node, pod)
}

// UpdatePod applies changed labels, annotations or images.
func (p *Provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	rp := p.m.Lookup(p.node, pod.Namespace, pod.Name)
	if rp == nil {
		return errdefs.NotFoundf("pod %s/%s is not running on node %s", pod.Namespace, pod.Name, p.node)
	}
	if rp.UID() != pod.UID {
		return fmt.Errorf("pod %s/%s: an earlier pod of that name (uid %s) is still stopping", pod.Namespace, pod.Name, rp.UID())
	}
	rp.Update(pod)
	return nil
}

// DeletePod stops pod in the background (grace period from the deletion, else the spec) and
// deletes the object once its containers are gone.
func (p *Provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	rp := p.m.Lookup(p.node, pod.Namespace, pod.Name)
	if rp == nil || rp.UID() != pod.UID {
		return errdefs.NotFoundf("pod %s/%s (uid %s) is not running on node %s", pod.Namespace, pod.Name, pod.UID, p.node)
	}
	grace := 30 * time.Second
	switch {
	case pod.DeletionGracePeriodSeconds != nil:
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	rp.Delete(grace, pod.DeletionTimestamp != nil)
	return nil
}

// GetPod returns the pod with its current status, or a NotFound error.
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	rp := p.m.Lookup(p.node, namespace, name)
	if rp == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not running on node %s", namespace, name, p.node)
	}
	return rp.Snapshot(), nil
}

// GetPodStatus returns the pod's current status.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod of the node.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	for _, rp := range p.m.PodsOn(p.node) {
		out = append(out, rp.Snapshot())
	}
	return out, nil
}

// NotifyPods installs virtual-kubelet's status callback.
func (p *Provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	p.m.Node(p.node).SetNotifier(cb)
}

func (p *Provider) lookup(namespace, name string) (*pods.Pod, error) {
	rp := p.m.Lookup(p.node, namespace, name)
	if rp == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not running on node %s", namespace, name, p.node)
	}
	return rp, nil
}

// GetContainerLogs serves /containerLogs/{ns}/{pod}/{container}.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	rp, err := p.lookup(namespace, podName)
	if err != nil {
		return nil, err
	}
	return rp.Logs(ctx, containerName, opts)
}

// RunInContainer serves /exec (kubectl exec).
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	rp, err := p.lookup(namespace, podName)
	if err != nil {
		return err
	}
	return rp.Exec(ctx, containerName, cmd, attach.Stdin(), attach.Stdout(), attach.Stderr())
}

// AttachToContainer is not supported: containers have no terminal to attach to.
func (p *Provider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by egh-kubelet (use kubectl logs -f or kubectl exec)")
}

// PortForward serves /portForward (kubectl port-forward, istioctl proxy-config).
func (p *Provider) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	rp, err := p.lookup(namespace, podName)
	if err != nil {
		stream.Close()
		return err
	}
	return rp.PortForward(ctx, port, stream)
}

// GetStatsSummary returns a summary without usage figures (the pods are not in cgroups).
func (p *Provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	s := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.node, StartTime: metav1.NewTime(p.started)}}
	for _, rp := range p.m.PodsOn(p.node) {
		pod := rp.Snapshot()
		ps := statsv1alpha1.PodStats{PodRef: statsv1alpha1.PodReference{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)}}
		if pod.Status.StartTime != nil {
			ps.StartTime = *pod.Status.StartTime
		}
		s.Pods = append(s.Pods, ps)
	}
	return s, nil
}

// GetMetricsResource returns no metrics.
func (p *Provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}
