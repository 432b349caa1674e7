package pods

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/config"
	"github.com/istio-egress-harness/kubelet/internal/container"
	"github.com/istio-egress-harness/kubelet/internal/crilog"
	"github.com/istio-egress-harness/kubelet/internal/envvars"
	"github.com/istio-egress-harness/kubelet/internal/names"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

type ctrKind int

const (
	kindInit    ctrKind = iota // a regular init container: runs to completion before the next
	kindSidecar                // an init container with restartPolicy Always (native sidecar)
	kindApp                    // a regular container
)

// ctr is one container of a pod; every field after spec is guarded by the pod's lock.
type ctr struct {
	spec corev1.Container // as created; the image may change later (see image)
	kind ctrKind

	image string

	waitingReason, waitingMsg string
	runningSince              time.Time // zero unless the program is running
	terminated                *corev1.ContainerStateTerminated
	lastTerm                  *corev1.ContainerStateTerminated
	runs                      int32 // processes started so far (restartCount = runs-1)
	ready, started            bool
	done                      bool // will not run again
	id                        string
	proc                      *container.Process
	logs                      *crilog.Writer
	env                       []string
	user                      container.User
	killReason                string // why the kubelet stopped the current run (liveness, image change)
}

func (c *ctr) restartCount() int32 { return max(c.runs-1, 0) }

func newContainers(pod *corev1.Pod) []*ctr {
	var out []*ctr
	for _, c := range pod.Spec.InitContainers {
		kind := kindInit
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			kind = kindSidecar
		}
		out = append(out, &ctr{spec: c, kind: kind, image: c.Image, waitingReason: "PodInitializing"})
	}
	for _, c := range pod.Spec.Containers {
		out = append(out, &ctr{spec: c, kind: kindApp, image: c.Image, waitingReason: "PodInitializing"})
	}
	if len(out) > 0 {
		for _, c := range out {
			if c.kind != kindApp || len(pod.Spec.InitContainers) == 0 {
				c.waitingReason = "ContainerCreating"
			}
		}
	}
	return out
}

func (p *Pod) container(name string) *ctr {
	for _, c := range p.containers {
		if c.spec.Name == name {
			return c
		}
	}
	return nil
}

// attempt is the outcome of one runOnce.
type attempt struct {
	blocked  bool          // cannot run at all (image not mapped): wait for the pod to stop
	retry    bool          // not started (e.g. a missing ConfigMap key): retry after a back-off
	exitCode int           // the program's exit code (when started)
	ran      time.Duration // how long it ran
}

func (p *Pod) setWaiting(c *ctr, reason, msg string) {
	p.mu.Lock()
	c.waitingReason, c.waitingMsg = reason, msg
	p.touchLocked()
	p.mu.Unlock()
}

