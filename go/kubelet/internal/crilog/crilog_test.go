package crilog

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestWriter(t *testing.T) (*Writer, string, *time.Time) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "logs", "c", "0.log")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	w.now = func() time.Time { now = now.Add(time.Second); return now }
	return w, path, &now
}

func TestWriterFormat(t *testing.T) {
	w, path, _ := newTestWriter(t)
	w.Pump("stdout", strings.NewReader("one\ntwo\npartial-at-eof"))
	w.Pump("stderr", strings.NewReader(strings.Repeat("x", MaxLine+10)+"\n"))
	w.Close()
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	want := []string{
		"2026-01-02T03:04:06Z stdout F one",
		"2026-01-02T03:04:07Z stdout F two",
		"2026-01-02T03:04:08Z stdout F partial-at-eof",
		"2026-01-02T03:04:09Z stderr P " + strings.Repeat("x", MaxLine),
		"2026-01-02T03:04:10Z stderr F xxxxxxxxxx",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d", len(lines), len(want))
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d = %.80q, want %.80q", i, lines[i], want[i])
		}
	}
	if r := w.Recent(2); len(r) != 2 || r[1] != "xxxxxxxxxx" {
		t.Errorf("Recent = %v", r)
	}
}

func read(t *testing.T, path string, o Options) string {
	t.Helper()
	var b bytes.Buffer
	if err := Copy(context.Background(), &b, path, o, nil); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestCopyOptions(t *testing.T) {
	w, path, _ := newTestWriter(t)
	w.Pump("stdout", strings.NewReader("l1\nl2\nl3\nl4\n"))
	w.Close()
	if got := read(t, path, Options{Tail: -1}); got != "l1\nl2\nl3\nl4\n" {
		t.Errorf("all: %q", got)
	}
	if got := read(t, path, Options{Tail: 2}); got != "l3\nl4\n" {
		t.Errorf("tail 2: %q", got)
	}
	if got := read(t, path, Options{Tail: 10}); got != "l1\nl2\nl3\nl4\n" {
		t.Errorf("tail 10: %q", got)
	}
	if got := read(t, path, Options{Tail: -1, Timestamps: true}); !strings.HasPrefix(got, "2026-01-02T03:04:06.000000000Z l1\n") {
		t.Errorf("timestamps: %q", got)
	}
	since := time.Date(2026, 1, 2, 3, 4, 8, 0, time.UTC) // l3 is stamped 03:04:08
	if got := read(t, path, Options{Tail: -1, Since: since}); got != "l3\nl4\n" {
		t.Errorf("since: %q", got)
	}
	if got := read(t, path, Options{Tail: -1, LimitBytes: 4}); got != "l1\nl" {
		t.Errorf("limitBytes: %q", got)
	}
}

func TestCopyJoinsPartialRecords(t *testing.T) {
	w, path, _ := newTestWriter(t)
	long := strings.Repeat("y", MaxLine+5)
	w.Pump("stdout", strings.NewReader(long+"\nnext\n"))
	w.Close()
	if got := read(t, path, Options{Tail: -1}); got != long+"\nnext\n" {
		t.Errorf("partial records not joined (len %d)", len(got))
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFollowEndsWhenTheWriterCloses(t *testing.T) {
	w, path, _ := newTestWriter(t)
	w.Line("stdout", "before")
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- Copy(context.Background(), out, path, Options{Tail: -1, Follow: true}, w) }()

	pr, pw := io.Pipe()
	go w.Pump("stdout", pr)
	_, _ = pw.Write([]byte("during\n"))
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "during") {
		if time.Now().After(deadline) {
			t.Fatalf("follow did not deliver the new line: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	pw.Close()
	w.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end after the writer closed")
	}
	if got := out.String(); got != "before\nduring\n" {
		t.Errorf("followed %q", got)
	}
}

func TestFollowEndsWithContext(t *testing.T) {
	w, path, _ := newTestWriter(t)
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Copy(ctx, io.Discard, path, Options{Tail: -1, Follow: true}, w) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("follow ignored the cancelled context")
	}
}

func TestParse(t *testing.T) {
	r, err := Parse([]byte("2026-01-02T03:04:05.123456789Z stderr P some text"))
	if err != nil || r.Stream != "stderr" || r.Final || string(r.Text) != "some text" || r.Time.Nanosecond() != 123456789 {
		t.Errorf("Parse: %+v %v", r, err)
	}
	if _, err := Parse([]byte("garbage")); err == nil {
		t.Error("garbage parsed")
	}
}
