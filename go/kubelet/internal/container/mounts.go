// Package container starts a container's process: the shell script that builds its root in a
// private mount namespace, and the process with its logs, start signal and process group.
package container

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Bind is one mount into the container root.
type Bind struct {
	Src, Dst string
	ReadOnly bool
	// File: the mount point is a file (a subPath or a single-file volume item), not a directory.
	File bool
	// Symlink: Dst is made as a symlink to this target instead of a bind (a root bind whose host
	// path is a symlink, e.g. /lib -> usr/lib on merged-/usr systems).
	Symlink string
}

// Tools are the absolute paths of the programs the script runs: Mount..Chroot on the host before
// the chroot, Setpriv and Env inside the container root (so a root bind must provide them).
type Tools struct {
	Sh, Mount, Mkdir, Cp, Touch, Ln, Chroot, Setpriv, Env string
}

// Plan is everything a container's root and process are made of.
type Plan struct {
	Pod, Container string // "namespace/name" and the container name, for messages
	Root           string // host path where the root tmpfs is mounted (in the private namespace)
	Hostname       string // set in the container's UTS namespace; "" keeps the node's (hostNetwork)
	RootBinds      []Bind
	EtcFiles       []string // names under the host's /etc copied into the root's /etc when present
	Hosts, Resolv  string   // host files bound at /etc/hosts and /etc/resolv.conf
	TerminationLog string   // host file bound at /dev/termination-log
	ImageBinds     []Bind
	Volumes        []Bind
	WorkingDir     string
	User           User
	Argv           []string
	Tools          Tools
}

// StartedMarker is what the script writes to fd 3 when the root is ready, just before it execs the
// container's program: a process that exits without it failed in setup (reason StartError).
const StartedMarker = "started"

// SetupExitCode is the script's exit code when building the root fails.
const SetupExitCode = 125

