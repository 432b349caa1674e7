package netns

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/istio-egress-harness/kubelet/internal/execx"
)

// Dir is where `ip netns` keeps named namespaces (iproute2's NETNS_RUN_DIR).
const Dir = "/var/run/netns"

// EtcDir is where `ip netns exec` finds files it binds over /etc (hosts, resolv.conf).
const EtcDir = "/etc/netns"

// Sandbox is one pod's network: a named namespace with eth0 (a /32) whose peer lives in the
// node namespace with a /32 route to it; the pod's default route goes via the node IP.
type Sandbox struct {
	Name     string // network namespace name
	HostVeth string // the veth end in the node namespace (<= 15 characters)
	IP       netip.Addr
	NodeIP   netip.Addr
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// PodMarker follows the configured prefix in every pod namespace name: the kubelet owns exactly
// the namespaces named "<prefix>pod-...", so a run's other namespaces with the same prefix (the
// node's, the external host's) are never touched by a cleanup.
const PodMarker = "pod-"

// Names returns the namespace and host veth names for a pod: "<prefix>pod-<ns>.<name>-<8 hex>"
// (the readable part cut to 60 characters) and "v<8 hex>", the hex derived from the pod UID.
func Names(prefix, namespace, name, uid string) (nsName, veth string) {
	sum := sha256.Sum256([]byte(uid))
	short := hex.EncodeToString(sum[:4])
	readable := unsafeName.ReplaceAllString(namespace+"."+name, "-")
	if len(readable) > 60 {
		readable = readable[:60]
	}
	return prefix + PodMarker + readable + "-" + short, "v" + short
}

// Create builds the sandbox; on failure it removes whatever it made.
func Create(ctx context.Context, sb Sandbox) (err error) {
	if _, err := os.Stat(filepath.Join(Dir, sb.Name)); err == nil {
		return fmt.Errorf("network namespace %s exists already (a leftover? `egh-kubelet --cleanup` removes them)", sb.Name)
	}
	defer func() {
		if err != nil {
			if derr := Delete(context.WithoutCancel(ctx), sb); derr != nil {
				err = fmt.Errorf("%w (and removing the half-made namespace failed: %v)", err, derr)
			}
		}
	}()
	ip := sb.IP.String()
	node := sb.NodeIP.String()
	steps := [][]string{
		{"netns", "add", sb.Name},
		{"link", "add", sb.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", sb.Name},
		{"link", "set", sb.HostVeth, "up"},
		{"-n", sb.Name, "link", "set", "lo", "up"},
		{"-n", sb.Name, "link", "set", "eth0", "up"},
		{"-n", sb.Name, "addr", "add", ip + "/32", "dev", "eth0"},
		{"-n", sb.Name, "route", "add", node, "dev", "eth0", "scope", "link"},
		{"-n", sb.Name, "route", "add", "default", "via", node, "dev", "eth0"},
		{"route", "replace", ip + "/32", "dev", sb.HostVeth, "src", node},
	}
	for _, args := range steps {
		if _, err := execx.Run(ctx, 0, append([]string{"ip"}, args...)...); err != nil {
			return fmt.Errorf("network namespace %s: %w", sb.Name, err)
		}
	}
	return nil
}

// Delete removes the namespace, the host veth (normally gone with the namespace) and the /etc/netns
// folder. Missing pieces are fine, so Delete can run on a half-made or half-removed sandbox.
func Delete(ctx context.Context, sb Sandbox) error {
	var errs []error
	if _, err := os.Stat(filepath.Join(Dir, sb.Name)); err == nil {
		if _, err := execx.Run(ctx, 0, "ip", "netns", "delete", sb.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if sb.HostVeth != "" {
		// Not /sys/class/net: under nsenter --net, /sys still shows the root namespace's links.
		if _, err := execx.Run(ctx, 0, "ip", "link", "del", sb.HostVeth); err != nil && !execx.StderrContains(err, "Cannot find device") {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(EtcDir, sb.Name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// List returns the named network namespaces whose name starts with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
