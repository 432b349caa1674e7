package pods

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// containerStatus renders c's status (pod lock held).
func (p *Pod) containerStatus(c *ctr) corev1.ContainerStatus {
	started := c.started
	st := corev1.ContainerStatus{
		Name: c.spec.Name, Image: c.image, ImageID: c.image, ContainerID: c.id,
		RestartCount: c.restartCount(), Ready: c.ready, Started: &started,
	}
	switch {
	case !c.runningSince.IsZero():
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.runningSince)}
	case c.terminated != nil:
		t := *c.terminated
		st.State.Terminated = &t
	default:
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitingReason, Message: c.waitingMsg}
	}
	if c.lastTerm != nil {
		t := *c.lastTerm
		st.LastTerminationState.Terminated = &t
	}
	return st
}

// statusLocked renders the pod status (pod lock held). It starts from the API object's status, so
// fields the kubelet does not own (qosClass, conditions others set) are kept.
func (p *Pod) statusLocked() corev1.PodStatus {
	s := *p.obj.Status.DeepCopy()
	s.InitContainerStatuses, s.ContainerStatuses = nil, nil
	for _, c := range p.containers {
		if c.kind == kindApp {
			s.ContainerStatuses = append(s.ContainerStatuses, p.containerStatus(c))
		} else {
			s.InitContainerStatuses = append(s.InitContainerStatuses, p.containerStatus(c))
		}
	}
	s.Phase = Phase(&p.obj.Spec, s.InitContainerStatuses, s.ContainerStatuses, p.terminal)
	s.Reason, s.Message = "", ""
	if p.ip.IsValid() {
		s.PodIP = p.ip.String()
		s.PodIPs = []corev1.PodIP{{IP: s.PodIP}}
	}
	host := p.node.Cfg.Addr.String()
	s.HostIP = host
	s.HostIPs = []corev1.HostIP{{IP: host}}
	if !p.startTime.IsZero() {
		t := p.startTime
		s.StartTime = &t
	}
	s.ObservedGeneration = p.obj.Generation
	s.Conditions = mergeConditions(s.Conditions, p.conditions(s))
	return s
}

// conditions computes the conditions the kubelet owns.
func (p *Pod) conditions(s corev1.PodStatus) []corev1.PodCondition {
	cond := func(t corev1.PodConditionType, ok bool, reason, msg string) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionTrue}
		if !ok {
			c.Status, c.Reason, c.Message = corev1.ConditionFalse, reason, msg
		}
		return c
	}
	var notInit []string
	for _, c := range p.containers {
		if c.kind == kindInit && !c.done {
			notInit = append(notInit, c.spec.Name)
		}
		if c.kind == kindSidecar && !c.started && !p.initialized {
			notInit = append(notInit, c.spec.Name)
		}
	}
	initialized := p.initialized || len(notInit) == 0
	if s.Phase == corev1.PodSucceeded || (s.Phase == corev1.PodFailed && p.initialized) {
		initialized = true
	}
	var unready []string
	for _, c := range p.containers {
		if c.kind != kindInit && !c.ready {
			unready = append(unready, c.spec.Name)
		}
	}
	containersReady := len(unready) == 0 && !p.terminal
	if p.terminal {
		unready = nil
		for _, c := range p.containers {
			if c.kind != kindInit {
				unready = append(unready, c.spec.Name)
			}
		}
	}
	gatesOK, gateMsg := readinessGates(p.obj)
	readyMsg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
	ready := cond(corev1.PodReady, containersReady && gatesOK, "ContainersNotReady", readyMsg)
	if containersReady && !gatesOK {
		ready.Reason, ready.Message = "ReadinessGatesNotReady", gateMsg
	}
	if p.terminal && s.Phase != corev1.PodRunning {
		ready.Reason = "PodCompleted"
	}
	return []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, !p.terminal, "", ""),
		cond(corev1.PodInitialized, initialized, "ContainersNotInitialized",
			fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(notInit, " "))),
		ready,
		cond(corev1.ContainersReady, containersReady, "ContainersNotReady", readyMsg),
		cond(corev1.PodScheduled, true, "", ""),
	}
}

// readinessGates checks the pod's readiness gates against the conditions others set on it.
func readinessGates(pod *corev1.Pod) (bool, string) {
	var missing []string
	for _, g := range pod.Spec.ReadinessGates {
		ok := false
		for _, c := range pod.Status.Conditions {
			if c.Type == g.ConditionType && c.Status == corev1.ConditionTrue {
				ok = true
			}
		}
		if !ok {
			missing = append(missing, string(g.ConditionType))
		}
	}
	if len(missing) == 0 {
		return true, ""
	}
	return false, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist or is not True", strings.Join(missing, ", "))
}

