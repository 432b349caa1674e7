package probe

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Kind is a probe's role.
type Kind string

// The three probe kinds.
const (
	Startup   Kind = "startup"
	Readiness Kind = "readiness"
	Liveness  Kind = "liveness"
)

// Check performs one probe attempt within timeout.
type Check func(ctx context.Context, timeout time.Duration) (ok bool, msg string)

// Worker probes one container run with one probe, as the kubelet's prober worker does: the first
// attempt after initialDelaySeconds from the container's start, then one every periodSeconds;
// a result is reported once it was seen successThreshold (failureThreshold) times in a row.
// Readiness and liveness probe only once Started says the startup probe passed. The worker ends
// after reporting a startup success, or a startup or liveness failure (the container is then
// restarted and gets new workers).
type Worker struct {
	Kind    Kind
	Probe   *corev1.Probe
	Check   Check
	Started func() bool
	Report  func(ok bool, msg string)
	// Trigger, when sent to, makes the next attempt happen now (e.g. readiness right after startup).
	Trigger chan struct{}
}

func orDefault(v, def int32) int32 {
	if v <= 0 {
		return def
	}
	return v
}

// Run probes until ctx ends or the worker's job is done. start is when the container started.
func (w *Worker) Run(ctx context.Context, start time.Time) {
	period := time.Duration(orDefault(w.Probe.PeriodSeconds, 10)) * time.Second
	timeout := time.Duration(orDefault(w.Probe.TimeoutSeconds, 1)) * time.Second
	success := int(orDefault(w.Probe.SuccessThreshold, 1))
	failure := int(orDefault(w.Probe.FailureThreshold, 3))
	if w.Kind != Readiness {
		success = 1 // the API allows only 1 for startup and liveness
	}

	if delay := time.Until(start.Add(time.Duration(w.Probe.InitialDelaySeconds) * time.Second)); delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	ticker := time.NewTicker(period)
	defer ticker.Stop()

	var last, reported *bool
	run := 0
	for {
		if w.Kind == Startup || w.Started == nil || w.Started() {
			ok, msg := w.Check(ctx, timeout)
			if ctx.Err() != nil {
				return
			}
			if last == nil || *last != ok {
				last, run = &ok, 1
			} else {
				run++
			}
			threshold := success
			if !ok {
				threshold = failure
			}
			if run >= threshold && (reported == nil || *reported != ok) {
				reported = &ok
				w.Report(ok, msg)
				if (ok && w.Kind == Startup) || (!ok && w.Kind != Readiness) {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-w.Trigger:
		}
	}
}
