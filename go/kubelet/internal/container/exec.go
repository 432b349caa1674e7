package container

import (
	"strconv"
	"strings"
)

// User is who a container's processes run as.
type User struct {
	UID, GID int64
	Groups   []int64
}

// SetprivArgs are setpriv's arguments for u (ending with "--").
func SetprivArgs(setpriv string, u User) []string {
	argv := []string{setpriv, "--reuid", strconv.FormatInt(u.UID, 10), "--regid", strconv.FormatInt(u.GID, 10)}
	if len(u.Groups) == 0 {
		argv = append(argv, "--clear-groups")
	} else {
		gs := make([]string, len(u.Groups))
		for i, g := range u.Groups {
			gs[i] = strconv.FormatInt(g, 10)
		}
		argv = append(argv, "--groups", strings.Join(gs, ","))
	}
	return append(argv, "--")
}

// ExecArgv is how a command runs inside a running container (kubectl exec, exec probes and
// hooks): nsenter joins the main process's mount, network and UTS namespaces, its root (the
// container's chroot) and working directory, then setpriv takes the container's user.
func ExecArgv(nsenter, setpriv string, pid int, u User, cmd []string) []string {
	argv := []string{nsenter, "--target", strconv.Itoa(pid), "--mount", "--net", "--uts", "--root", "--wd", "--"}
	argv = append(argv, SetprivArgs(setpriv, u)...)
	return append(argv, cmd...)
}
