package pods

import (
	"context"
	"fmt"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func labelsEverything() labels.Selector { return labels.Everything() }

// ConfigMap reads a ConfigMap from the informer cache.
func (m *Manager) ConfigMap(namespace, name string) (*corev1.ConfigMap, error) {
	return m.configMaps.ConfigMaps(namespace).Get(name)
}

// Secret reads a Secret from the informer cache.
func (m *Manager) Secret(namespace, name string) (*corev1.Secret, error) {
	return m.secrets.Secrets(namespace).Get(name)
}

// Services lists every Service from the informer cache.
func (m *Manager) Services() ([]*corev1.Service, error) {
	return m.services.List(labelsEverything())
}

// tokenTimeout bounds one TokenRequest.
const tokenTimeout = 30 * time.Second

// RequestToken asks the API server for a service account token bound to pod (TokenRequest), as
// the kubelet does for projected serviceAccountToken volumes.
func (m *Manager) RequestToken(ctx context.Context, pod *corev1.Pod, serviceAccount, audience string, expirationSeconds int64) (string, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, tokenTimeout)
	defer cancel()
	req := &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: &expirationSeconds,
			BoundObjectRef: &authv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
			},
		},
	}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	resp, err := m.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("TokenRequest for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return resp.Status.Token, resp.Status.ExpirationTimestamp.Time, nil
}
