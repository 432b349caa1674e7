package volumes

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/downward"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

type fakeSources struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
}

func (f fakeSources) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	if c, ok := f.cms[ns+"/"+name]; ok {
		return c, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (f fakeSources) Secret(ns, name string) (*corev1.Secret, error) {
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

type fakeTokens struct {
	calls    int
	audience string
	exp      int64
	sa       string
}

func (f *fakeTokens) RequestToken(_ context.Context, pod *corev1.Pod, sa, aud string, exp int64) (string, time.Time, error) {
	f.calls++
	f.audience, f.exp, f.sa = aud, exp, sa
	return "token-" + string(pod.UID), time.Now().Add(time.Duration(exp) * time.Second), nil
}

func ptr[T any](v T) *T { return &v }

func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		_ = filepath.Walk(p+"/", func(path string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				rel, _ := filepath.Rel(dir, path)
				data, _ := os.ReadFile(path)
				out[rel] = string(data)
			}
			return nil
		})
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			data, _ := os.ReadFile(p)
			out[e.Name()] = string(data)
		}
	}
	return out
}

func TestWriteAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "v")
	changed, err := WriteAtomic(dir, map[string]File{"a": {Data: []byte("1"), Mode: 0o644}, "sub/b": {Data: []byte("2"), Mode: 0o600}}, -1)
	if err != nil || !changed {
		t.Fatal(changed, err)
	}
	if got := files(t, dir); got["a"] != "1" || got["sub/b"] != "2" {
		t.Errorf("files %v", got)
	}
	if target, _ := os.Readlink(filepath.Join(dir, "a")); target != "..data/a" {
		t.Errorf("a -> %q", target)
	}
	if st, _ := os.Stat(filepath.Join(dir, "sub/b")); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	changed, err = WriteAtomic(dir, map[string]File{"a": {Data: []byte("1"), Mode: 0o644}, "sub/b": {Data: []byte("2"), Mode: 0o600}}, -1)
	if err != nil || changed {
		t.Errorf("an unchanged payload was rewritten: %v %v", changed, err)
	}
	if _, err := WriteAtomic(dir, map[string]File{"a": {Data: []byte("new"), Mode: 0o644}}, -1); err != nil {
		t.Fatal(err)
	}
	got := files(t, dir)
	if got["a"] != "new" || len(got) != 1 {
		t.Errorf("after update %v", got)
	}
	var stamped []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") && e.Name() != "..data" {
			stamped = append(stamped, e.Name())
		}
	}
	if len(stamped) != 1 {
		t.Errorf("old payload directories left: %v", stamped)
	}
	if _, err := WriteAtomic(dir, map[string]File{"../escape": {}}, -1); err == nil {
		t.Error("a path leaving the volume was accepted")
	}
}

func pod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gw-1", Namespace: "istio-system", UID: "u1",
			Labels: map[string]string{"app": "gw"}, Annotations: map[string]string{"sidecar.istio.io/inject": "false"}},
		Spec: corev1.PodSpec{ServiceAccountName: "gw-sa", Volumes: []corev1.Volume{
			{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "root-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"}}}},
			{Name: "opt", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "absent", Optional: ptr(true)}}},
			{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}},
			}}}},
			{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: ptr(int64(43200)), Path: "istio-token"}},
			}}}},
			{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultMode: ptr(int32(0o644)), Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: ptr(int64(3607)), Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
					Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
			}}}},
		}},
	}
}

