package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func hostPort(t *testing.T, srv *httptest.Server) (string, int) {
	t.Helper()
	u, _ := url.Parse(srv.URL)
	h, p, _ := net.SplitHostPort(u.Host)
	n, _ := strconv.Atoi(p)
	return h, n
}

func TestHTTPGet(t *testing.T) {
	var gotUA, gotHost, gotHeader string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotUA, gotHost, gotHeader = r.UserAgent(), r.Host, r.Header.Get("X-Probe")
		switch r.URL.Path {
		case "/healthz/ready":
			w.WriteHeader(200)
		case "/redirect":
			http.Redirect(w, r, "/healthz/ready", http.StatusFound)
		case "/away":
			http.Redirect(w, r, "http://elsewhere.invalid/x", http.StatusFound)
		case "/slow":
			time.Sleep(300 * time.Millisecond)
		default:
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	host, port := hostPort(t, srv)
	ctx := context.Background()
	act := &corev1.HTTPGetAction{Path: "/healthz/ready", HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "1"}, {Name: "Host", Value: "example.test"}}}
	if ok, msg := HTTPGet(ctx, act, host, port, time.Second); !ok {
		t.Errorf("ready: %s", msg)
	}
	if gotUA != UserAgent || gotHost != "example.test" || gotHeader != "1" {
		t.Errorf("request: UA %q Host %q header %q", gotUA, gotHost, gotHeader)
	}
	if ok, msg := HTTPGet(ctx, &corev1.HTTPGetAction{Path: "/nope"}, host, port, time.Second); ok || msg == "" {
		t.Errorf("503 must fail with a message, got %v %q", ok, msg)
	}
	if ok, _ := HTTPGet(ctx, &corev1.HTTPGetAction{Path: "redirect"}, host, port, time.Second); !ok {
		t.Error("a same-host redirect to a ready path must pass")
	}
	if ok, _ := HTTPGet(ctx, &corev1.HTTPGetAction{Path: "/away"}, host, port, time.Second); !ok {
		t.Error("a redirect to another host is not followed and counts as success (3xx)")
	}
	if ok, _ := HTTPGet(ctx, &corev1.HTTPGetAction{Path: "/slow"}, host, port, 50*time.Millisecond); ok {
		t.Error("a response slower than the timeout must fail")
	}
}

func TestTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if ok, msg := TCP("127.0.0.1", port, time.Second); !ok {
		t.Errorf("open port: %s", msg)
	}
	l.Close()
	if ok, _ := TCP("127.0.0.1", port, time.Second); ok {
		t.Error("closed port must fail")
	}
}

func TestResolvePort(t *testing.T) {
	c := &corev1.Container{Name: "c", Ports: []corev1.ContainerPort{{Name: "http-envoy-prom", ContainerPort: 15090}}}
	if p, err := ResolvePort(intstr.FromString("http-envoy-prom"), c); err != nil || p != 15090 {
		t.Errorf("named: %d %v", p, err)
	}
	if p, err := ResolvePort(intstr.FromInt32(15021), c); err != nil || p != 15021 {
		t.Errorf("number: %d %v", p, err)
	}
	if _, err := ResolvePort(intstr.FromString("missing"), c); err == nil {
		t.Error("unknown name must fail")
	}
}

// scripted returns results in order, then repeats the last one.
type scripted struct {
	mu      sync.Mutex
	results []bool
	calls   int
}

func (s *scripted) check(context.Context, time.Duration) (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.calls, len(s.results)-1)
	s.calls++
	return s.results[i], "scripted"
}

type report struct {
	ok   bool
	when int
}

func runWorker(t *testing.T, kind Kind, probe *corev1.Probe, results []bool, started func() bool, wantReports int) ([]report, *scripted) {
	t.Helper()
	s := &scripted{results: results}
	var mu sync.Mutex
	var reports []report
	got := make(chan struct{}, 100)
	w := &Worker{Kind: kind, Probe: probe, Check: s.check, Started: started, Trigger: make(chan struct{}, 1),
		Report: func(ok bool, _ string) {
			mu.Lock()
			s.mu.Lock()
			reports = append(reports, report{ok, s.calls})
			s.mu.Unlock()
			mu.Unlock()
			got <- struct{}{}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, time.Now()); close(done) }()
	for range wantReports {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s worker: only %d reports", kind, len(reports))
		}
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	return reports, s
}

// The probes below use the shortest period the API allows (1 s); the thresholds are under test.
func TestReadinessThresholds(t *testing.T) {
	p := &corev1.Probe{PeriodSeconds: 1, SuccessThreshold: 2, FailureThreshold: 2}
	// fail, fail -> not ready (2nd call); ok -> still not ready; ok -> ready (4th call)
	reports, _ := runWorker(t, Readiness, p, []bool{false, false, true, true}, nil, 2)
	if len(reports) != 2 || reports[0] != (report{false, 2}) || reports[1] != (report{true, 4}) {
		t.Errorf("reports %+v", reports)
	}
}

func TestLivenessStopsAfterFailure(t *testing.T) {
	p := &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 1}
	reports, s := runWorker(t, Liveness, p, []bool{false}, func() bool { return true }, 1)
	if len(reports) != 1 || reports[0].ok || s.calls != 1 {
		t.Errorf("reports %+v after %d calls", reports, s.calls)
	}
}

func TestStartupReportsSuccessOnce(t *testing.T) {
	p := &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 5}
	reports, s := runWorker(t, Startup, p, []bool{false, true}, nil, 1)
	if len(reports) != 1 || !reports[0].ok || s.calls != 2 {
		t.Errorf("reports %+v after %d calls", reports, s.calls)
	}
}

func TestReadinessWaitsForStarted(t *testing.T) {
	s := &scripted{results: []bool{true}}
	w := &Worker{Kind: Readiness, Probe: &corev1.Probe{PeriodSeconds: 1}, Check: s.check,
		Started: func() bool { return false }, Report: func(bool, string) { t.Error("reported before started") }}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	w.Run(ctx, time.Now())
	if s.calls != 0 {
		t.Errorf("probed %d times before the container started", s.calls)
	}
}

func TestInitialDelay(t *testing.T) {
	s := &scripted{results: []bool{true}}
	w := &Worker{Kind: Startup, Probe: &corev1.Probe{InitialDelaySeconds: 5, PeriodSeconds: 1}, Check: s.check,
		Report: func(bool, string) {}}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	w.Run(ctx, time.Now())
	if s.calls != 0 {
		t.Error("probed during the initial delay")
	}
}
