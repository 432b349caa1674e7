package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireRoot skips tests that make network namespaces unless run as root with `ip`.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (makes network namespaces); run `go test` as root to include it")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// enterNodeNamespace makes a throw-away "node" namespace (egh-e-test-node-<pid>) with nodeIP on lo
// and moves the calling goroutine's thread into it for good: every `ip` the code under test runs
// then acts there, never on the machine's own namespace.
func enterNodeNamespace(t *testing.T, nodeIP string) string {
	t.Helper()
	name := fmt.Sprintf("egh-e-test-node-%d", os.Getpid())
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	ipCmd(t, "-n", name, "link", "set", "lo", "up")
	ipCmd(t, "-n", name, "addr", "add", nodeIP+"/32", "dev", "lo")
	runtime.LockOSThread() // never unlocked: the thread ends with the test's goroutine
	f, err := os.Open(filepath.Join(Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestSandboxRoot(t *testing.T) {
	requireRoot(t)
	enterNodeNamespace(t, "10.250.9.1")
	sb := Sandbox{
		Name: fmt.Sprintf("egh-e-test-pod-%d", os.Getpid()), HostVeth: fmt.Sprintf("vt%d", os.Getpid()%100000000),
		IP: netip.MustParseAddr("10.250.9.2"), NodeIP: netip.MustParseAddr("10.250.9.1"),
	}
	ctx := context.Background()
	if err := Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = Delete(ctx, sb) }()
	if err := Create(ctx, sb); err == nil {
		t.Error("creating an existing sandbox must fail")
	}
	if err := SetSysctls(sb.Name, map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}); err != nil {
		t.Fatal(err)
	}
	var value []byte
	if err := Do(sb.Name, func() error {
		var err error
		value, err = os.ReadFile(SysctlPath("net.ipv4.ip_unprivileged_port_start"))
		return err
	}); err != nil || string(value) != "0\n" {
		t.Errorf("sysctl in the pod namespace: %q %v", value, err)
	}

	// A listener on the pod's loopback, reached by DialTCP (port-forward's path).
	var inPod net.Listener
	if err := Do(sb.Name, func() error {
		var err error
		inPod, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer inPod.Close()
	go func() {
		if c, err := inPod.Accept(); err == nil {
			_, _ = c.Write([]byte("from-pod"))
			c.Close()
		}
	}()
	conn, err := DialTCP(sb.Name, inPod.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := conn.Read(buf)
	conn.Close()
	if string(buf[:n]) != "from-pod" {
		t.Errorf("port-forward path read %q", buf[:n])
	}

	// The node reaches the pod IP (the /32 route), and the pod reaches the node IP (its routes).
	toPod, err := net.DialTimeout("tcp", net.JoinHostPort(sb.IP.String(), "9"), 2*time.Second)
	if err == nil {
		toPod.Close()
	} else if !isRefused(err) {
		t.Errorf("node -> pod: %v (want a connection or a refusal)", err)
	}
	onNode, err := net.Listen("tcp", "10.250.9.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer onNode.Close()
	go func() {
		if c, err := onNode.Accept(); err == nil {
			c.Close()
		}
	}()
	if err := Do(sb.Name, func() error {
		c, err := net.DialTimeout("tcp", onNode.Addr().String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Errorf("pod -> node: %v", err)
	}

	if names, _ := List("egh-e-test-pod-"); len(names) != 1 {
		t.Errorf("List = %v", names)
	}
	if err := Delete(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, sb); err != nil {
		t.Errorf("a second Delete must be a no-op: %v", err)
	}
	if _, err := os.Stat(filepath.Join(Dir, sb.Name)); err == nil {
		t.Error("namespace still there")
	}
}

func isRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }
