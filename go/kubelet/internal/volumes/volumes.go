// Package volumes makes the backing directory of each volume of a pod under the pod's directory:
// emptyDir, configMap, secret, downwardAPI, projected (service account tokens from TokenRequest,
// configMap, secret, downwardAPI) and hostPath.
package volumes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/downward"
	corev1 "k8s.io/api/core/v1"
)

// Sources reads ConfigMaps and Secrets (informer listers in the kubelet).
type Sources interface {
	ConfigMap(namespace, name string) (*corev1.ConfigMap, error)
	Secret(namespace, name string) (*corev1.Secret, error)
}

// TokenRequester issues a service account token bound to a pod (TokenRequest).
type TokenRequester interface {
	RequestToken(ctx context.Context, pod *corev1.Pod, serviceAccount, audience string, expirationSeconds int64) (token string, expires time.Time, err error)
}

// WaitError means a volume cannot be made yet (its ConfigMap or Secret does not exist and is not
// optional): the pod keeps waiting with reason ContainerCreating and the kubelet retries.
type WaitError struct{ Msg string }

func (e *WaitError) Error() string { return e.Msg }

// Manager owns one pod's volume directories.
type Manager struct {
	dir     string // <pod dir>/volumes
	src     Sources
	tokens  TokenRequester
	fsGroup int64 // -1: none

	mu     sync.Mutex
	cached map[string]token // "<volume>/<source index>" -> token
}

type token struct {
	value     string
	refreshAt time.Time
}

// New returns the manager of the volumes under dir.
func New(dir string, src Sources, tokens TokenRequester, pod *corev1.Pod) *Manager {
	gid := int64(-1)
	if sc := pod.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		gid = *sc.FSGroup
	}
	return &Manager{dir: dir, src: src, tokens: tokens, fsGroup: gid, cached: map[string]token{}}
}

// Path is the host directory backing volume name (hostPath volumes: the host path itself).
func (m *Manager) Path(pod *corev1.Pod, name string) (string, error) {
	for _, v := range pod.Spec.Volumes {
		if v.Name != name {
			continue
		}
		if v.HostPath != nil {
			return v.HostPath.Path, nil
		}
		return filepath.Join(m.dir, name), nil
	}
	return "", fmt.Errorf("pod %s/%s has no volume %q", pod.Namespace, pod.Name, name)
}

// Sync makes or refreshes every volume: emptyDirs are made once, the others are rewritten when
// their content changed (labels, a ConfigMap, a token near its refresh time). It returns when the
// next token refresh is due (zero when the pod has no tokens).
func (m *Manager) Sync(ctx context.Context, pod *corev1.Pod, rt downward.Runtime) (time.Time, error) {
	var next time.Time
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		refresh, err := m.syncOne(ctx, pod, rt, v)
		if err != nil {
			return time.Time{}, err
		}
		if !refresh.IsZero() && (next.IsZero() || refresh.Before(next)) {
			next = refresh
		}
	}
	return next, nil
}

func (m *Manager) syncOne(ctx context.Context, pod *corev1.Pod, rt downward.Runtime, v *corev1.Volume) (time.Time, error) {
	dir := filepath.Join(m.dir, v.Name)
	where := fmt.Sprintf("volume %q of pod %s/%s", v.Name, pod.Namespace, pod.Name)
	switch {
	case v.EmptyDir != nil:
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", where, err)
		}
		return time.Time{}, os.Chmod(dir, 0o777) // the umask cut MkdirAll's mode
	case v.HostPath != nil:
		return time.Time{}, hostPath(v.HostPath, where)
	case v.ConfigMap != nil, v.Secret != nil, v.DownwardAPI != nil:
		payload, err := m.keyedPayload(pod, rt, v)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", where, err)
		}
		_, err = WriteAtomic(dir, payload, m.fsGroup)
		return time.Time{}, err
	case v.Projected != nil:
		payload, refresh, err := m.projectedPayload(ctx, pod, rt, v)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", where, err)
		}
		_, err = WriteAtomic(dir, payload, m.fsGroup)
		return refresh, err
	}
	return time.Time{}, fmt.Errorf("%s: this volume type is not supported by egh-kubelet "+
		"(emptyDir, configMap, secret, downwardAPI, projected and hostPath are)", where)
}

func (m *Manager) keyedPayload(pod *corev1.Pod, rt downward.Runtime, v *corev1.Volume) (map[string]File, error) {
	switch {
	case v.ConfigMap != nil:
		return configMapPayload(m.src, pod.Namespace, v.ConfigMap.LocalObjectReference.Name, v.ConfigMap.Items,
			v.ConfigMap.Optional, mode(v.ConfigMap.DefaultMode, 0o644))
	case v.Secret != nil:
		return secretPayload(m.src, pod.Namespace, v.Secret.SecretName, v.Secret.Items,
			v.Secret.Optional, mode(v.Secret.DefaultMode, 0o644))
	default:
		return downwardPayload(pod, rt, v.DownwardAPI.Items, mode(v.DownwardAPI.DefaultMode, 0o644))
	}
}

func hostPath(hp *corev1.HostPathVolumeSource, where string) error {
	t := corev1.HostPathUnset
	if hp.Type != nil {
		t = *hp.Type
	}
	switch t {
	case corev1.HostPathDirectoryOrCreate:
		return os.MkdirAll(hp.Path, 0o755)
	case corev1.HostPathFileOrCreate:
		f, err := os.OpenFile(hp.Path, os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		return f.Close()
	case corev1.HostPathUnset:
		return nil
	}
	if _, err := os.Stat(hp.Path); err != nil {
		return fmt.Errorf("%s: hostPath %s: %w", where, hp.Path, err)
	}
	return nil
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m) & 0o777
}
