package downward

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestFormatMap(t *testing.T) {
	got := FormatMap(map[string]string{"b": "2", "a": `say "hi"`, "istio.io/rev": "default"})
	want := "a=\"say \\\"hi\\\"\"\nb=\"2\"\nistio.io/rev=\"default\""
	if got != want {
		t.Errorf("FormatMap = %q, want %q", got, want)
	}
	if FormatMap(nil) != "" {
		t.Error("empty map must give an empty string")
	}
}

func TestFieldValue(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n", UID: "u",
		Labels: map[string]string{"app": "x"}, Annotations: map[string]string{"a.b/c": "d"}}}
	rt := Runtime{PodIPs: []string{"10.1.1.2"}, HostIPs: []string{"10.1.1.1"}}
	cases := map[string]string{
		"metadata.name": "p", "metadata.namespace": "n", "metadata.uid": "u",
		"metadata.labels": `app="x"`, "metadata.annotations['a.b/c']": "d", `metadata.labels["app"]`: "x",
		"metadata.labels['missing']": "", "status.podIP": "10.1.1.2", "status.podIPs": "10.1.1.2",
		"status.hostIP": "10.1.1.1",
	}
	for path, want := range cases {
		got, err := FieldValue(pod, rt, path)
		if err != nil || got != want {
			t.Errorf("FieldValue(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	if _, err := FieldValue(pod, rt, "spec.bogus"); err == nil {
		t.Error("an unknown field must be an error")
	}
}

func TestResourceValue(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
	}}}}}
	rt := Runtime{Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8")}}
	cases := []struct {
		res, divisor, want string
	}{
		{"limits.memory", "", "1073741824"},
		{"limits.memory", "1Mi", "1024"},
		{"limits.cpu", "", "8"},
		{"requests.cpu", "", "1"}, // rounded up
		{"requests.cpu", "1m", "250"},
		{"requests.memory", "", "0"},
	}
	for _, c := range cases {
		ref := &corev1.ResourceFieldSelector{Resource: c.res}
		if c.divisor != "" {
			ref.Divisor = resource.MustParse(c.divisor)
		}
		got, err := ResourceValue(pod, rt, "c", ref)
		if err != nil || got != c.want {
			t.Errorf("%s/%s = %q, %v; want %q", c.res, c.divisor, got, err, c.want)
		}
	}
}
