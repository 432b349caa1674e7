package pods

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/config"
	"github.com/istio-egress-harness/kubelet/internal/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// CleanupMode says what Cleanup keeps.
type CleanupMode int

const (
	// CleanupAll removes every pod directory.
	CleanupAll CleanupMode = iota
	// CleanupKeepLogs keeps each pod directory's logs/.
	CleanupKeepLogs
)

// killWait bounds the wait for killed processes to disappear.
const killWait = 10 * time.Second

// Cleanup removes what a kubelet of this config left behind (a crash, or a sweep after a normal
// shutdown): processes whose root is under the pods directory or that live in one of the run's
// network namespaces, the namespaces with the run's prefix (their veths and routes go with them)
// and their /etc/netns folders, mounts under runDir, and the pod directories.
func Cleanup(ctx context.Context, cfg *config.Config, mode CleanupMode) error {
	var errs []error
	podsDir := cfg.PodsDir()
	podPrefix := cfg.NetnsPrefix + netns.PodMarker
	all, err := netns.List(podPrefix)
	if err != nil {
		errs = append(errs, err)
	}
	own := map[uint64]bool{} // never the kubelet's own namespace nor the machine's
	for _, p := range []string{"/proc/self/ns/net", "/proc/1/ns/net"} {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil {
			own[st.Ino] = true
		}
	}
	var nsNames []string
	nsInodes := map[uint64]string{}
	for _, n := range all {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(netns.Dir, n), &st); err == nil && own[st.Ino] {
			klog.InfoS("Not removing a namespace that is the kubelet's own", "netns", n)
			continue
		} else if err == nil {
			nsInodes[st.Ino] = n
		}
		nsNames = append(nsNames, n)
	}
	pids := leftoverProcesses(podsDir, nsInodes)
	for _, pid := range pids {
		klog.InfoS("Killing a leftover container process", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := waitGone(ctx, pids, killWait); err != nil {
		errs = append(errs, err)
	}
	for _, n := range nsNames {
		klog.InfoS("Removing a leftover network namespace", "netns", n)
		if err := netns.Delete(ctx, netns.Sandbox{Name: n}); err != nil {
			errs = append(errs, err)
		}
	}
	if entries, err := os.ReadDir(netns.EtcDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), podPrefix) {
				if err := os.RemoveAll(filepath.Join(netns.EtcDir, e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	for _, mnt := range mountsUnder(cfg.RunDir) {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mnt, err))
		}
	}
	errs = append(errs, removePodDirs(podsDir, mode)...)
	return errors.Join(errs...)
}

func removePodDirs(podsDir string, mode CleanupMode) []error {
	var errs []error
	entries, err := os.ReadDir(podsDir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		return errs
	}
	for _, e := range entries {
		dir := filepath.Join(podsDir, e.Name())
		if mode == CleanupAll {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		subs, _ := os.ReadDir(dir)
		for _, s := range subs {
			if s.Name() != "logs" {
				if err := os.RemoveAll(filepath.Join(dir, s.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errs
}

// leftoverProcesses lists processes chrooted under podsDir or in one of the namespaces.
func leftoverProcesses(podsDir string, nsInodes map[uint64]string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 || !processAlive(pid) {
			continue
		}
		if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err == nil && strings.HasPrefix(root, podsDir+"/") {
			pids = append(pids, pid)
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err == nil {
			if _, ours := nsInodes[st.Ino]; ours {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// waitGone waits until every pid has exited, checking every 50 ms up to limit.
func waitGone(ctx context.Context, pids []int, limit time.Duration) error {
	if len(pids) == 0 {
		return nil
	}
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var alive []int
		for _, pid := range pids {
			if processAlive(pid) {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v did not exit within %s of SIGKILL", alive, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// processAlive reports whether pid exists and is not a zombie (a killed process whose parent has
// not reaped it yet is gone for our purposes).
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may itself contain ") ".
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	return data[i+2] != 'Z'
}

// mountsUnder lists this mount namespace's mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
