package crilog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// OutFormat is the timestamp format of served lines with timestamps=true (the kubelet's
// fixed-width RFC 3339 with nanoseconds).
const OutFormat = "2006-01-02T15:04:05.000000000Z07:00"

// Options are the kubelet API's log options.
type Options struct {
	Tail       int // last N records; < 0: all
	LimitBytes int // stop after this many bytes; 0: no limit
	Timestamps bool
	Since      time.Time // records stamped before are skipped; zero: none
	Follow     bool
}

// Record is one parsed log line.
type Record struct {
	Time   time.Time
	Stream string
	Final  bool // "F": the record ends a line; "P": a partial line continues in the next record
	Text   []byte
}

// Parse parses one CRI log line (without its newline).
func Parse(line []byte) (Record, error) {
	fields := bytes.SplitN(line, []byte(" "), 4)
	if len(fields) < 3 {
		return Record{}, fmt.Errorf("not a CRI log line: %q", line)
	}
	ts, err := time.Parse(time.RFC3339Nano, string(fields[0]))
	if err != nil {
		return Record{}, fmt.Errorf("bad timestamp in CRI log line %q: %w", line, err)
	}
	r := Record{Time: ts, Stream: string(fields[1]), Final: string(fields[2]) != "P"}
	if len(fields) == 4 {
		r.Text = fields[3]
	}
	return r, nil
}

// tailOffset is the offset of the start of the last n lines of f (0 when there are fewer).
func tailOffset(f *os.File, n int) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if n < 0 {
		return 0, nil
	}
	const block = 8192
	buf := make([]byte, block)
	seen := 0
	end := size
	for end > 0 {
		start := max(end-block, 0)
		chunk := buf[:end-start]
		if _, err := f.ReadAt(chunk, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] != '\n' || start+int64(i) == size-1 {
				continue // the file's final newline ends the last line, it does not start one
			}
			seen++
			if seen == n {
				return start + int64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}

// limitWriter stops after n bytes with errLimit.
type limitWriter struct {
	w io.Writer
	n int // < 0: unlimited
}

var errLimit = errors.New("limitBytes reached")

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n < 0 {
		return l.w.Write(p)
	}
	if l.n == 0 {
		return 0, errLimit
	}
	cut := len(p) > l.n
	if cut {
		p = p[:l.n]
	}
	n, err := l.w.Write(p)
	l.n -= n
	if err == nil && cut {
		err = errLimit
	}
	return n, err
}

// Live is the log writer of a running container, for follow; nil for a finished one.
type Live interface {
	Watch() (<-chan struct{}, bool)
}

// Copy writes the log at path to out with opts. With opts.Follow and a live writer it keeps
// copying new records until the writer closes (the container ended) or ctx ends.
func Copy(ctx context.Context, out io.Writer, path string, opts Options, live Live) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	off, err := tailOffset(f, opts.Tail)
	if err != nil {
		return err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	lw := &limitWriter{w: out, n: -1}
	if opts.LimitBytes > 0 {
		lw.n = opts.LimitBytes
	}
	br := bufio.NewReader(f)
	var pending []byte
	for {
		// Take the watch channel before reading, so a record written after the read wakes us.
		var changed <-chan struct{}
		closed := true
		if opts.Follow && live != nil {
			changed, closed = live.Watch()
		}
		for {
			chunk, err := br.ReadBytes('\n')
			if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
				line := append(pending, chunk[:len(chunk)-1]...)
				pending = nil
				if werr := emit(lw, line, opts); werr != nil {
					if errors.Is(werr, errLimit) {
						return nil
					}
					return werr
				}
				continue
			}
			pending = append(pending, chunk...) // a record still being written
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			break
		}
		if !opts.Follow || live == nil || closed {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func emit(w io.Writer, line []byte, opts Options) error {
	if len(line) == 0 {
		return nil
	}
	r, err := Parse(line)
	if err != nil {
		return nil // a damaged line is skipped, as the kubelet does
	}
	if !opts.Since.IsZero() && r.Time.Before(opts.Since) {
		return nil
	}
	var buf []byte
	if opts.Timestamps {
		buf = r.Time.UTC().AppendFormat(buf, OutFormat)
		buf = append(buf, ' ')
	}
	buf = append(buf, r.Text...)
	if r.Final {
		buf = append(buf, '\n')
	}
	_, err = w.Write(buf)
	if f, ok := w.(interface{ Flush() }); ok {
		f.Flush()
	}
	return err
}
