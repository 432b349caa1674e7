package config

import (
	"errors"
	"strings"
	"testing"
)

const sample = `{
  "kubeconfig": "/run/egh/r1/admin.kubeconfig",
  "runDir": "/run/egh/r1/kubelet",
  "netnsPrefix": "egh-r1-",
  "nodes": [
    {"name": "egh-control-plane", "ip": "10.244.0.1", "podCIDR": "10.244.0.0/24",
     "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
    {"name": "egh-worker", "ip": "10.244.1.1", "podCIDR": "10.244.1.0/24",
     "labels": {"egress-harness.io/egress-gateway": "true"}}
  ],
  "images": [
    {"match": "docker.io/istio/proxyv2:1.31-dev", "entrypoint": ["/usr/local/bin/pilot-agent"],
     "binds": {"/usr/local/bin": "/cache/proxyv2/usr/local/bin"}},
    {"match": "docker.io/istio/*", "entrypoint": ["/bin/false"]},
    {"match": "istio-egress-harness/relay:dev", "entrypoint": ["python", "/app/relay.py"], "cmd": ["--port", "8080"],
     "binds": {"/app": "/work/main/apps/relay"}, "user": "1000:1000"}
  ],
  "rootBinds": ["/usr", "/lib", "/bin"]
}`

func TestParseAppliesDefaults(t *testing.T) {
	cfg, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.KubeletPort != 10250 || cfg.ClusterDomain != "cluster.local" || cfg.KubeletVersion != DefaultKubeletVersion {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	n := cfg.NodeByName("egh-worker")
	if n == nil || n.Addr.String() != "10.244.1.1" || n.Prefix.String() != "10.244.1.0/24" {
		t.Fatalf("node not parsed: %+v", n)
	}
	if cfg.Nodes[0].Taints[0].Effect != "NoSchedule" {
		t.Errorf("taint not parsed: %+v", cfg.Nodes[0].Taints)
	}
}

func TestParseRejectsUnknownFieldsAndBadValues(t *testing.T) {
	if _, err := Parse([]byte(strings.Replace(sample, `"rootBinds"`, `"rootBind"`, 1))); err == nil || !strings.Contains(err.Error(), "rootBind") {
		t.Errorf("unknown field not named: %v", err)
	}
	bad := strings.Replace(sample, `"10.244.1.0/24"`, `"10.244.1.0/31"`, 1)
	bad = strings.Replace(bad, `"runDir": "/run/egh/r1/kubelet"`, `"runDir": "relative"`, 1)
	_, err := Parse([]byte(bad))
	if err == nil || !strings.Contains(err.Error(), "podCIDR") || !strings.Contains(err.Error(), "runDir") {
		t.Errorf("want both problems named, got %v", err)
	}
}

func TestMatchImage(t *testing.T) {
	cfg, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Path = "/run/egh/r1/kubelet.json"
	img, err := cfg.MatchImage("docker.io/istio/proxyv2:1.31-dev")
	if err != nil || img.Entrypoint[0] != "/usr/local/bin/pilot-agent" {
		t.Errorf("exact match: %v %+v", err, img)
	}
	img, err = cfg.MatchImage("docker.io/istio/pilot:1.31-dev")
	if err != nil || img.Match != "docker.io/istio/*" {
		t.Errorf("prefix match: %v %+v", err, img)
	}
	_, err = cfg.MatchImage("nginx:latest")
	var nm *ImageNotMappedError
	if !errors.As(err, &nm) {
		t.Fatalf("want ImageNotMappedError, got %v", err)
	}
	for _, want := range []string{`"nginx:latest"`, "/run/egh/r1/kubelet.json", "never pulls"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
}

func TestImageValidation(t *testing.T) {
	for _, bad := range []string{
		`{"match": "a*b*"}`, `{"match": "x", "binds": {"relative": "/x"}}`,
		`{"match": "x", "binds": {"/x": "relative"}}`, `{"match": "x", "user": "root"}`,
	} {
		s := strings.Replace(sample, `"images": [`, `"images": [`+bad+`,`, 1)
		if _, err := Parse([]byte(s)); err == nil {
			t.Errorf("image %s accepted", bad)
		}
	}
}

func TestArgvKubernetesRules(t *testing.T) {
	img := Image{Entrypoint: []string{"/ep"}, Cmd: []string{"c1", "c2"}}
	cases := []struct {
		command, args, want []string
	}{
		{nil, nil, []string{"/ep", "c1", "c2"}},
		{nil, []string{"a"}, []string{"/ep", "a"}},
		{[]string{"/cmd"}, nil, []string{"/cmd"}},
		{[]string{"/cmd"}, []string{"a"}, []string{"/cmd", "a"}},
	}
	for _, c := range cases {
		got := img.Argv(c.command, c.args)
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("Argv(%v, %v) = %v, want %v", c.command, c.args, got, c.want)
		}
	}
}
