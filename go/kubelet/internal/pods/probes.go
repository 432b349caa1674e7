package pods

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/container"
	"github.com/istio-egress-harness/kubelet/internal/probe"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// startProbes starts the container's probe workers for this run (they end with runCtx).
func (p *Pod) startProbes(runCtx context.Context, c *ctr, proc *container.Process) {
	readinessKick := make(chan struct{}, 1)
	started := func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return c.started
	}
	for _, w := range []struct {
		kind probe.Kind
		spec *corev1.Probe
	}{{probe.Startup, c.spec.StartupProbe}, {probe.Readiness, c.spec.ReadinessProbe}, {probe.Liveness, c.spec.LivenessProbe}} {
		if w.spec == nil || c.kind == kindInit {
			continue
		}
		kind := w.kind
		worker := &probe.Worker{
			Kind: kind, Probe: w.spec, Check: p.check(c, w.spec), Started: started,
			Report: func(ok bool, msg string) { p.probeResult(c, proc, kind, ok, msg, readinessKick) },
		}
		if kind == probe.Readiness {
			worker.Trigger = readinessKick
		}
		go worker.Run(runCtx, time.Now())
	}
}

// probeResult applies a probe's reported result to the container's current run.
func (p *Pod) probeResult(c *ctr, proc *container.Process, kind probe.Kind, ok bool, msg string, readinessKick chan struct{}) {
	p.mu.Lock()
	if c.proc != proc {
		p.mu.Unlock()
		return
	}
	switch kind {
	case probe.Startup:
		if ok {
			c.started = true
			c.ready = c.spec.ReadinessProbe == nil
			klog.InfoS("Container started (startup probe passed)", "pod", p.key, "container", c.spec.Name)
			select {
			case readinessKick <- struct{}{}:
			default:
			}
		}
	case probe.Readiness:
		if c.ready != ok {
			klog.InfoS("Container readiness changed", "pod", p.key, "container", c.spec.Name, "ready", ok, "probe", msg)
		}
		c.ready = ok
	}
	p.touchLocked()
	p.mu.Unlock()
	if !ok && kind != probe.Readiness {
		klog.InfoS("Container failed its probe and will be restarted", "pod", p.key, "container", c.spec.Name, "probe", kind, "msg", msg)
		grace := p.graceFor(c, kind)
		p.killContainer(c, proc, fmt.Sprintf("%s probe failed: %s", kind, msg), grace)
	}
}

// graceFor is the grace period of a probe-triggered kill.
func (p *Pod) graceFor(c *ctr, kind probe.Kind) time.Duration {
	spec := c.spec.LivenessProbe
	if kind == probe.Startup {
		spec = c.spec.StartupProbe
	}
	if spec != nil && spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	return p.podGrace()
}

// podGrace is the pod's terminationGracePeriodSeconds (30 s when unset).
func (p *Pod) podGrace() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if g := p.obj.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// check returns the function that performs one attempt of probe spec.
func (p *Pod) check(c *ctr, spec *corev1.Probe) probe.Check {
	switch {
	case spec.HTTPGet != nil:
		return func(ctx context.Context, timeout time.Duration) (bool, string) {
			port, err := probe.ResolvePort(spec.HTTPGet.Port, &c.spec)
			if err != nil {
				return false, err.Error()
			}
			host := spec.HTTPGet.Host
			if host == "" {
				host = p.ip.String()
			}
			return probe.HTTPGet(ctx, spec.HTTPGet, host, port, timeout)
		}
	case spec.TCPSocket != nil:
		return func(_ context.Context, timeout time.Duration) (bool, string) {
			port, err := probe.ResolvePort(spec.TCPSocket.Port, &c.spec)
			if err != nil {
				return false, err.Error()
			}
			host := spec.TCPSocket.Host
			if host == "" {
				host = p.ip.String()
			}
			return probe.TCP(host, port, timeout)
		}
	case spec.Exec != nil:
		return func(ctx context.Context, timeout time.Duration) (bool, string) {
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			code, err := p.execIn(ctx, c, spec.Exec.Command, nil, &out, &out)
			if err != nil {
				return false, fmt.Sprintf("exec probe %v: %v", spec.Exec.Command, err)
			}
			if code != 0 {
				return false, fmt.Sprintf("exec probe %v exited %d: %s", spec.Exec.Command, code, out.String())
			}
			return true, ""
		}
	}
	klog.InfoS("gRPC probes are not implemented; this one is assumed to pass", "pod", p.key, "container", c.spec.Name)
	return func(context.Context, time.Duration) (bool, string) { return true, "" }
}

// postStart runs the container's postStart hook; a failure kills the container
// (FailedPostStartHook), which then restarts per restartPolicy.
func (p *Pod) postStart(ctx context.Context, c *ctr, proc *container.Process, h *corev1.LifecycleHandler) {
	if err := p.runHook(ctx, c, h, p.podGrace()); err != nil && ctx.Err() == nil {
		klog.InfoS("postStart hook failed", "pod", p.key, "container", c.spec.Name, "err", err.Error())
		p.killContainer(c, proc, "FailedPostStartHook: "+err.Error(), p.podGrace())
	}
}

// runHook runs a lifecycle handler (exec, httpGet or sleep) within limit.
func (p *Pod) runHook(ctx context.Context, c *ctr, h *corev1.LifecycleHandler, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	switch {
	case h.Exec != nil:
		var out bytes.Buffer
		code, err := p.execIn(ctx, c, h.Exec.Command, nil, &out, &out)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("hook %v exited %d: %s", h.Exec.Command, code, out.String())
		}
	case h.HTTPGet != nil:
		port, err := probe.ResolvePort(h.HTTPGet.Port, &c.spec)
		if err != nil {
			return err
		}
		host := h.HTTPGet.Host
		if host == "" {
			host = p.ip.String()
		}
		if ok, msg := probe.HTTPGet(ctx, h.HTTPGet, host, port, limit); !ok {
			return fmt.Errorf("hook: %s", msg)
		}
	case h.Sleep != nil:
		sleepCtx(ctx, time.Duration(h.Sleep.Seconds)*time.Second, nil)
	}
	return nil
}
