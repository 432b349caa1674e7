package envvars

import (
	"fmt"
	"sort"

	"github.com/istio-egress-harness/kubelet/internal/downward"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Sources reads the objects env values may refer to (informer listers in the kubelet).
type Sources interface {
	ConfigMap(namespace, name string) (*corev1.ConfigMap, error)
	Secret(namespace, name string) (*corev1.Secret, error)
	Services() ([]*corev1.Service, error)
}

// ConfigError is an env reference that cannot be resolved yet (a missing ConfigMap, Secret or
// key that is not optional): the container waits with reason CreateContainerConfigError.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

// ReasonConfigError is the container's waiting reason for a ConfigError.
const ReasonConfigError = "CreateContainerConfigError"

func configErr(format string, args ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, args...)}
}

// Var is one resolved variable.
type Var struct{ Name, Value string }

// Build resolves container c's environment in pod: envFrom (in order, with prefixes), then env
// (each value's $(VAR) expanded against the variables defined before it and the service
// variables), then the service link variables not defined otherwise. The result is ordered:
// envFrom and env names in first-definition order, then service variables sorted.
func Build(pod *corev1.Pod, c *corev1.Container, rt downward.Runtime, src Sources) ([]Var, error) {
	svcs, err := src.Services()
	if err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	links := pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks
	serviceEnv := ServiceEnv(svcs, pod.Namespace, links)

	values := map[string]string{}
	var order []string
	set := func(name, value string) {
		if _, ok := values[name]; !ok {
			order = append(order, name)
		}
		values[name] = value
	}
	for _, from := range c.EnvFrom {
		data, err := envFromData(pod.Namespace, from, src)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	mapping := MappingFor(values, serviceEnv)
	for i := range c.Env {
		e := &c.Env[i]
		if e.ValueFrom == nil {
			set(e.Name, Expand(e.Value, mapping))
			continue
		}
		v, skip, err := valueFrom(pod, c, rt, e, src)
		if err != nil {
			return nil, err
		}
		if !skip {
			set(e.Name, v)
		}
	}
	var svcNames []string
	for k := range serviceEnv {
		if _, ok := values[k]; !ok {
			svcNames = append(svcNames, k)
		}
	}
	sort.Strings(svcNames)
	out := make([]Var, 0, len(order)+len(svcNames))
	for _, k := range order {
		out = append(out, Var{k, values[k]})
	}
	for _, k := range svcNames {
		out = append(out, Var{k, serviceEnv[k]})
	}
	return out, nil
}

func envFromData(ns string, from corev1.EnvFromSource, src Sources) (map[string]string, error) {
	switch {
	case from.ConfigMapRef != nil:
		ref := from.ConfigMapRef
		cm, err := src.ConfigMap(ns, ref.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && ref.Optional != nil && *ref.Optional {
				return nil, nil
			}
			return nil, configErr("envFrom: configmap %q not found in namespace %s", ref.Name, ns)
		}
		return cm.Data, nil
	case from.SecretRef != nil:
		ref := from.SecretRef
		s, err := src.Secret(ns, ref.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && ref.Optional != nil && *ref.Optional {
				return nil, nil
			}
			return nil, configErr("envFrom: secret %q not found in namespace %s", ref.Name, ns)
		}
		data := make(map[string]string, len(s.Data))
		for k, v := range s.Data {
			data[k] = string(v)
		}
		return data, nil
	}
	return nil, nil
}

// valueFrom resolves one env valueFrom; skip is true for an optional reference that is missing
// (the variable is then not set at all, as the kubelet does).
func valueFrom(pod *corev1.Pod, c *corev1.Container, rt downward.Runtime, e *corev1.EnvVar, src Sources) (string, bool, error) {
	vf := e.ValueFrom
	switch {
	case vf.FieldRef != nil:
		v, err := downward.FieldValue(pod, rt, vf.FieldRef.FieldPath)
		if err != nil {
			return "", false, configErr("env %s: %v", e.Name, err)
		}
		return v, false, nil
	case vf.ResourceFieldRef != nil:
		v, err := downward.ResourceValue(pod, rt, c.Name, vf.ResourceFieldRef)
		if err != nil {
			return "", false, configErr("env %s: %v", e.Name, err)
		}
		return v, false, nil
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm, err := src.ConfigMap(pod.Namespace, ref.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return "", true, nil
			}
			return "", false, configErr("env %s: configmap %q not found in namespace %s", e.Name, ref.Name, pod.Namespace)
		}
		if v, ok := cm.Data[ref.Key]; ok {
			return v, false, nil
		}
		if v, ok := cm.BinaryData[ref.Key]; ok {
			return string(v), false, nil
		}
		if optional {
			return "", true, nil
		}
		return "", false, configErr("env %s: key %q not found in configmap %s/%s", e.Name, ref.Key, pod.Namespace, ref.Name)
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		s, err := src.Secret(pod.Namespace, ref.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return "", true, nil
			}
			return "", false, configErr("env %s: secret %q not found in namespace %s", e.Name, ref.Name, pod.Namespace)
		}
		if v, ok := s.Data[ref.Key]; ok {
			return string(v), false, nil
		}
		if optional {
			return "", true, nil
		}
		return "", false, configErr("env %s: key %q not found in secret %s/%s", e.Name, ref.Key, pod.Namespace, ref.Name)
	}
	return "", false, configErr("env %s: valueFrom names no source this kubelet knows", e.Name)
}

// Map turns a variable list into a map (later entries win).
func Map(vars []Var) map[string]string {
	m := make(map[string]string, len(vars))
	for _, v := range vars {
		m[v.Name] = v.Value
	}
	return m
}