// runOnce starts container c once and waits until its program exits.
func (p *Pod) runOnce(c *ctr) attempt {
	p.mu.Lock()
	pod, image := p.obj.DeepCopy(), c.image
	p.mu.Unlock()
	img, err := p.m.cfg.MatchImage(image)
	if err != nil {
		klog.InfoS("Container image not mapped", "pod", p.key, "container", c.spec.Name, "image", image)
		p.setWaiting(c, config.ReasonImageNotMapped, err.Error())
		return attempt{blocked: true}
	}
	env, argv, user, err := p.processSpec(pod, c, img)
	if err != nil {
		klog.InfoS("Container cannot start yet", "pod", p.key, "container", c.spec.Name, "err", err.Error())
		reason := envvars.ReasonConfigError
		var ce *envvars.ConfigError
		if !errors.As(err, &ce) {
			reason = "RunContainerError"
		}
		p.setWaiting(c, reason, err.Error())
		return attempt{retry: true}
	}
	plan, err := p.plan(pod, c, img, env, argv, user)
	if err != nil {
		p.setWaiting(c, "CreateContainerError", err.Error())
		return attempt{retry: true}
	}

	p.mu.Lock()
	if p.terminating {
		p.mu.Unlock()
		return attempt{retry: true}
	}
	index := c.runs
	c.runs++
	logPath := filepath.Join(p.dir, "logs", c.spec.Name, fmt.Sprintf("%d.log", index))
	logs, err := crilog.Create(logPath)
	if err != nil {
		p.mu.Unlock()
		p.setWaiting(c, "CreateContainerError", fmt.Sprintf("container %s: log file: %v", c.spec.Name, err))
		return attempt{retry: true}
	}
	start := time.Now()
	klog.V(1).InfoS("Starting container", "pod", p.key, "container", c.spec.Name, "argv", quoteArgv(argv), "uid", user.UID)
	proc, err := container.Start(container.Spec{
		Netns: p.sandbox.Name, UTS: !pod.Spec.HostNetwork, Script: container.Script(plan), Env: env,
		Log: logs, Tools: p.m.tools.Host, Sh: p.m.tools.Script.Sh, User: user,
	})
	if err != nil {
		logs.Line("stderr", "egh-kubelet: "+err.Error())
		_ = logs.Close()
		c.terminated = &corev1.ContainerStateTerminated{
			ExitCode: 128, Reason: "StartError", Message: err.Error(),
			StartedAt: metav1.NewTime(start), FinishedAt: metav1.Now(),
		}
		p.touchLocked()
		p.mu.Unlock()
		return attempt{exitCode: 128}
	}
	c.proc, c.logs, c.env, c.user = proc, logs, env, user
	c.id = containerID(p.uid, c.spec.Name, index, start)
	c.killReason = ""
	c.waitingReason, c.waitingMsg = "ContainerCreating", ""
	p.touchLocked()
	if p.terminating { // stop() ran between the check above and now: it did not see this process
		_ = proc.Kill()
	}
	p.mu.Unlock()

	setupOK := <-proc.Started()
	runCtx, stopProbes := context.WithCancel(p.ctx)
	defer stopProbes()
	if setupOK {
		p.markRunning(c, proc)
		p.startProbes(runCtx, c, proc)
		if h := c.spec.Lifecycle; h != nil && h.PostStart != nil {
			go p.postStart(runCtx, c, proc, h.PostStart)
		}
	}
	<-proc.Done()
	stopProbes()
	p.markExited(c, proc, setupOK, start, plan.TerminationLog)
	return attempt{exitCode: proc.ExitCode(), ran: time.Since(start)}
}

func containerID(uid any, name string, index int32, t time.Time) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%v/%s/%d/%d", uid, name, index, t.UnixNano()))
	return "egh://" + hex.EncodeToString(sum[:16])
}

func (p *Pod) markRunning(c *ctr, proc *container.Process) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.proc != proc {
		return
	}
	c.runningSince = time.Now()
	c.terminated = nil
	c.waitingReason, c.waitingMsg = "", ""
	c.started = c.spec.StartupProbe == nil
	c.ready = c.started && c.spec.ReadinessProbe == nil && c.kind != kindInit
	p.touchLocked()
	klog.InfoS("Container started", "pod", p.key, "container", c.spec.Name, "restartCount", c.restartCount(), "pid", proc.Pid)
}

func (p *Pod) markExited(c *ctr, proc *container.Process, setupOK bool, start time.Time, termLog string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	code := proc.ExitCode()
	t := &corev1.ContainerStateTerminated{
		ExitCode:    int32(code),
		StartedAt:   metav1.NewTime(start),
		FinishedAt:  metav1.NewTime(proc.FinishedAt()),
		ContainerID: c.id,
	}
	switch {
	case !setupOK:
		t.Reason = "StartError"
		t.Message = strings.Join(c.logs.Recent(5), "\n")
		if code == 0 {
			t.ExitCode = 128
		}
	case code == 0:
		t.Reason = "Completed"
	default:
		t.Reason = "Error"
	}
	if setupOK {
		t.Message = terminationMessage(c, termLog, code)
	}
	if c.killReason != "" {
		c.logs.Line("stderr", "egh-kubelet: container stopped: "+c.killReason)
	}
	_ = c.logs.Close()
	c.terminated = t
	c.runningSince = time.Time{}
	c.ready, c.started = c.kind == kindInit && code == 0, false
	c.proc = nil
	p.touchLocked()
	klog.InfoS("Container exited", "pod", p.key, "container", c.spec.Name, "exitCode", t.ExitCode, "reason", t.Reason,
		"restartCount", c.restartCount(), "killedBecause", c.killReason)
}

