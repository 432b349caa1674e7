package pods

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/istio-egress-harness/kubelet/internal/config"
	"github.com/istio-egress-harness/kubelet/internal/netns"
)

// TestCleanupTouchesOnlyPodNamespacesRoot: a run's node namespace shares the prefix with its pod
// namespaces; a cleanup must remove the pods' only, and keep logs when asked.
func TestCleanupTouchesOnlyPodNamespacesRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (makes network namespaces); run `go test` as root to include it")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	prefix := fmt.Sprintf("egh-e-test-%d-", os.Getpid())
	node, pod := prefix+"node", prefix+netns.PodMarker+"default.x-12345678"
	for _, n := range []string{node, pod} {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v %s", n, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", n).Run() })
	}
	runDir := t.TempDir()
	logDir := filepath.Join(runDir, "pods", "uid-1", "logs", "c")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(filepath.Join(logDir, "0.log"), []byte("x"), 0o644)
	_ = os.MkdirAll(filepath.Join(runDir, "pods", "uid-1", "volumes", "v"), 0o755)

	cfg := &config.Config{RunDir: runDir, NetnsPrefix: prefix}
	if err := Cleanup(context.Background(), cfg, CleanupKeepLogs); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netns.Dir, node)); err != nil {
		t.Errorf("the node namespace was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(netns.Dir, pod)); err == nil {
		t.Error("the pod namespace was kept")
	}
	if _, err := os.Stat(filepath.Join(logDir, "0.log")); err != nil {
		t.Errorf("logs were not kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(runDir, "pods", "uid-1", "volumes")); err == nil {
		t.Error("volumes were kept")
	}
}
