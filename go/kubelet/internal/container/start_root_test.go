package container

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/crilog"
)

func hostTools(t *testing.T) (HostTools, Tools) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces); run `go test` as root to include it")
	}
	find := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("needs %s on PATH", name)
		}
		abs, _ := filepath.Abs(p)
		return abs
	}
	return HostTools{IP: find("ip"), Unshare: find("unshare"), Nsenter: find("nsenter")},
		Tools{Sh: "/bin/sh", Mount: find("mount"), Mkdir: find("mkdir"), Cp: find("cp"), Touch: find("touch"),
			Ln: find("ln"), Chroot: find("chroot"), Setpriv: find("setpriv"), Env: find("env")}
}

func runContainer(t *testing.T, plan Plan, host HostTools) (*Process, bool, string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "0.log")
	logs, err := crilog.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := Start(Spec{UTS: true, Script: Script(plan), Env: []string{"PATH=/usr/bin:/bin", "FOO=bar"}, Log: logs, Tools: host, Sh: "/bin/sh", User: plan.User})
	if err != nil {
		t.Fatal(err)
	}
	var started bool
	select {
	case started = <-proc.Started():
	case <-time.After(20 * time.Second):
		_ = proc.Kill()
		t.Fatal("no start signal within 20 s")
	}
	select {
	case <-proc.Done():
	case <-time.After(20 * time.Second):
		_ = proc.Kill()
		t.Fatal("the container did not exit within 20 s")
	}
	logs.Close()
	data, _ := os.ReadFile(logPath)
	return proc, started, string(data)
}

func TestStartRoot(t *testing.T) {
	host, tools := hostTools(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	data := filepath.Join(dir, "data")
	for _, d := range []string{root, data} {
		if err := os.MkdirAll(data, 0o777); err != nil {
			t.Fatal(err)
		}
		_ = os.MkdirAll(d, 0o777)
	}
	_ = os.Chmod(data, 0o777)
	hosts := filepath.Join(dir, "hosts")
	_ = os.WriteFile(hosts, []byte("10.1.2.3 svc.test\n"), 0o644)
	resolv := filepath.Join(dir, "resolv.conf")
	_ = os.WriteFile(resolv, []byte("options ndots:5\n"), 0o644)
	cfg := filepath.Join(dir, "cfg-x")
	_ = os.WriteFile(cfg, []byte("config-value"), 0o644)
	termLog := filepath.Join(dir, "termination-log")
	_ = os.WriteFile(termLog, nil, 0o666)
	_ = os.Chmod(termLog, 0o666)

	plan := Plan{
		Pod: "test/pod", Container: "c", Root: root, Hostname: "egh-e-test-pod",
		RootBinds: RootBindsFor([]string{"/usr", "/lib", "/lib64", "/bin", "/sbin"}),
		EtcFiles:  []string{"passwd", "group", "nsswitch.conf"},
		Hosts:     hosts, Resolv: resolv, TerminationLog: termLog,
		Volumes:    []Bind{{Src: data, Dst: "/data"}, {Src: cfg, Dst: "/etc/cfg/x", File: true, ReadOnly: true}},
		WorkingDir: "/work",
		User:       User{UID: 1337, GID: 1337, Groups: []int64{4242}},
		Argv: []string{"/bin/sh", "-c", `echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) host=$(hostname) cwd=$(pwd) foo=$FOO"; ` +
			`cat /etc/hosts /etc/cfg/x; echo; echo written > /data/out; ` +
			`touch /usr/egh-forbidden 2>/dev/null || echo usr-read-only; echo bye > /dev/termination-log; echo to-stderr >&2; ` +
			`echo via-dev-stdout > /dev/stdout`},
		Tools: tools,
	}
	proc, started, log := runContainer(t, plan, host)
	if !started || proc.ExitCode() != 0 {
		t.Fatalf("started %v exit %d; log:\n%s", started, proc.ExitCode(), log)
	}
	for _, want := range []string{
		"stdout F uid=1337 gid=1337 groups=1337 4242 host=egh-e-test-pod cwd=/work foo=bar",
		"stdout F 10.1.2.3 svc.test", "stdout F config-value", "stdout F usr-read-only", "stderr F to-stderr", "stdout F via-dev-stdout",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if out, _ := os.ReadFile(filepath.Join(data, "out")); string(out) != "written\n" {
		t.Errorf("volume write: %q", out)
	}
	if msg, _ := os.ReadFile(termLog); string(msg) != "bye\n" {
		t.Errorf("termination log: %q", msg)
	}
	if _, err := os.Stat("/usr/egh-forbidden"); err == nil {
		t.Error("the container wrote into the host's /usr")
	}
	// Nothing of the container's mounts is visible here, and its root dir stayed empty on the host.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), root) {
		t.Error("a container mount leaked into the test's mount namespace")
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("the root directory on the host is not empty: %v", entries)
	}
}

func TestStartSetupFailureRoot(t *testing.T) {
	host, tools := hostTools(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	_ = os.MkdirAll(root, 0o755)
	hosts := filepath.Join(dir, "hosts")
	_ = os.WriteFile(hosts, nil, 0o644)
	plan := Plan{
		Pod: "test/pod", Container: "c", Root: root, RootBinds: RootBindsFor([]string{"/usr", "/lib", "/lib64", "/bin"}),
		Hosts: hosts, Resolv: hosts,
		Volumes: []Bind{{Src: filepath.Join(dir, "missing"), Dst: "/data"}},
		Argv:    []string{"/bin/true"}, Tools: tools,
	}
	proc, started, log := runContainer(t, plan, host)
	if started || proc.ExitCode() != SetupExitCode {
		t.Errorf("started %v exit %d", started, proc.ExitCode())
	}
	if !strings.Contains(log, "egh-kubelet: pod test/pod container c: setup step failed: bind "+filepath.Join(dir, "missing")+" at /data") {
		t.Errorf("log does not name the failed step:\n%s", log)
	}
}