// terminationMessage reads the container's termination-log file, or with
// FallbackToLogsOnError and a failure, the last lines of its log.
func terminationMessage(c *ctr, termLog string, code int) string {
	if data, err := os.ReadFile(termLog); err == nil && len(data) > 0 {
		if len(data) > 4096 {
			data = data[:4096]
		}
		return string(data)
	}
	if c.spec.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError && code != 0 {
		return strings.Join(c.logs.Recent(80), "\n")
	}
	return ""
}

// processSpec resolves a container's environment, argv and user.
func (p *Pod) processSpec(pod *corev1.Pod, c *ctr, img *config.Image) ([]string, []string, container.User, error) {
	vars, err := envvars.Build(pod, &c.spec, p.runtimeInfo(), p.m)
	if err != nil {
		return nil, nil, container.User{}, fmt.Errorf("container %s: %w", c.spec.Name, err)
	}
	user, err := p.userFor(pod, c, img)
	if err != nil {
		return nil, nil, container.User{}, err
	}
	env := baseEnv(img, names.Hostname(pod), user.UID)
	env = append(env, vars...)
	mapping := envvars.MappingFor(envvars.Map(vars))
	argv := img.Argv(envvars.ExpandAll(c.spec.Command, mapping), envvars.ExpandAll(c.spec.Args, mapping))
	if len(argv) == 0 {
		return nil, nil, user, fmt.Errorf("container %s: no program to run: the container has no command and the image map entry %q no entrypoint or cmd", c.spec.Name, img.Match)
	}
	return flatten(env), argv, user, nil
}

// baseEnv is what the image and the runtime give every container before the pod's env: the
// image's ENV, a default PATH, HOSTNAME and HOME.
func baseEnv(img *config.Image, hostname string, uid int64) []envvars.Var {
	var out []envvars.Var
	keys := make([]string, 0, len(img.Env))
	for k := range img.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, envvars.Var{Name: k, Value: img.Env[k]})
	}
	if _, ok := img.Env["PATH"]; !ok {
		out = append(out, envvars.Var{Name: "PATH", Value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
	}
	out = append(out, envvars.Var{Name: "HOSTNAME", Value: hostname})
	if _, ok := img.Env["HOME"]; !ok {
		home := "/"
		if uid == 0 {
			home = "/root"
		}
		out = append(out, envvars.Var{Name: "HOME", Value: home})
	}
	return out
}

// flatten turns variables into KEY=VALUE, a later definition replacing an earlier one in place.
func flatten(vars []envvars.Var) []string {
	idx := map[string]int{}
	var out []string
	for _, v := range vars {
		if i, ok := idx[v.Name]; ok {
			out[i] = v.Name + "=" + v.Value
			continue
		}
		idx[v.Name] = len(out)
		out = append(out, v.Name+"="+v.Value)
	}
	return out
}

// userFor picks the container's uid, gid and groups: the container's securityContext, else the
// pod's, else the image map's user, else root; groups are the pod's supplementalGroups and fsGroup.
func (p *Pod) userFor(pod *corev1.Pod, c *ctr, img *config.Image) (container.User, error) {
	uid, gid, err := img.UserIDs()
	if err != nil {
		return container.User{}, err
	}
	if gid < 0 {
		gid = 0
	}
	if psc := pod.Spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil {
			uid = *psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			gid = *psc.RunAsGroup
		}
	}
	if sc := c.spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	u := container.User{UID: uid, GID: gid}
	if psc := pod.Spec.SecurityContext; psc != nil {
		u.Groups = append(u.Groups, psc.SupplementalGroups...)
		if psc.FSGroup != nil {
			u.Groups = append(u.Groups, *psc.FSGroup)
		}
	}
	return u, nil
}

