package container

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/crilog"
)

// HostTools are the host programs that start a container.
type HostTools struct {
	IP, Unshare, Nsenter string
}

// Spec is one container run to start.
type Spec struct {
	Netns  string // the pod's network namespace; "" runs in the kubelet's (hostNetwork)
	UTS    bool   // a UTS namespace of its own (the script sets the hostname)
	Script string
	Env    []string
	Log    *crilog.Writer
	Tools  HostTools
	Sh     string
	// User owns the stdout and stderr pipes (as runc does), so the program can reopen them as
	// /dev/stdout (Envoy's access log file is /dev/stdout).
	User User
}

// Process is a running container: its main process leads a process group.
type Process struct {
	cmd     *exec.Cmd
	Pid     int
	started chan bool // one value: true when the root was ready and the program exec'd
	done    chan struct{}
	pumps   sync.WaitGroup

	exitCode   int
	signaled   bool
	finishedAt time.Time
	waitErr    error
}

// pumpGrace is how long the log pumps may run after the container's processes were killed (a
// program that escaped the process group may hold the pipes).
const pumpGrace = 2 * time.Second

// Start starts the container script. The returned process reports on Started whether setup
// succeeded, and on Done when the main process exited.
func Start(s Spec) (*Process, error) {
	argv := []string{}
	if s.Netns != "" {
		argv = append(argv, s.Tools.IP, "netns", "exec", s.Netns)
	}
	argv = append(argv, s.Tools.Unshare, "-m", "--propagation", "private")
	if s.UTS {
		argv = append(argv, "-u")
	}
	argv = append(argv, "--", s.Sh, "-c", s.Script)

	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, err
	}
	for _, w := range []*os.File{outW, errW} {
		if err := w.Chown(int(s.User.UID), int(s.User.GID)); err != nil {
			for _, f := range []*os.File{outR, outW, errR, errW, startR, startW} {
				f.Close()
			}
			return nil, fmt.Errorf("giving the output pipes to uid %d: %w", s.User.UID, err)
		}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = s.Env
	cmd.Dir = "/"
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.ExtraFiles = []*os.File{startW}
	// No Pdeathsig: it fires when the forking OS thread ends, and netns.Do ends threads on purpose.
	// A crashed kubelet's containers are removed by `egh-kubelet --cleanup`.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	outW.Close()
	errW.Close()
	startW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		startR.Close()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &Process{cmd: cmd, Pid: cmd.Process.Pid, started: make(chan bool, 1), done: make(chan struct{})}
	p.pumps.Add(2)
	go func() { defer p.pumps.Done(); defer outR.Close(); s.Log.Pump("stdout", outR) }()
	go func() { defer p.pumps.Done(); defer errR.Close(); s.Log.Pump("stderr", errR) }()
	go func() {
		defer startR.Close()
		line, _ := bufio.NewReader(startR).ReadString('\n')
		p.started <- strings.TrimSpace(line) == StartedMarker
	}()
	go p.wait(outR, errR)
	return p, nil
}

func (p *Process) wait(outR, errR *os.File) {
	err := p.cmd.Wait()
	p.finishedAt = time.Now()
	p.waitErr = err
	if st := p.cmd.ProcessState; st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.signaled = true
			p.exitCode = 128 + int(ws.Signal())
		} else {
			p.exitCode = st.ExitCode()
		}
	}
	// The container is over when its main process is (as when a pid namespace's init exits):
	// whatever else is left in its process group goes too.
	_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	pumped := make(chan struct{})
	go func() { p.pumps.Wait(); close(pumped) }()
	t := time.NewTimer(pumpGrace)
	select {
	case <-pumped:
		t.Stop()
	case <-t.C:
		outR.Close() // unblocks the pumps' reads
		errR.Close()
		<-pumped
	}
	close(p.done)
}

// Started receives once: true when the script built the root and exec'd the program.
func (p *Process) Started() <-chan bool { return p.started }

// Done is closed when the main process exited and its output was written.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitCode is the exit code (128+signal when killed by a signal); valid after Done.
func (p *Process) ExitCode() int { return p.exitCode }

// FinishedAt is when the main process exited; valid after Done.
func (p *Process) FinishedAt() time.Time { return p.finishedAt }

// Terminate sends SIGTERM to the main process only, as a container runtime does.
func (p *Process) Terminate() error {
	err := syscall.Kill(p.Pid, syscall.SIGTERM)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Kill sends SIGKILL to the whole process group.
func (p *Process) Kill() error {
	err := syscall.Kill(-p.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Exited reports whether the main process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}
