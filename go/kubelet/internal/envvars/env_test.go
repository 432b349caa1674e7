package envvars

import (
	"errors"
	"testing"

	"github.com/istio-egress-harness/kubelet/internal/downward"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "a", "B": "b", "EMPTY": ""}
	m := MappingFor(vars)
	cases := map[string]string{
		"$(A)":              "a",
		"x$(A)y$(B)z":       "xaybz",
		"$(UNKNOWN)":        "$(UNKNOWN)",
		"$$(A)":             "$(A)",
		"$$$(A)":            "$a",
		"$(A":               "$(A",
		"$":                 "$",
		"$x":                "$x",
		"a$":                "a$",
		"$(EMPTY)|":         "|",
		"--domain $(A).svc": "--domain a.svc",
		"":                  "",
	}
	for in, want := range cases {
		if got := Expand(in, m); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

type fakeSources struct {
	cms      map[string]*corev1.ConfigMap
	secrets  map[string]*corev1.Secret
	services []*corev1.Service
}

func notFound(kind, name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: kind}, name)
}

func (f fakeSources) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	if c, ok := f.cms[ns+"/"+name]; ok {
		return c, nil
	}
	return nil, notFound("configmaps", name)
}

func (f fakeSources) Secret(ns, name string) (*corev1.Secret, error) {
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, notFound("secrets", name)
}

func (f fakeSources) Services() ([]*corev1.Service, error) { return f.services, nil }

func svc(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
}

func ptr[T any](v T) *T { return &v }

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gw-1", Namespace: "istio-system", UID: "u-1",
			Labels: map[string]string{"app": "gw", "istio": "egressgateway"}},
		Spec: corev1.PodSpec{NodeName: "egh-worker", ServiceAccountName: "gw-sa"},
	}
}

func TestBuild(t *testing.T) {
	src := fakeSources{
		cms:     map[string]*corev1.ConfigMap{"istio-system/cfg": {Data: map[string]string{"K1": "v1", "K2": "v2"}}},
		secrets: map[string]*corev1.Secret{"istio-system/sec": {Data: map[string][]byte{"token": []byte("s3cr3t")}}},
		services: []*corev1.Service{
			svc("default", "kubernetes", "10.96.0.1", corev1.ServicePort{Name: "https", Port: 443, Protocol: "TCP"}),
			svc("istio-system", "istiod", "10.96.0.10", corev1.ServicePort{Name: "grpc-xds", Port: 15012, Protocol: "TCP"}),
			svc("other", "elsewhere", "10.96.0.11", corev1.ServicePort{Port: 80, Protocol: "TCP"}),
			svc("istio-system", "headless", "None"),
		},
	}
	pod := testPod()
	c := &corev1.Container{
		Name:      "istio-proxy",
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}},
		EnvFrom:   []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}, Prefix: "CM_"}},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "INSTANCE_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "SERVICE_ACCOUNT", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
			{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
			{Name: "CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
			{Name: "CPU_REQ_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu", Divisor: resource.MustParse("1m")}}},
			{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "token"}}},
			{Name: "MISSING_OPT", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k", Optional: ptr(true)}}},
			{Name: "DOMAIN", Value: "$(POD_NAMESPACE).svc.cluster.local"},
			{Name: "XDS", Value: "$(ISTIOD_SERVICE_HOST):$(ISTIOD_SERVICE_PORT_GRPC_XDS)"},
			{Name: "LATER", Value: "$(DEFINED_AFTER)"},
			{Name: "DEFINED_AFTER", Value: "x"},
			{Name: "CM_K1", Value: "overridden"},
		},
	}
	pod.Spec.Containers = []corev1.Container{*c}
	rt := downward.Runtime{PodIPs: []string{"10.244.1.7"}, HostIPs: []string{"10.244.1.1"},
		Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64")}}
	vars, err := Build(pod, c, rt, src)
	if err != nil {
		t.Fatal(err)
	}
	got := Map(vars)
	want := map[string]string{
		"CM_K1": "overridden", "CM_K2": "v2", "POD_NAME": "gw-1", "POD_NAMESPACE": "istio-system",
		"INSTANCE_IP": "10.244.1.7", "HOST_IP": "10.244.1.1", "SERVICE_ACCOUNT": "gw-sa", "APP": "gw",
		"CPU_LIMIT": "64", "CPU_REQ_M": "100", "TOKEN": "s3cr3t", "DOMAIN": "istio-system.svc.cluster.local",
		"XDS": "10.96.0.10:15012", "LATER": "$(DEFINED_AFTER)", "DEFINED_AFTER": "x",
		"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "443", "KUBERNETES_PORT": "tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1", "ISTIOD_SERVICE_HOST": "10.96.0.10",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, absent := range []string{"MISSING_OPT", "ELSEWHERE_SERVICE_HOST", "HEADLESS_SERVICE_HOST"} {
		if _, ok := got[absent]; ok {
			t.Errorf("%s should not be set", absent)
		}
	}
	// envFrom first, then env in order, then the service variables.
	if vars[0].Name != "CM_K1" || vars[2].Name != "POD_NAME" {
		t.Errorf("order: %v", vars[:3])
	}

	pod.Spec.EnableServiceLinks = ptr(false)
	vars, _ = Build(pod, c, rt, src)
	got = Map(vars)
	if _, ok := got["ISTIOD_SERVICE_HOST"]; ok {
		t.Error("enableServiceLinks=false still gave ISTIOD_SERVICE_HOST")
	}
	if got["KUBERNETES_SERVICE_HOST"] != "10.96.0.1" {
		t.Error("the kubernetes Service variables must stay without service links")
	}
}

func TestBuildMissingReferenceIsConfigError(t *testing.T) {
	c := &corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
		ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k"}}}}}
	_, err := Build(testPod(), c, downward.Runtime{}, fakeSources{})
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("want ConfigError, got %v", err)
	}
	if want := `env X: configmap "absent" not found in namespace istio-system`; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

func TestServiceEnvDockerLinks(t *testing.T) {
	env := ServiceEnv([]*corev1.Service{svc("ns", "my-svc", "10.0.0.5",
		corev1.ServicePort{Name: "http-web", Port: 80, Protocol: "TCP"}, corev1.ServicePort{Port: 53, Protocol: "UDP"})}, "ns", true)
	want := map[string]string{
		"MY_SVC_SERVICE_HOST": "10.0.0.5", "MY_SVC_SERVICE_PORT": "80", "MY_SVC_SERVICE_PORT_HTTP_WEB": "80",
		"MY_SVC_PORT": "tcp://10.0.0.5:80", "MY_SVC_PORT_53_UDP": "udp://10.0.0.5:53", "MY_SVC_PORT_53_UDP_PROTO": "udp",
		"MY_SVC_PORT_80_TCP_PORT": "80", "MY_SVC_PORT_80_TCP_ADDR": "10.0.0.5",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
}