// plan builds the container's mount plan.
func (p *Pod) plan(pod *corev1.Pod, c *ctr, img *config.Image, env, argv []string, user container.User) (container.Plan, error) {
	cdir := filepath.Join(p.dir, "containers", c.spec.Name)
	root := filepath.Join(cdir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return container.Plan{}, fmt.Errorf("container %s: %w", c.spec.Name, err)
	}
	termLog := filepath.Join(cdir, "termination-log")
	if err := os.WriteFile(termLog, nil, 0o666); err != nil {
		return container.Plan{}, fmt.Errorf("container %s: %w", c.spec.Name, err)
	}
	_ = os.Chmod(termLog, 0o666)
	var imageBinds []container.Bind
	for _, dst := range img.BindTargets() {
		src := img.Binds[dst]
		st, err := os.Stat(src)
		if err != nil {
			return container.Plan{}, fmt.Errorf("container %s: image map entry %q binds %s at %s: %w", c.spec.Name, img.Match, src, dst, err)
		}
		imageBinds = append(imageBinds, container.Bind{Src: src, Dst: dst, ReadOnly: true, File: !st.IsDir()})
	}
	vols, err := p.volumeBinds(pod, c, env)
	if err != nil {
		return container.Plan{}, err
	}
	wd := c.spec.WorkingDir
	if wd == "" {
		wd = img.WorkingDir
	}
	hostname := ""
	if !pod.Spec.HostNetwork {
		hostname = names.Hostname(pod)
	}
	p.mu.Lock()
	hosts, resolv := p.hostsPath, p.resolvPath
	p.mu.Unlock()
	if hosts == "" {
		return container.Plan{}, fmt.Errorf("container %s: the pod's network is gone", c.spec.Name)
	}
	return container.Plan{
		Pod: p.key, Container: c.spec.Name, Root: root, Hostname: hostname,
		RootBinds: p.m.rootBinds, EtcFiles: p.m.etcFiles, Hosts: hosts, Resolv: resolv,
		TerminationLog: termLog, ImageBinds: imageBinds, Volumes: vols, WorkingDir: wd, User: user,
		Argv: argv, Tools: p.m.tools.Script,
	}, nil
}

// volumeBinds maps the container's volumeMounts to binds (subPath and subPathExpr included).
func (p *Pod) volumeBinds(pod *corev1.Pod, c *ctr, env []string) ([]container.Bind, error) {
	envMap := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		envMap[k] = v
	}
	var out []container.Bind
	for _, vm := range c.spec.VolumeMounts {
		src, err := p.vols.Path(pod, vm.Name)
		if err != nil {
			return nil, fmt.Errorf("container %s: volumeMount %s: %w", c.spec.Name, vm.MountPath, err)
		}
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = envvars.Expand(vm.SubPathExpr, envvars.MappingFor(envMap))
		}
		if sub != "" {
			if filepath.IsAbs(sub) || strings.HasPrefix(filepath.Clean(sub), "..") {
				return nil, fmt.Errorf("container %s: volumeMount %s: subPath %q must be a relative path inside the volume", c.spec.Name, vm.MountPath, sub)
			}
			src = filepath.Join(src, sub)
			if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
				if err := os.MkdirAll(src, 0o777); err != nil { // as the kubelet, a missing subPath is made a directory
					return nil, fmt.Errorf("container %s: volumeMount %s: %w", c.spec.Name, vm.MountPath, err)
				}
			}
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("container %s: volume %q for %s: %w", c.spec.Name, vm.Name, vm.MountPath, err)
		}
		out = append(out, container.Bind{Src: src, Dst: vm.MountPath, ReadOnly: vm.ReadOnly, File: !st.IsDir()})
	}
	container.SortByDepth(out)
	return out, nil
}

// quoteArgv is argv for a log line.
func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strconv.Quote(a)
	}
	return strings.Join(q, " ")
}