// mergeConditions replaces the kubelet's conditions in old with computed ones, keeping each
// condition's transition time when its status did not change and every condition others own.
func mergeConditions(old, computed []corev1.PodCondition) []corev1.PodCondition {
	now := metav1.Now()
	byType := map[corev1.PodConditionType]corev1.PodCondition{}
	for _, c := range old {
		byType[c.Type] = c
	}
	for i := range computed {
		c := &computed[i]
		if prev, ok := byType[c.Type]; ok && prev.Status == c.Status && !prev.LastTransitionTime.IsZero() {
			c.LastTransitionTime = prev.LastTransitionTime
		} else {
			c.LastTransitionTime = now
		}
		byType[c.Type] = *c
	}
	out := make([]corev1.PodCondition, 0, len(byType))
	for _, c := range byType {
		out = append(out, c)
	}
	order := map[corev1.PodConditionType]int{
		corev1.PodReadyToStartContainers: 0, corev1.PodInitialized: 1, corev1.PodReady: 2,
		corev1.ContainersReady: 3, corev1.PodScheduled: 4,
	}
	sort.SliceStable(out, func(i, j int) bool {
		oi, iok := order[out[i].Type]
		oj, jok := order[out[j].Type]
		if iok != jok {
			return iok
		}
		if iok {
			return oi < oj
		}
		return out[i].Type < out[j].Type
	})
	return out
}

// Phase computes the pod phase from container statuses as the kubelet's getPhase does
// (pkg/kubelet/kubelet_pods.go); terminal says the pod will run nothing more.
func Phase(spec *corev1.PodSpec, initStatuses, statuses []corev1.ContainerStatus, terminal bool) corev1.PodPhase {
	find := func(list []corev1.ContainerStatus, name string) (corev1.ContainerStatus, bool) {
		for _, s := range list {
			if s.Name == name {
				return s, true
			}
		}
		return corev1.ContainerStatus{}, false
	}
	pendingRegularInit, pendingRestartableInit, failedInit := 0, 0, 0
	unknown, running, waiting, stopped, succeeded := 0, 0, 0, 0, 0
	for _, c := range spec.InitContainers {
		st, ok := find(initStatuses, c.Name)
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		if sidecar {
			switch {
			case !ok:
				unknown++
			case st.State.Running != nil:
				if st.Started == nil || !*st.Started {
					pendingRestartableInit++
				}
				running++
			case st.State.Terminated != nil:
			case st.State.Waiting != nil:
				if st.LastTerminationState.Terminated == nil {
					pendingRestartableInit++
				}
			default:
				pendingRestartableInit++
			}
			continue
		}
		switch {
		case !ok:
			pendingRegularInit++
		case st.State.Running != nil:
			pendingRegularInit++
		case st.State.Terminated != nil:
			if st.State.Terminated.ExitCode != 0 {
				failedInit++
			}
		case st.State.Waiting != nil:
			if st.LastTerminationState.Terminated != nil {
				if st.LastTerminationState.Terminated.ExitCode != 0 {
					failedInit++
				}
			} else {
				pendingRegularInit++
			}
		default:
			pendingRegularInit++
		}
	}
	for _, c := range spec.Containers {
		st, ok := find(statuses, c.Name)
		switch {
		case !ok:
			unknown++
		case st.State.Running != nil:
			running++
		case st.State.Terminated != nil:
			stopped++
			if st.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case st.State.Waiting != nil:
			if st.LastTerminationState.Terminated != nil {
				stopped++
			} else {
				waiting++
			}
		default:
			unknown++
		}
	}
	if failedInit > 0 && spec.RestartPolicy == corev1.RestartPolicyNever {
		return corev1.PodFailed
	}
	switch {
	case pendingRegularInit > 0 || (pendingRestartableInit > 0 && !terminal):
		if terminal {
			return corev1.PodFailed
		}
		return corev1.PodPending
	case waiting > 0:
		if terminal {
			return corev1.PodFailed
		}
		return corev1.PodPending
	case running > 0 && unknown == 0:
		return corev1.PodRunning
	case running == 0 && stopped > 0 && unknown == 0:
		if terminal {
			if stopped == succeeded {
				return corev1.PodSucceeded
			}
			return corev1.PodFailed
		}
		if spec.RestartPolicy == corev1.RestartPolicyAlways {
			return corev1.PodRunning
		}
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		if spec.RestartPolicy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	if terminal {
		return corev1.PodFailed
	}
	return corev1.PodPending
}
