package pods

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/container"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// sidecarMinGrace is the least time a native sidecar gets to stop after the app containers, as
// the kubelet gives it when the pod's grace period is used up.
const sidecarMinGrace = 2 * time.Second

// apiTimeout bounds one API call made outside virtual-kubelet (the final pod delete).
const apiTimeout = 30 * time.Second

// killContainer stops the current run of c (a failed liveness or startup probe or postStart hook,
// a changed image); its supervisor then restarts it per restartPolicy.
func (p *Pod) killContainer(c *ctr, proc *container.Process, reason string, grace time.Duration) {
	p.mu.Lock()
	if c.proc != proc || c.killReason != "" {
		p.mu.Unlock()
		return
	}
	c.killReason = reason
	p.mu.Unlock()
	go p.stopProcess(c, proc, time.Now().Add(grace))
}

// stopProcess runs the preStop hook, sends SIGTERM to the main process, waits until deadline,
// then kills the whole process group, and waits for the exit.
func (p *Pod) stopProcess(c *ctr, proc *container.Process, deadline time.Time) {
	if h := c.spec.Lifecycle; h != nil && h.PreStop != nil && !proc.Exited() {
		if err := p.runHook(context.Background(), c, h.PreStop, time.Until(deadline)); err != nil {
			klog.InfoS("preStop hook failed", "pod", p.key, "container", c.spec.Name, "err", err.Error())
		}
	}
	_ = proc.Terminate()
	t := time.NewTimer(max(time.Until(deadline), 0))
	defer t.Stop()
	select {
	case <-proc.Done():
	case <-t.C:
		klog.InfoS("Container did not stop within its grace period; killing it", "pod", p.key, "container", c.spec.Name)
		_ = proc.Kill()
		<-proc.Done()
	}
}

// stopContainers ends the pod's lifecycle: no more starts or restarts; the app containers and any
// running init container get SIGTERM together, then the native sidecars in reverse order, within
// grace. It returns when every process and lifecycle goroutine is gone. Safe to call repeatedly.
func (p *Pod) stopContainers(grace time.Duration) {
	p.stopOnce.Do(func() {
		deadline := time.Now().Add(grace)
		p.mu.Lock()
		p.terminating = true
		p.cancel()
		type running struct {
			c    *ctr
			proc *container.Process
		}
		var first, sidecars []running
		for _, c := range p.containers {
			if c.proc == nil {
				continue
			}
			if c.kind == kindSidecar {
				sidecars = append([]running{{c, c.proc}}, sidecars...) // reverse order
			} else {
				first = append(first, running{c, c.proc})
			}
		}
		p.touchLocked()
		p.mu.Unlock()

		var wg sync.WaitGroup
		for _, r := range first {
			wg.Add(1)
			go func() { defer wg.Done(); p.stopProcess(r.c, r.proc, deadline) }()
		}
		wg.Wait()
		for _, r := range sidecars {
			d := deadline
			if time.Until(d) < sidecarMinGrace {
				d = time.Now().Add(sidecarMinGrace)
			}
			p.stopProcess(r.c, r.proc, d)
		}
	})
	p.lifecycle.Wait()
}

// complete finishes a pod whose app containers are all done for good (or whose init container
// failed with restartPolicy Never): its sidecars stop, its network goes, its phase becomes
// Succeeded or Failed. Logs stay until the pod is deleted.
func (p *Pod) complete() {
	p.stopContainers(p.podGrace())
	p.mu.Lock()
	p.terminal = true
	p.mu.Unlock()
	p.releaseNetwork(context.Background())
	snap := p.Snapshot()
	klog.InfoS("Pod completed", "pod", p.key, "phase", snap.Status.Phase)
	p.touch()
}

// Delete stops the pod (grace period, then SIGKILL), removes its network namespace and directory,
// reports its final status and, when the deletion came from the API server, deletes the object
// with grace period 0 (as the kubelet does once a pod's containers are gone). It returns at once;
// the work runs in the background. Repeated calls are fine.
func (p *Pod) Delete(grace time.Duration, fromAPI bool) {
	p.deleteOnce.Do(func() {
		klog.InfoS("Pod deleting", "pod", p.key, "uid", p.uid, "grace", grace)
		go p.deleteNow(grace, fromAPI)
	})
}

func (p *Pod) deleteNow(grace time.Duration, fromAPI bool) {
	ctx := context.Background()
	p.stopContainers(grace)
	p.mu.Lock()
	p.terminal = true
	p.mu.Unlock()
	p.releaseNetwork(ctx)
	if err := os.RemoveAll(p.dir); err != nil {
		klog.ErrorS(err, "Removing the pod directory", "pod", p.key, "dir", p.dir)
	}
	p.closeStopped()
	p.sendStatus()
	p.m.remove(p)
	if fromAPI {
		ctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		opts := metav1.DeleteOptions{GracePeriodSeconds: new(int64), Preconditions: metav1.NewUIDPreconditions(string(p.uid))}
		obj := p.object()
		err := p.m.client.CoreV1().Pods(obj.Namespace).Delete(ctx, obj.Name, opts)
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			klog.ErrorS(err, "Deleting the pod object (virtual-kubelet retries after the grace period)", "pod", p.key)
		}
	}
	klog.InfoS("Pod deleted", "pod", p.key, "uid", p.uid)
}

// shutdown stops the pod when the kubelet exits: at most grace, network removed, volumes and
// container roots removed, logs kept for the harness to collect. The API object stays.
func (p *Pod) shutdown(_ context.Context, grace time.Duration) {
	p.stopContainers(min(grace, p.podGrace()))
	p.releaseNetwork(context.Background())
	for _, sub := range []string{"volumes", "containers", "etc"} {
		if err := os.RemoveAll(filepath.Join(p.dir, sub)); err != nil {
			klog.ErrorS(err, "Removing pod files at shutdown", "pod", p.key)
		}
	}
	p.closeStopped()
	klog.InfoS("Pod stopped (kubelet shutdown)", "pod", p.key)
}

func (p *Pod) closeStopped() {
	select {
	case <-p.stopped:
	default:
		close(p.stopped)
	}
}

// Update applies a changed pod object: new labels or annotations refresh downward API volumes; a
// changed container image restarts that container with the new image.
func (p *Pod) Update(pod *corev1.Pod) {
	type restart struct {
		c    *ctr
		proc *container.Process
	}
	var restarts []restart
	p.mu.Lock()
	old := p.obj
	p.obj = pod.DeepCopy()
	meta := !mapsEqual(old.Labels, pod.Labels) || !mapsEqual(old.Annotations, pod.Annotations)
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, sc := range list {
			c := p.container(sc.Name)
			if c == nil || c.image == sc.Image {
				continue
			}
			klog.InfoS("Container image changed", "pod", p.key, "container", sc.Name, "from", c.image, "to", sc.Image)
			c.image = sc.Image
			if c.proc != nil {
				restarts = append(restarts, restart{c, c.proc})
			}
		}
	}
	p.touchLocked()
	p.mu.Unlock()
	if meta {
		p.kickVolumes()
	}
	for _, r := range restarts {
		p.killContainer(r.c, r.proc, "image changed", p.podGrace())
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
