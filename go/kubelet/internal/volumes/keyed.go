package volumes

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/downward"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// keyedFiles turns a ConfigMap's or Secret's data into files: every key when items is empty,
// else each item's key at its path (a missing key is an error unless optional).
func keyedFiles(kind, ns, name string, data map[string][]byte, items []corev1.KeyToPath, optional bool, def os.FileMode) (map[string]File, error) {
	out := map[string]File{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = File{Data: v, Mode: def}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return nil, &WaitError{Msg: fmt.Sprintf("%s %s/%s has no key %q", kind, ns, name, it.Key)}
		}
		out[it.Path] = File{Data: v, Mode: mode(it.Mode, def)}
	}
	return out, nil
}

func configMapPayload(src Sources, ns, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) (map[string]File, error) {
	opt := optional != nil && *optional
	cm, err := src.ConfigMap(ns, name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			if opt {
				return map[string]File{}, nil
			}
			return nil, &WaitError{Msg: fmt.Sprintf("configmap %q not found in namespace %s", name, ns)}
		}
		return nil, err
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyedFiles("configmap", ns, name, data, items, opt, def)
}

func secretPayload(src Sources, ns, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) (map[string]File, error) {
	opt := optional != nil && *optional
	s, err := src.Secret(ns, name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			if opt {
				return map[string]File{}, nil
			}
			return nil, &WaitError{Msg: fmt.Sprintf("secret %q not found in namespace %s", name, ns)}
		}
		return nil, err
	}
	return keyedFiles("secret", ns, name, s.Data, items, opt, def)
}

// downwardPayload writes each item's fieldRef (labels and annotations as sorted key="value"
// lines) or resourceFieldRef value.
func downwardPayload(pod *corev1.Pod, rt downward.Runtime, items []corev1.DownwardAPIVolumeFile, def os.FileMode) (map[string]File, error) {
	out := map[string]File{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = downward.FieldValue(pod, rt, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v, err = downward.ResourceValue(pod, rt, it.ResourceFieldRef.ContainerName, it.ResourceFieldRef)
		default:
			err = fmt.Errorf("item %q has neither fieldRef nor resourceFieldRef", it.Path)
		}
		if err != nil {
			return nil, err
		}
		out[it.Path] = File{Data: []byte(v), Mode: mode(it.Mode, def)}
	}
	return out, nil
}

// projectedPayload merges the sources of a projected volume; service account tokens come from
// TokenRequest (audience, expirationSeconds, bound to the pod) and are reused until their refresh
// time (80% of their lifetime, at most 24 h), which is returned.
func (m *Manager) projectedPayload(ctx context.Context, pod *corev1.Pod, rt downward.Runtime, v *corev1.Volume) (map[string]File, time.Time, error) {
	def := mode(v.Projected.DefaultMode, 0o644)
	out := map[string]File{}
	var refresh time.Time
	merge := func(files map[string]File) {
		for k, f := range files {
			out[k] = f
		}
	}
	for i, s := range v.Projected.Sources {
		switch {
		case s.ConfigMap != nil:
			files, err := configMapPayload(m.src, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, def)
			if err != nil {
				return nil, time.Time{}, err
			}
			merge(files)
		case s.Secret != nil:
			files, err := secretPayload(m.src, pod.Namespace, s.Secret.Name, s.Secret.Items, s.Secret.Optional, def)
			if err != nil {
				return nil, time.Time{}, err
			}
			merge(files)
		case s.DownwardAPI != nil:
			files, err := downwardPayload(pod, rt, s.DownwardAPI.Items, def)
			if err != nil {
				return nil, time.Time{}, err
			}
			merge(files)
		case s.ServiceAccountToken != nil:
			tok, err := m.token(ctx, pod, fmt.Sprintf("%s/%d", v.Name, i), s.ServiceAccountToken)
			if err != nil {
				return nil, time.Time{}, err
			}
			out[s.ServiceAccountToken.Path] = File{Data: []byte(tok.value), Mode: def}
			if refresh.IsZero() || tok.refreshAt.Before(refresh) {
				refresh = tok.refreshAt
			}
		default:
			return nil, time.Time{}, fmt.Errorf("projected source %d is not supported (configMap, secret, downwardAPI, serviceAccountToken are)", i)
		}
	}
	return out, refresh, nil
}

func (m *Manager) token(ctx context.Context, pod *corev1.Pod, key string, p *corev1.ServiceAccountTokenProjection) (token, error) {
	m.mu.Lock()
	cached, ok := m.cached[key]
	m.mu.Unlock()
	if ok && time.Now().Before(cached.refreshAt) {
		return cached, nil
	}
	exp := int64(3600)
	if p.ExpirationSeconds != nil {
		exp = *p.ExpirationSeconds
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	value, expires, err := m.tokens.RequestToken(ctx, pod, sa, p.Audience, exp)
	if err != nil {
		return token{}, fmt.Errorf("token for service account %s/%s (audience %q): %w", pod.Namespace, sa, p.Audience, err)
	}
	life := time.Until(expires)
	wait := life * 8 / 10
	if wait > 24*time.Hour {
		wait = 24 * time.Hour
	}
	t := token{value: value, refreshAt: time.Now().Add(wait)}
	m.mu.Lock()
	m.cached[key] = t
	m.mu.Unlock()
	return t, nil
}