func TestSync(t *testing.T) {
	src := fakeSources{cms: map[string]*corev1.ConfigMap{
		"istio-system/istio-ca-root-cert": {Data: map[string]string{"root-cert.pem": "PEM"}},
		"istio-system/kube-root-ca.crt":   {Data: map[string]string{"ca.crt": "CA"}},
	}}
	tokens := &fakeTokens{}
	dir := filepath.Join(t.TempDir(), "volumes")
	p := pod()
	m := New(dir, src, tokens, p)
	next, err := m.Sync(context.Background(), p, downward.Runtime{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "data")); err != nil || st.Mode().Perm() != 0o777 {
		t.Errorf("emptyDir: %v %v", st, err)
	}
	if got := files(t, filepath.Join(dir, "root-cert")); got["root-cert.pem"] != "PEM" {
		t.Errorf("configMap: %v", got)
	}
	if got := files(t, filepath.Join(dir, "opt")); len(got) != 0 {
		t.Errorf("optional missing secret: %v", got)
	}
	if got := files(t, filepath.Join(dir, "podinfo")); got["labels"] != `app="gw"` || got["annotations"] != `sidecar.istio.io/inject="false"` {
		t.Errorf("downwardAPI: %v", got)
	}
	got := files(t, filepath.Join(dir, "kube-api-access"))
	if got["token"] != "token-u1" || got["ca.crt"] != "CA" || got["namespace"] != "istio-system" {
		t.Errorf("projected: %v", got)
	}
	if got := files(t, filepath.Join(dir, "istio-token")); got["istio-token"] != "token-u1" {
		t.Errorf("istio-token: %v", got)
	}
	if tokens.calls != 2 || tokens.sa != "gw-sa" {
		t.Errorf("token requests: %+v", tokens)
	}
	// The earliest refresh is 80% of the kube-api-access token's 3607 s.
	if d := time.Until(next); d < 2800*time.Second || d > 2900*time.Second {
		t.Errorf("next refresh in %s", d)
	}
	// A second sync reuses the tokens and picks up new labels.
	p.Labels["version"] = "v2"
	if _, err := m.Sync(context.Background(), p, downward.Runtime{}); err != nil {
		t.Fatal(err)
	}
	if tokens.calls != 2 {
		t.Errorf("tokens requested again: %d", tokens.calls)
	}
	if got := files(t, filepath.Join(dir, "podinfo")); got["labels"] != "app=\"gw\"\nversion=\"v2\"" {
		t.Errorf("labels not refreshed: %q", got["labels"])
	}
	if path, _ := m.Path(p, "root-cert"); path != filepath.Join(dir, "root-cert") {
		t.Errorf("Path = %s", path)
	}
}

func TestSyncWaitsForMissingConfigMap(t *testing.T) {
	p := pod()
	p.Spec.Volumes = p.Spec.Volumes[1:2]
	_, err := New(t.TempDir(), fakeSources{}, &fakeTokens{}, p).Sync(context.Background(), p, downward.Runtime{})
	var w *WaitError
	if !errors.As(err, &w) || !strings.Contains(err.Error(), `configmap "istio-ca-root-cert" not found in namespace istio-system`) ||
		!strings.Contains(err.Error(), `volume "root-cert" of pod istio-system/gw-1`) {
		t.Errorf("got %v", err)
	}
}

func TestItemsAndModes(t *testing.T) {
	src := fakeSources{secrets: map[string]*corev1.Secret{"ns/s": {Data: map[string][]byte{"k1": []byte("v1"), "k2": []byte("v2")}}}}
	files, err := secretPayload(src, "ns", "s", []corev1.KeyToPath{{Key: "k2", Path: "dir/two", Mode: ptr(int32(0o400))}}, nil, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || string(files["dir/two"].Data) != "v2" || files["dir/two"].Mode != 0o400 {
		t.Errorf("items: %+v", files)
	}
	if _, err := secretPayload(src, "ns", "s", []corev1.KeyToPath{{Key: "nope", Path: "x"}}, nil, 0o644); err == nil {
		t.Error("a missing item key must fail unless optional")
	}
	all, _ := secretPayload(src, "ns", "s", nil, nil, 0o640)
	keys := make([]string, 0, len(all))
	for k, f := range all {
		keys = append(keys, k)
		if f.Mode != 0o640 {
			t.Errorf("defaultMode not applied to %s", k)
		}
	}
	sort.Strings(keys)
	if strings.Join(keys, ",") != "k1,k2" {
		t.Errorf("keys %v", keys)
	}
}

func TestUnsupportedVolume(t *testing.T) {
	p := pod()
	p.Spec.Volumes = []corev1.Volume{{Name: "pvc", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}}}
	_, err := New(t.TempDir(), fakeSources{}, &fakeTokens{}, p).Sync(context.Background(), p, downward.Runtime{})
	if err == nil || !strings.Contains(err.Error(), `volume "pvc"`) || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("got %v", err)
	}
}
