// Package downward resolves the downward API (fieldRef and resourceFieldRef) for env values and
// downwardAPI volume files, formatted as the kubelet formats them.
package downward

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Runtime holds what the pod object does not: the addresses the kubelet gave the pod.
type Runtime struct {
	PodIPs  []string
	HostIPs []string
	// Allocatable is the node's allocatable, the value of limits.* when a container sets none.
	Allocatable corev1.ResourceList
}

// FormatMap renders labels or annotations as the kubelet does: sorted `key="value"` lines (Go %q
// quoting), without a trailing newline.
func FormatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	return b.String()
}

// subscript splits "metadata.labels['app']" into ("metadata.labels", "app").
func subscript(path string) (string, string, bool) {
	open := strings.Index(path, "[")
	if open < 0 || !strings.HasSuffix(path, "]") {
		return path, "", false
	}
	key := path[open+1 : len(path)-1]
	if len(key) < 2 || (key[0] != '\'' && key[0] != '"') || key[len(key)-1] != key[0] {
		return path, "", false
	}
	return path[:open], key[1 : len(key)-1], true
}

// FieldValue is the value of a fieldRef path for pod.
func FieldValue(pod *corev1.Pod, rt Runtime, path string) (string, error) {
	if base, key, ok := subscript(path); ok {
		switch base {
		case "metadata.labels":
			return pod.Labels[key], nil
		case "metadata.annotations":
			return pod.Annotations[key], nil
		}
		return "", fmt.Errorf("fieldRef %q: only metadata.labels and metadata.annotations take a key", path)
	}
	first := func(s []string) string {
		if len(s) == 0 {
			return ""
		}
		return s[0]
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return FormatMap(pod.Labels), nil
	case "metadata.annotations":
		return FormatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return first(rt.PodIPs), nil
	case "status.podIPs":
		return strings.Join(rt.PodIPs, ","), nil
	case "status.hostIP":
		return first(rt.HostIPs), nil
	case "status.hostIPs":
		return strings.Join(rt.HostIPs, ","), nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported", path)
}

// ResourceValue is the value of a resourceFieldRef (limits.cpu, requests.memory, ...) of the
// named container, divided by divisor and rounded up as the kubelet does. A limit the container
// does not set is the node's allocatable.
func ResourceValue(pod *corev1.Pod, rt Runtime, containerName string, ref *corev1.ResourceFieldSelector) (string, error) {
	if ref.ContainerName != "" {
		containerName = ref.ContainerName
	}
	var c *corev1.Container
	for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range list {
			if list[i].Name == containerName {
				c = &list[i]
			}
		}
	}
	if c == nil {
		return "", fmt.Errorf("resourceFieldRef %q: no container %q in the pod", ref.Resource, containerName)
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("resourceFieldRef %q is not supported (limits.* or requests.*)", ref.Resource)
	}
	rn := corev1.ResourceName(name)
	var q resource.Quantity
	if kind == "limits" {
		if v, found := c.Resources.Limits[rn]; found {
			q = v
		} else if v, found := rt.Allocatable[rn]; found {
			q = v
		}
	} else if v, found := c.Resources.Requests[rn]; found {
		q = v
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if rn == corev1.ResourceCPU {
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(divisor.MilliValue()))), 10), nil
	}
	if divisor.Value() == 0 {
		return "", fmt.Errorf("resourceFieldRef %q: divisor %s is zero", ref.Resource, divisor.String())
	}
	return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
}
