// Package vklog routes virtual-kubelet's logging to klog, one line per message: errors are
// printed with %v (virtual-kubelet wraps them with github.com/pkg/errors, whose %+v is a stack
// trace per line and would bury the kubelet's own lifecycle lines).
package vklog

import (
	"fmt"
	"sort"
	"strings"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	"k8s.io/klog/v2"
)

// Logger is a log.Logger over klog.
type Logger struct {
	fields log.Fields
}

// New returns a Logger without fields.
func New() *Logger { return &Logger{fields: log.Fields{}} }

func (l *Logger) suffix() string {
	if len(l.fields) == 0 {
		return ""
	}
	keys := make([]string, 0, len(l.fields))
	for k := range l.fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		v := l.fields[k]
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		parts[i] = fmt.Sprintf("%s=%v", k, v)
	}
	return " [" + strings.Join(parts, " ") + "]"
}

func (l *Logger) msg(args ...any) string {
	return strings.TrimSuffix(fmt.Sprint(args...), "\n") + l.suffix()
}

func (l *Logger) msgf(format string, args ...any) string {
	return fmt.Sprintf(format, args...) + l.suffix()
}

// Debug logs at verbosity 4.
func (l *Logger) Debug(args ...any) {
	if klog.V(4).Enabled() {
		klog.InfoDepth(1, l.msg(args...))
	}
}

// Debugf logs at verbosity 4.
func (l *Logger) Debugf(format string, args ...any) {
	if klog.V(4).Enabled() {
		klog.InfoDepth(1, l.msgf(format, args...))
	}
}

// Info logs at verbosity 2: virtual-kubelet's routine lines (every pod sync, every event).
func (l *Logger) Info(args ...any) {
	if klog.V(2).Enabled() {
		klog.InfoDepth(1, l.msg(args...))
	}
}

// Infof logs at verbosity 2.
func (l *Logger) Infof(format string, args ...any) {
	if klog.V(2).Enabled() {
		klog.InfoDepth(1, l.msgf(format, args...))
	}
}

// Warn logs a warning.
func (l *Logger) Warn(args ...any) { klog.WarningDepth(1, l.msg(args...)) }

// Warnf logs a warning.
func (l *Logger) Warnf(format string, args ...any) { klog.WarningDepth(1, l.msgf(format, args...)) }

// Error logs an error.
func (l *Logger) Error(args ...any) { klog.ErrorDepth(1, l.msg(args...)) }

// Errorf logs an error.
func (l *Logger) Errorf(format string, args ...any) { klog.ErrorDepth(1, l.msgf(format, args...)) }

// Fatal logs and exits.
func (l *Logger) Fatal(args ...any) { klog.FatalDepth(1, l.msg(args...)) }

// Fatalf logs and exits.
func (l *Logger) Fatalf(format string, args ...any) { klog.FatalDepth(1, l.msgf(format, args...)) }

// WithField returns a logger with one more field.
func (l *Logger) WithField(key string, val any) log.Logger {
	return l.WithFields(log.Fields{key: val})
}

// WithFields returns a logger with more fields.
func (l *Logger) WithFields(fields log.Fields) log.Logger {
	f := make(log.Fields, len(l.fields)+len(fields))
	for k, v := range l.fields {
		f[k] = v
	}
	for k, v := range fields {
		f[k] = v
	}
	return &Logger{fields: f}
}

// WithError returns a logger that adds err (its message only).
func (l *Logger) WithError(err error) log.Logger {
	if err == nil {
		return l
	}
	return l.WithField("err", err.Error())
}
