package pods

import (
	"testing"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/envvars"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func running(name string, started bool) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, Started: &started,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
}

func terminated(name string, code int32) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
}

func waiting(name string, lastCode *int32) corev1.ContainerStatus {
	s := corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "x"}}}
	if lastCode != nil {
		s.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: *lastCode}
	}
	return s
}

func TestPhase(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	spec := func(policy corev1.RestartPolicy) *corev1.PodSpec {
		return &corev1.PodSpec{
			RestartPolicy: policy,
			InitContainers: []corev1.Container{
				{Name: "istio-init"},
				{Name: "istio-proxy", RestartPolicy: &always},
			},
			Containers: []corev1.Container{{Name: "app"}},
		}
	}
	one := int32(1)
	cases := []struct {
		name     string
		spec     *corev1.PodSpec
		init     []corev1.ContainerStatus
		app      []corev1.ContainerStatus
		terminal bool
		want     corev1.PodPhase
	}{
		{"nothing yet", spec("Always"), []corev1.ContainerStatus{waiting("istio-init", nil), waiting("istio-proxy", nil)},
			[]corev1.ContainerStatus{waiting("app", nil)}, false, corev1.PodPending},
		{"init running", spec("Always"), []corev1.ContainerStatus{running("istio-init", true), waiting("istio-proxy", nil)},
			[]corev1.ContainerStatus{waiting("app", nil)}, false, corev1.PodPending},
		{"sidecar not started", spec("Always"), []corev1.ContainerStatus{terminated("istio-init", 0), running("istio-proxy", false)},
			[]corev1.ContainerStatus{waiting("app", nil)}, false, corev1.PodPending},
		{"all running", spec("Always"), []corev1.ContainerStatus{terminated("istio-init", 0), running("istio-proxy", true)},
			[]corev1.ContainerStatus{running("app", true)}, false, corev1.PodRunning},
		{"app restarting", spec("Always"), []corev1.ContainerStatus{terminated("istio-init", 0), running("istio-proxy", true)},
			[]corev1.ContainerStatus{waiting("app", &one)}, false, corev1.PodRunning},
		{"init failed, Never", spec("Never"), []corev1.ContainerStatus{terminated("istio-init", 1), waiting("istio-proxy", nil)},
			[]corev1.ContainerStatus{waiting("app", nil)}, false, corev1.PodFailed},
		{"init failed, restarting", spec("Always"), []corev1.ContainerStatus{waiting("istio-init", &one), waiting("istio-proxy", nil)},
			[]corev1.ContainerStatus{waiting("app", nil)}, false, corev1.PodPending},
		{"app done, OnFailure", spec("OnFailure"), []corev1.ContainerStatus{terminated("istio-init", 0), terminated("istio-proxy", 137)},
			[]corev1.ContainerStatus{terminated("app", 0)}, true, corev1.PodSucceeded},
		// Until the kubelet stops the sidecar the pod runs, as in Kubernetes' getPhase.
		{"app failed, sidecar up", spec("Never"), []corev1.ContainerStatus{terminated("istio-init", 0), running("istio-proxy", true)},
			[]corev1.ContainerStatus{terminated("app", 2)}, false, corev1.PodRunning},
		{"app failed, Never", spec("Never"), []corev1.ContainerStatus{terminated("istio-init", 0), terminated("istio-proxy", 143)},
			[]corev1.ContainerStatus{terminated("app", 2)}, true, corev1.PodFailed},
		{"deleted", spec("Always"), []corev1.ContainerStatus{terminated("istio-init", 0), terminated("istio-proxy", 143)},
			[]corev1.ContainerStatus{terminated("app", 143)}, true, corev1.PodFailed},
		{"deleted before start", spec("Always"), []corev1.ContainerStatus{waiting("istio-init", nil), waiting("istio-proxy", nil)},
			[]corev1.ContainerStatus{waiting("app", nil)}, true, corev1.PodFailed},
	}
	for _, c := range cases {
		if got := Phase(c.spec, c.init, c.app, c.terminal); got != c.want {
			t.Errorf("%s: phase %s, want %s", c.name, got, c.want)
		}
	}
}

func TestMergeConditionsKeepsTransitionTimes(t *testing.T) {
	earlier := metav1.NewTime(time.Now().Add(-time.Hour))
	old := []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: earlier},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: earlier},
		{Type: "example.com/gate", Status: corev1.ConditionTrue, LastTransitionTime: earlier},
	}
	got := mergeConditions(old, []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue},
	})
	by := map[corev1.PodConditionType]corev1.PodCondition{}
	for _, c := range got {
		by[c.Type] = c
	}
	if sched := by[corev1.PodScheduled].LastTransitionTime; !sched.Equal(&earlier) {
		t.Error("unchanged condition lost its transition time")
	}
	if ready := by[corev1.PodReady].LastTransitionTime; ready.Equal(&earlier) {
		t.Error("changed condition kept its old transition time")
	}
	if _, ok := by["example.com/gate"]; !ok {
		t.Error("a condition the kubelet does not own was dropped")
	}
	if got[0].Type != corev1.PodReady || got[len(got)-1].Type != "example.com/gate" {
		t.Errorf("order %v", got)
	}
}

func TestBackoff(t *testing.T) {
	var b backoff
	var got []time.Duration
	for range 6 {
		got = append(got, b.after(time.Second))
	}
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("back-off %v", got)
		}
	}
	if d := b.after(time.Minute); d != time.Second {
		t.Errorf("after a long run the back-off must reset, got %s", d)
	}
}

func TestFlatten(t *testing.T) {
	got := flatten([]envvars.Var{{Name: "PATH", Value: "/a"}, {Name: "X", Value: "1"}, {Name: "PATH", Value: "/b"}})
	if len(got) != 2 || got[0] != "PATH=/b" || got[1] != "X=1" {
		t.Errorf("flatten = %v", got)
	}
}
