package pods

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/volumes"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Restart back-off: 1 s doubling to 10 s (the kubelet's is 10 s to 5 min; short on purpose, so
// a test run recovers quickly), reset after a run of 2x the maximum.
const (
	backoffInitial = time.Second
	backoffMax     = 10 * time.Second
)

type backoff struct{ next time.Duration }

// after returns the delay before the next attempt, given how long the last one ran.
func (b *backoff) after(ran time.Duration) time.Duration {
	if ran >= 2*backoffMax {
		b.next = 0
	}
	if b.next == 0 {
		b.next = backoffInitial
	} else {
		b.next = min(2*b.next, backoffMax)
	}
	return b.next
}

// sleepCtx waits d or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-wake:
		return true
	}
}

// run is the pod's lifecycle: volumes, then the init containers in order (a native sidecar is
// started and waited for until started), then the app containers, each under a supervisor that
// restarts it per restartPolicy. When every app container has finished for good the pod is
// complete.
func (p *Pod) run() {
	defer p.lifecycle.Done()
	if !p.setupVolumes() {
		return
	}
	go p.volumeRefresher()
	for _, c := range p.containers {
		if c.kind == kindApp {
			continue
		}
		if c.kind == kindSidecar {
			p.lifecycle.Add(1)
			go p.supervise(c)
			if !p.waitUntil(p.ctx, func() bool { return c.started }) {
				return
			}
			continue
		}
		if !p.runInit(c) {
			return
		}
	}
	p.mu.Lock()
	p.initialized = true
	for _, c := range p.containers {
		if c.kind == kindApp && c.waitingReason == "PodInitializing" {
			c.waitingReason = "ContainerCreating"
		}
	}
	p.touchLocked()
	p.mu.Unlock()
	klog.InfoS("Pod initialized", "pod", p.key)
	done := make(chan struct{})
	apps := 0
	for _, c := range p.containers {
		if c.kind == kindApp {
			apps++
			p.lifecycle.Add(1)
			go func() { p.supervise(c); done <- struct{}{} }()
		}
	}
	for range apps {
		<-done
	}
	if p.ctx.Err() == nil {
		go p.complete()
	}
}

// setupVolumes makes every volume, retrying with back-off while a ConfigMap or Secret is
// missing; false when the pod stopped first.
func (p *Pod) setupVolumes() bool {
	var b backoff
	for {
		next, err := p.vols.Sync(p.ctx, p.object(), p.runtimeInfo())
		if err == nil {
			p.mu.Lock()
			p.volumesReady, p.volumesMsg = true, ""
			p.touchLocked()
			p.mu.Unlock()
			p.scheduleTokenRefresh(next)
			return true
		}
		msg := "MountVolume.SetUp failed for " + err.Error()
		var wait *volumes.WaitError
		if !errors.As(err, &wait) {
			klog.ErrorS(err, "Setting up pod volumes", "pod", p.key)
		}
		klog.InfoS("Pod volumes not ready", "pod", p.key, "err", msg)
		p.mu.Lock()
		p.volumesMsg = msg
		for _, c := range p.containers {
			if c.waitingReason == "ContainerCreating" || c.waitingReason == "PodInitializing" {
				c.waitingMsg = msg
			}
		}
		p.touchLocked()
		p.mu.Unlock()
		if !sleepCtx(p.ctx, b.after(0), p.volKick) {
			return false
		}
	}
}

// volumeRefresher rewrites the pod's volumes when a ConfigMap or Secret of its namespace changes,
// its labels or annotations change, or a token is due for refresh.
func (p *Pod) volumeRefresher() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		due := p.tokenDue
		p.mu.Unlock()
		timer.Stop()
		var fire <-chan time.Time
		if !due.IsZero() {
			timer.Reset(time.Until(due))
			fire = timer.C
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.volKick:
		case <-fire:
		}
		next, err := p.vols.Sync(p.ctx, p.object(), p.runtimeInfo())
		if err != nil {
			klog.ErrorS(err, "Refreshing pod volumes", "pod", p.key)
			next = time.Now().Add(backoffMax) // a failed token refresh is retried
		}
		p.scheduleTokenRefresh(next)
	}
}

func (p *Pod) scheduleTokenRefresh(next time.Time) {
	p.mu.Lock()
	p.tokenDue = next
	p.mu.Unlock()
}

// runInit runs a regular init container until it exits 0; false when the pod stopped or failed.
func (p *Pod) runInit(c *ctr) bool {
	var b backoff
	for {
		a := p.runOnce(c)
		if p.ctx.Err() != nil {
			return false
		}
		switch {
		case a.blocked:
			<-p.ctx.Done()
			return false
		case a.retry:
		case a.exitCode == 0:
			p.mu.Lock()
			c.done = true
			p.touchLocked()
			p.mu.Unlock()
			return true
		case p.policy == corev1.RestartPolicyNever:
			klog.InfoS("Init container failed; the pod fails (restartPolicy Never)", "pod", p.key, "container", c.spec.Name)
			go p.complete()
			return false
		default:
			p.prepareRestart(c)
		}
		if !sleepCtx(p.ctx, b.after(a.ran), nil) {
			return false
		}
	}
}

// supervise runs an app container or a native sidecar, restarting it per restartPolicy (always
// for a sidecar) with back-off, until the pod stops or the container is done for good.
func (p *Pod) supervise(c *ctr) {
	defer p.lifecycle.Done()
	var b backoff
	for {
		a := p.runOnce(c)
		if p.ctx.Err() != nil {
			return
		}
		switch {
		case a.blocked:
			<-p.ctx.Done()
			return
		case a.retry:
		case !p.restarts(c, a.exitCode):
			p.mu.Lock()
			c.done = true
			p.touchLocked()
			p.mu.Unlock()
			return
		default:
			p.prepareRestart(c)
		}
		if !sleepCtx(p.ctx, b.after(a.ran), nil) {
			return
		}
	}
}

func (p *Pod) restarts(c *ctr, exitCode int) bool {
	if c.kind == kindSidecar {
		return true
	}
	switch p.policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return exitCode != 0
	}
	return true
}

// prepareRestart moves the last termination to lastState and shows CrashLoopBackOff while the
// container waits for its restart.
func (p *Pod) prepareRestart(c *ctr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.terminated != nil {
		c.lastTerm = c.terminated
		c.terminated = nil
	}
	c.waitingReason = "CrashLoopBackOff"
	c.waitingMsg = fmt.Sprintf("back-off restarting failed container %s in pod %s", c.spec.Name, p.key)
	p.touchLocked()
	klog.InfoS("Container will restart", "pod", p.key, "container", c.spec.Name, "restartCount", c.runs)
}