// q quotes s for the POSIX shell.
func q(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// devNodes are the device files bound from the host into the container's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// SortByDepth orders binds so that a parent mount point comes before its children (as container
// runtimes do), keeping the given order otherwise.
func SortByDepth(binds []Bind) {
	sort.SliceStable(binds, func(i, j int) bool {
		return strings.Count(path.Clean(binds[i].Dst), "/") < strings.Count(path.Clean(binds[j].Dst), "/")
	})
}

// Script renders the shell script run as `unshare -m --propagation private -- sh -c <script>`
// (inside `ip netns exec <pod netns>` unless the pod uses the host network). Every mount point is
// made under the root's own tmpfs or on an existing directory of a read-only bind: nothing is
// created on the host's filesystems outside the pod directory.
func Script(p Plan) string {
	t := p.Tools
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	// step runs a command and names it when it fails.
	step := func(what string, argv ...string) {
		quoted := make([]string, len(argv))
		for i, a := range argv {
			quoted[i] = q(a)
		}
		line("%s || fail %s", strings.Join(quoted, " "), q(what))
	}
	r := func(dst string) string { return filepath.Join(p.Root, dst) }
	mkdir := func(dst string) { step("mkdir "+dst, t.Mkdir, "-p", r(dst)) }
	bindAt := func(src, dst string, ro, file bool) {
		if file {
			mkdir(path.Dir(dst))
			line("[ -e %s ] || %s %s || fail %s", q(r(dst)), q(t.Touch), q(r(dst)), q("make mount point "+dst))
		} else {
			mkdir(dst)
		}
		step(fmt.Sprintf("bind %s at %s", src, dst), t.Mount, "--bind", src, r(dst))
		if ro {
			step("make "+dst+" read-only", t.Mount, "-o", "remount,bind,ro", r(dst))
		}
	}

	line("# egh-kubelet: root of container %s of pod %s", p.Container, p.Pod)
	line("fail() { echo \"egh-kubelet: pod %s container %s: setup step failed: $1\" >&2; exit %d; }",
		strings.ReplaceAll(p.Pod, "\"", ""), strings.ReplaceAll(p.Container, "\"", ""), SetupExitCode)
	step("mount the root tmpfs", t.Mount, "-t", "tmpfs", "-o", "mode=0755", "egh-root", p.Root)

	for _, bd := range p.RootBinds {
		if bd.Symlink != "" {
			mkdir(path.Dir(bd.Dst))
			step("symlink "+bd.Dst, t.Ln, "-s", bd.Symlink, r(bd.Dst))
			continue
		}
		bindAt(bd.Src, bd.Dst, true, bd.File)
	}

	mkdir("/proc")
	step("mount /proc", t.Mount, "-t", "proc", "proc", r("/proc"))
	mkdir("/sys")
	step("bind /sys", t.Mount, "--rbind", "/sys", r("/sys"))
	step("make /sys read-only", t.Mount, "-o", "remount,bind,ro", r("/sys"))

	mkdir("/dev")
	step("mount /dev", t.Mount, "-t", "tmpfs", "-o", "mode=0755,nosuid", "egh-dev", r("/dev"))
	for _, n := range devNodes {
		dev, at := "/dev/"+n, r("/dev/"+n)
		line("if [ -e %s ]; then %s %s && %s --bind %s %s || fail %s; fi", q(dev), q(t.Touch), q(at), q(t.Mount), q(dev), q(at), q("bind "+dev))
	}
	mkdir("/dev/pts")
	step("mount /dev/pts", t.Mount, "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", r("/dev/pts"))
	step("link /dev/ptmx", t.Ln, "-s", "pts/ptmx", r("/dev/ptmx"))
	mkdir("/dev/shm")
	step("mount /dev/shm", t.Mount, "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", r("/dev/shm"))
	step("link /dev/fd", t.Ln, "-s", "/proc/self/fd", r("/dev/fd"))
	for i, n := range []string{"stdin", "stdout", "stderr"} {
		step("link /dev/"+n, t.Ln, "-s", "/proc/self/fd/"+strconv.Itoa(i), r("/dev/"+n))
	}
	if p.TerminationLog != "" {
		bindAt(p.TerminationLog, "/dev/termination-log", false, true)
	}

	mkdir("/tmp")
	step("mount /tmp", t.Mount, "-t", "tmpfs", "-o", "mode=1777", "tmp", r("/tmp"))
	mkdir("/run")
	mkdir("/var/run") // a directory, not the usual symlink to /run: an absolute link would lead mkdir out of the root
	mkdir("/var/tmp")

	mkdir("/etc")
	for _, f := range p.EtcFiles {
		src := filepath.Join("/etc", f)
		if strings.Contains(f, "/") {
			mkdir(path.Dir("/etc/" + f))
		}
		line("if [ -e %s ]; then %s -a %s %s || fail %s; fi", q(src), q(t.Cp), q(src), q(r(path.Dir("/etc/"+f))+"/"), q("copy "+src))
	}
	if p.Hostname != "" {
		line("echo %s > %s || fail %s", q(p.Hostname), q(r("/etc/hostname")), q("write /etc/hostname"))
	}
	bindAt(p.Hosts, "/etc/hosts", true, true)
	bindAt(p.Resolv, "/etc/resolv.conf", true, true)

	for _, bd := range p.ImageBinds {
		bindAt(bd.Src, bd.Dst, true, bd.File)
	}
	for _, bd := range p.Volumes {
		bindAt(bd.Src, bd.Dst, bd.ReadOnly, bd.File)
	}
	if p.Hostname != "" {
		line("echo %s > /proc/sys/kernel/hostname || fail %s", q(p.Hostname), q("set the hostname"))
	}
	wd := p.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if wd != "/" {
		line("[ -d %s ] || %s -p %s || fail %s", q(r(wd)), q(t.Mkdir), q(r(wd)), q("make the working directory "+wd))
	}
	line("printf '%s\\n' >&3; exec 3>&-", StartedMarker)

	argv := append([]string{"exec", t.Chroot, p.Root}, SetprivArgs(t.Setpriv, p.User)...)
	if wd != "/" {
		argv = append(argv, t.Env, "--chdir="+wd, "--")
	}
	argv = append(argv, p.Argv...)
	quoted := make([]string, len(argv))
	for i, a := range argv {
		if i == 0 {
			quoted[i] = a
			continue
		}
		quoted[i] = q(a)
	}
	line("%s", strings.Join(quoted, " "))
	return b.String()
}

// RootBindsFor turns configured root bind paths into binds: a host symlink becomes the same symlink
// in the root, a file a file mount point; missing paths are skipped.
func RootBindsFor(paths []string) []Bind {
	var out []Bind
	for _, p := range paths {
		p = filepath.Clean(p)
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if st.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err == nil && !filepath.IsAbs(target) {
				out = append(out, Bind{Dst: p, Symlink: target})
				continue
			}
			st, err = os.Stat(p) // an absolute link: bind what it points to
			if err != nil {
				continue
			}
		}
		out = append(out, Bind{Src: p, Dst: p, ReadOnly: true, File: !st.IsDir()})
	}
	return out
}

// EtcFilesNotBound drops the /etc entries that a root bind already provides, or that contain one
// (a root bind of /etc/ssl makes copying /etc/ssl needless, and impossible: the copy would land on
// the read-only bind).
func EtcFilesNotBound(etcFiles []string, binds []Bind) []string {
	var out []string
	for _, f := range etcFiles {
		p := path.Join("/etc", f)
		covered := false
		for _, b := range binds {
			d := path.Clean(b.Dst)
			if p == d || strings.HasPrefix(p, d+"/") || strings.HasPrefix(d, p+"/") {
				covered = true
			}
		}
		if !covered {
			out = append(out, f)
		}
	}
	return out
}
