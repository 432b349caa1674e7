package names

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestServicesFromSkipsHeadlessAndExternalName(t *testing.T) {
	mk := func(ns, name, ip string, typ corev1.ServiceType) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Type: typ}}
	}
	got := ServicesFrom([]*corev1.Service{
		mk("b", "z", "10.96.0.3", ""), mk("a", "y", "10.96.0.2", ""), mk("a", "h", "None", ""),
		mk("a", "e", "", corev1.ServiceTypeExternalName),
	})
	if len(got) != 2 || got[0].Name != "y" || got[1].Name != "z" {
		t.Errorf("ServicesFrom = %+v", got)
	}
}

func TestHosts(t *testing.T) {
	out := string(Hosts(HostsInput{
		PodIP: "10.244.1.5", Hostname: "gw-1", Namespace: "istio-system", ClusterDomain: "cluster.local",
		HostAliases: []corev1.HostAlias{{IP: "10.9.9.9", Hostnames: []string{"alias.example", "a2"}}},
		Services: []Service{
			{Namespace: "default", Name: "kubernetes", ClusterIP: "10.96.0.1"},
			{Namespace: "istio-system", Name: "istiod", ClusterIP: "10.96.0.10"},
		},
		Extra: "10.250.0.2 recorder.external.test api.example.com\n",
	}))
	for _, want := range []string{
		"127.0.0.1\tlocalhost\n",
		"10.244.1.5\tgw-1\n",
		"10.9.9.9\talias.example\ta2\n",
		"10.96.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default\n",
		"10.96.0.10\tistiod.istio-system.svc.cluster.local istiod.istio-system.svc istiod.istio-system istiod\n",
		"10.250.0.2 recorder.external.test api.example.com\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("hosts file lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "kubernetes.default kubernetes\n") {
		t.Error("the short name of a Service of another namespace must not appear")
	}
	sub := string(Hosts(HostsInput{PodIP: "10.0.0.2", Hostname: "h", Subdomain: "s", Namespace: "n", ClusterDomain: "cluster.local"}))
	if !strings.Contains(sub, "10.0.0.2\th.s.n.svc.cluster.local\th\n") {
		t.Errorf("subdomain line missing:\n%s", sub)
	}
}

func TestResolv(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo"}}
	got := string(Resolv(pod, "cluster.local", []string{"10.244.0.1"}))
	want := "search demo.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.244.0.1\noptions ndots:5\n"
	if got != want {
		t.Errorf("Resolv = %q, want %q", got, want)
	}
	pod.Spec.DNSPolicy = corev1.DNSNone
	v := "2"
	pod.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1"}, Options: []corev1.PodDNSConfigOption{{Name: "attempts", Value: &v}}}
	if got := string(Resolv(pod, "cluster.local", nil)); got != "nameserver 1.1.1.1\noptions attempts:2\n" {
		t.Errorf("dnsPolicy None: %q", got)
	}
}

func TestWriteInPlaceKeepsInode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	if err := WriteInPlace(path, []byte("a long first version\n")); err != nil {
		t.Fatal(err)
	}
	ino := func() uint64 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	before := ino()
	if err := WriteInPlace(path, []byte("short\n")); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if string(data) != "short\n" || ino() != before {
		t.Errorf("content %q, inode %d -> %d", data, before, ino())
	}
}

func TestHostname(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("a", 62) + "-bc"}}
	if h := Hostname(pod); h != strings.Repeat("a", 62) {
		t.Errorf("Hostname = %q", h)
	}
	pod.Spec.Hostname = "explicit"
	if Hostname(pod) != "explicit" {
		t.Error("spec.hostname must win")
	}
}
