// Package crilog writes container output in the CRI log format the kubelet reads
// ("<RFC3339Nano> stdout|stderr F|P <text>"), and serves it back with the kubelet API's log options
// (tailLines, sinceSeconds/sinceTime, timestamps, limitBytes, follow).
package crilog

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// MaxLine is the longest line written whole; a longer one is split into "P" (partial) records
// ending with an "F" record, as CRI runtimes do.
const MaxLine = 16 * 1024

// TimeFormat is how each record is stamped (CRI runtimes write RFC 3339 with nanoseconds).
const TimeFormat = time.RFC3339Nano

// Writer appends one container run's output to its log file.
type Writer struct {
	mu      sync.Mutex
	f       *os.File
	closed  bool
	changed chan struct{}
	recent  []string
	now     func() time.Time
}

// keepRecent lines are kept in memory for a terminated container's message.
const keepRecent = 20

// Create creates the log file at path (and its directory).
func Create(path string) (*Writer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &Writer{f: f, changed: make(chan struct{}), now: time.Now}, nil
}

// Pump copies r (one stream, "stdout" or "stderr") into the log until r ends.
func (w *Writer) Pump(stream string, r io.Reader) {
	br := bufio.NewReaderSize(r, MaxLine)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			w.record(stream, "F", line[:len(line)-1])
		case errors.Is(err, bufio.ErrBufferFull):
			w.record(stream, "P", line)
		default:
			if len(line) > 0 {
				w.record(stream, "F", line)
			}
			return
		}
	}
}

// Line appends one full line (used for the kubelet's own notes, e.g. a setup failure).
func (w *Writer) Line(stream, text string) { w.record(stream, "F", []byte(text)) }

func (w *Writer) record(stream, tag string, text []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	buf := make([]byte, 0, len(text)+64)
	buf = w.now().UTC().AppendFormat(buf, TimeFormat)
	buf = append(buf, ' ')
	buf = append(buf, stream...)
	buf = append(buf, ' ')
	buf = append(buf, tag...)
	buf = append(buf, ' ')
	buf = append(buf, text...)
	buf = append(buf, '\n')
	_, _ = w.f.Write(buf) // one write per record: readers never see records interleaved
	if tag == "F" {
		w.recent = append(w.recent, string(text))
		if len(w.recent) > keepRecent {
			w.recent = w.recent[len(w.recent)-keepRecent:]
		}
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// Close ends the log (after the process and its pumps ended); followers stop at its end.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	close(w.changed)
	return w.f.Close()
}

// Watch returns a channel closed at the next record or at Close, and whether the log is closed.
func (w *Writer) Watch() (<-chan struct{}, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed, w.closed
}

// Recent returns up to n of the last full lines written.
func (w *Writer) Recent(n int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n > len(w.recent) {
		n = len(w.recent)
	}
	return append([]string(nil), w.recent[len(w.recent)-n:]...)
}
