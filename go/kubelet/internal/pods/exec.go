package pods

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/container"
	"github.com/istio-egress-harness/kubelet/internal/netns"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	utilexec "k8s.io/utils/exec"
)

// execIn runs cmd inside container c's namespaces, root, working directory and user, with the
// container's environment. It returns the command's exit code; err is for failures to run it.
func (p *Pod) execIn(ctx context.Context, c *ctr, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(cmd) == 0 {
		return 0, errdefs.InvalidInput("no command to run")
	}
	p.mu.Lock()
	proc, env, user := c.proc, c.env, c.user
	running := !c.runningSince.IsZero()
	p.mu.Unlock()
	if proc == nil || !running {
		return 0, errdefs.NotFoundf("container %s of pod %s is not running", c.spec.Name, p.key)
	}
	t := p.m.tools
	argv := container.ExecArgv(t.Host.Nsenter, t.Script.Setpriv, proc.Pid, user, cmd)
	x := exec.CommandContext(ctx, argv[0], argv[1:]...)
	x.Env = env
	x.Stdin, x.Stdout, x.Stderr = stdin, stdout, stderr
	x.WaitDelay = 2 * time.Second
	err := x.Run()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("command %v in container %s of pod %s: %w", cmd, c.spec.Name, p.key, ctx.Err())
		}
		return exitErr.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("command %v in container %s of pod %s: %w", cmd, c.spec.Name, p.key, err)
	}
	return 0, nil
}

// Exec runs cmd in container name (kubectl exec). A non-zero exit is returned as an exit error so
// the API server reports the code. No terminal is allocated: with tty requested the command still
// runs, its output unbuffered through pipes.
func (p *Pod) Exec(ctx context.Context, name string, cmd []string, stdin io.Reader, stdout, stderr io.WriteCloser) error {
	p.mu.Lock()
	c := p.container(name)
	p.mu.Unlock()
	if c == nil {
		return errdefs.NotFoundf("pod %s has no container %q", p.key, name)
	}
	var out, errOut io.Writer
	if stdout != nil {
		out = stdout
	}
	if stderr != nil {
		errOut = stderr
	} else {
		errOut = out
	}
	code, err := p.execIn(ctx, c, cmd, stdin, out, errOut)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// dialTimeout bounds a port-forward's connection to the pod.
const dialTimeout = 10 * time.Second

// PortForward connects stream to 127.0.0.1:port inside the pod's network namespace (the node's
// for hostNetwork pods) and copies both ways until either side closes.
func (p *Pod) PortForward(ctx context.Context, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	p.mu.Lock()
	name := p.sandbox.Name
	gone := p.terminal
	p.mu.Unlock()
	if gone {
		return errdefs.NotFoundf("pod %s is not running", p.key)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	conn, err := netns.DialTCP(name, addr, dialTimeout)
	if err != nil {
		return fmt.Errorf("port-forward to %s in pod %s: %w", addr, p.key, err)
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(stream, conn)
		_ = stream.Close()
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		_ = conn.Close()
		_ = stream.Close()
		<-done
	}
	return nil
}
