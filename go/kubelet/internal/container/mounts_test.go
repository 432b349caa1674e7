package container

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func testPlan() Plan {
	return Plan{
		Pod: "istio-system/gw-1", Container: "istio-proxy", Root: "/run/egh/r1/kubelet/pods/u1/containers/istio-proxy/root",
		Hostname:  "gw-1",
		RootBinds: []Bind{{Src: "/usr", Dst: "/usr", ReadOnly: true}, {Dst: "/lib", Symlink: "usr/lib"}},
		EtcFiles:  []string{"passwd", "ssl/certs"},
		Hosts:     "/etc/netns/egh-r1-x/hosts", Resolv: "/etc/netns/egh-r1-x/resolv.conf",
		TerminationLog: "/run/egh/r1/kubelet/pods/u1/containers/istio-proxy/termination-log",
		ImageBinds:     []Bind{{Src: "/cache/proxyv2/usr/local/bin", Dst: "/usr/local/bin", ReadOnly: true}},
		Volumes: []Bind{
			{Src: "/pods/u1/volumes/istio-token", Dst: "/var/run/secrets/tokens", ReadOnly: true},
			{Src: "/pods/u1/volumes/cfg/mesh", Dst: "/etc/istio/config/mesh", File: true},
		},
		WorkingDir: "/var/lib/istio",
		User:       User{UID: 1337, GID: 1337, Groups: []int64{1337}},
		Argv:       []string{"/usr/local/bin/pilot-agent", "proxy", "router", "--domain", "it's $(NOT) expanded; `here`"},
		Tools: Tools{Sh: "/bin/sh", Mount: "/usr/bin/mount", Mkdir: "/usr/bin/mkdir", Cp: "/usr/bin/cp", Touch: "/usr/bin/touch",
			Ln: "/usr/bin/ln", Chroot: "/usr/sbin/chroot", Setpriv: "/usr/bin/setpriv", Env: "/usr/bin/env"},
	}
}

func TestScript(t *testing.T) {
	s := Script(testPlan())
	root := "/run/egh/r1/kubelet/pods/u1/containers/istio-proxy/root"
	for _, want := range []string{
		"'/usr/bin/mount' '-t' 'tmpfs' '-o' 'mode=0755' 'egh-root' '" + root + "' || fail",
		"'/usr/bin/mount' '--bind' '/usr' '" + root + "/usr' || fail 'bind /usr at /usr'",
		"'/usr/bin/mount' '-o' 'remount,bind,ro' '" + root + "/usr' || fail",
		"'/usr/bin/ln' '-s' 'usr/lib' '" + root + "/lib'",
		"'/usr/bin/mount' '-t' 'proc' 'proc' '" + root + "/proc'",
		"'/usr/bin/mount' '--bind' '/etc/netns/egh-r1-x/hosts' '" + root + "/etc/hosts'",
		"'/usr/bin/cp' -a '/etc/ssl/certs' '" + root + "/etc/ssl/'",
		"'/usr/bin/mount' '--bind' '/cache/proxyv2/usr/local/bin' '" + root + "/usr/local/bin'",
		"[ -e '" + root + "/etc/istio/config/mesh' ] || '/usr/bin/touch' '" + root + "/etc/istio/config/mesh'",
		"echo 'gw-1' > /proc/sys/kernel/hostname",
		"echo 'gw-1' > '" + root + "/etc/hostname'",
		"printf 'started\\n' >&3; exec 3>&-",
		"exec '/usr/sbin/chroot' '" + root + "' '/usr/bin/setpriv' '--reuid' '1337' '--regid' '1337' '--groups' '1337' '--' " +
			"'/usr/bin/env' '--chdir=/var/lib/istio' '--' '/usr/local/bin/pilot-agent' 'proxy' 'router' '--domain' 'it'\\''s $(NOT) expanded; `here`'",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks\n  %s\nscript:\n%s", want, s)
		}
	}
	// The read-only token volume is remounted read-only; the file mount is not.
	if !strings.Contains(s, "'remount,bind,ro' '"+root+"/var/run/secrets/tokens'") {
		t.Error("readOnly volume not remounted read-only")
	}
	if strings.Contains(s, "'remount,bind,ro' '"+root+"/etc/istio/config/mesh'") {
		t.Error("a read-write volume was made read-only")
	}
	// /usr must be bound before /usr/local/bin is bound over it.
	if strings.Index(s, root+"/usr'") > strings.Index(s, root+"/usr/local/bin'") {
		t.Error("image bind made before the root binds")
	}
}

func TestScriptIsValidShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH")
	}
	p := testPlan()
	p.WorkingDir = ""
	p.User = User{}
	for _, s := range []string{Script(testPlan()), Script(p)} {
		if out, err := exec.Command(sh, "-n", "-c", s).CombinedOutput(); err != nil {
			t.Errorf("sh -n: %v: %s\n%s", err, out, s)
		}
	}
	if s := Script(p); !strings.Contains(s, "'--clear-groups' '--' '/usr/local/bin/pilot-agent'") {
		t.Errorf("root user without a working directory:\n%s", s)
	}
}

func TestSortByDepth(t *testing.T) {
	b := []Bind{{Dst: "/a/b/c"}, {Dst: "/x"}, {Dst: "/a/b"}, {Dst: "/y"}}
	SortByDepth(b)
	got := []string{b[0].Dst, b[1].Dst, b[2].Dst, b[3].Dst}
	if strings.Join(got, " ") != "/x /y /a/b /a/b/c" {
		t.Errorf("order %v", got)
	}
}

func TestRootBindsFor(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := RootBindsFor([]string{real, filepath.Join(dir, "rel"), filepath.Join(dir, "file"), filepath.Join(dir, "missing")})
	if len(got) != 3 {
		t.Fatalf("got %+v", got)
	}
	if got[0].Src != real || got[0].File || got[1].Symlink != "real" || !got[2].File {
		t.Errorf("got %+v", got)
	}
}

func TestExecArgv(t *testing.T) {
	got := strings.Join(ExecArgv("/usr/bin/nsenter", "/usr/bin/setpriv", 42, User{UID: 1337, GID: 1337}, []string{"curl", "-s", "x"}), " ")
	want := "/usr/bin/nsenter --target 42 --mount --net --uts --root --wd -- /usr/bin/setpriv --reuid 1337 --regid 1337 --clear-groups -- curl -s x"
	if got != want {
		t.Errorf("ExecArgv = %s", got)
	}
}

func TestEtcFilesNotBound(t *testing.T) {
	got := EtcFilesNotBound([]string{"passwd", "ssl", "ssl/certs", "alternatives", "pki"},
		[]Bind{{Dst: "/usr"}, {Dst: "/etc/ssl"}, {Dst: "/etc/pki/tls"}})
	if strings.Join(got, " ") != "passwd alternatives" {
		t.Errorf("got %v", got)
	}
}
