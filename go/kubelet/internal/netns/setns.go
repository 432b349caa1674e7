package netns

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered network namespace name. The thread is never handed
// back to the Go scheduler (the goroutine exits while locked, so the runtime ends the thread): no
// other goroutine can ever run in the pod's namespace by accident.
func Do(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join(Dir, name))
		if err != nil {
			errc <- fmt.Errorf("network namespace %s: %w", name, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// DialTCP connects to addr from inside network namespace name ("" = the kubelet's own).
func DialTCP(name, addr string, timeout time.Duration) (net.Conn, error) {
	if name == "" {
		return net.DialTimeout("tcp", addr, timeout)
	}
	var conn net.Conn
	err := Do(name, func() error {
		// The socket is made on this thread, so in the pod's namespace; it stays there.
		c, err := net.DialTimeout("tcp", addr, timeout)
		conn = c
		return err
	})
	return conn, err
}

// SysctlPath maps a sysctl name (dots or slashes) to its /proc/sys file.
func SysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", key)
}

// SetSysctls writes network sysctls inside namespace name (/proc/sys/net is per namespace, chosen
// by the writing thread's namespace).
func SetSysctls(name string, sysctls map[string]string) error {
	if len(sysctls) == 0 {
		return nil
	}
	return Do(name, func() error {
		for key, value := range sysctls {
			if err := os.WriteFile(SysctlPath(key), []byte(value), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in network namespace %s: %w", key, value, name, err)
			}
		}
		return nil
	})
}
