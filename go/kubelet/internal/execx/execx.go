// Package execx runs short external commands (ip, mount, ...) with a timeout and errors that show
// the command line and the tail of its stderr.
package execx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// DefaultTimeout bounds every setup command (ip, nsenter for probes use their own).
const DefaultTimeout = 20 * time.Second

// Error is a failed command.
type Error struct {
	Argv     []string
	Stderr   string
	Err      error
	TimedOut bool
	Timeout  time.Duration
}

func (e *Error) Error() string {
	cmd := strings.Join(e.Argv, " ")
	if e.TimedOut {
		return fmt.Sprintf("`%s` did not finish within %s", cmd, e.Timeout)
	}
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 600 {
		msg = "..." + msg[len(msg)-600:]
	}
	if msg == "" {
		return fmt.Sprintf("`%s` failed: %v", cmd, e.Err)
	}
	return fmt.Sprintf("`%s` failed: %v: %s", cmd, e.Err, msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs argv with the timeout and returns its stdout.
func Run(ctx context.Context, timeout time.Duration, argv ...string) (string, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), &Error{
			Argv: argv, Stderr: stderr.String(), Err: err,
			TimedOut: errors.Is(ctx.Err(), context.DeadlineExceeded), Timeout: timeout,
		}
	}
	return stdout.String(), nil
}

// StderrContains reports whether err is a command error whose stderr contains s.
func StderrContains(err error, s string) bool {
	var e *Error
	return errors.As(err, &e) && strings.Contains(e.Stderr, s)
}
