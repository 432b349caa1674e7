package pods

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/crilog"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"k8s.io/klog/v2"
)

// Logs serves a container's log with the kubelet API's options. The current run's log is served
// (the previous run's with opts.Previous); follow ends when that run ends.
func (p *Pod) Logs(ctx context.Context, name string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	p.mu.Lock()
	c := p.container(name)
	if c == nil {
		p.mu.Unlock()
		return nil, errdefs.NotFoundf("pod %s has no container %q", p.key, name)
	}
	runs := c.runs
	var live crilog.Live
	if c.logs != nil && c.proc != nil {
		live = c.logs
	}
	p.mu.Unlock()

	index := runs - 1
	if opts.Previous {
		index = runs - 2
		live = nil
		if index < 0 {
			return nil, errdefs.InvalidInputf("previous terminated container %q in pod %s not found", name, p.key)
		}
	}
	if index < 0 {
		return nil, errdefs.InvalidInputf("container %q in pod %s is waiting to start", name, p.key)
	}
	path := filepath.Join(p.dir, "logs", name, fmt.Sprintf("%d.log", index))
	if _, err := os.Stat(path); err != nil {
		return nil, errdefs.NotFoundf("log of container %q in pod %s: %v", name, p.key, err)
	}
	o := crilog.Options{Tail: -1, LimitBytes: opts.LimitBytes, Timestamps: opts.Timestamps, Follow: opts.Follow}
	if opts.Tail > 0 {
		o.Tail = opts.Tail
	}
	if opts.SinceSeconds > 0 {
		o.Since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	} else if !opts.SinceTime.IsZero() {
		o.Since = opts.SinceTime
	}
	// tailLines=0 is valid and means no lines; api.ContainerLogOpts cannot tell it from "unset",
	// so it is served as all lines.
	pr, pw := io.Pipe()
	go func() {
		err := crilog.Copy(ctx, pw, path, o, live)
		if err != nil {
			klog.V(1).InfoS("Serving a container log ended", "pod", p.key, "container", name, "err", err.Error())
		}
		_ = pw.CloseWithError(err)
	}()
	return pr, nil
}
