package config

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Image says how to run containers of one image (or of every image with a prefix): which host
// binary is its entrypoint, which host directories appear at which paths of its filesystem.
type Image struct {
	// Match is an exact image reference, or a prefix ending in "*".
	Match string `json:"match"`
	// Entrypoint and Cmd are the image's ENTRYPOINT and CMD: a container's command replaces the
	// entrypoint (and drops the cmd), its args replace the cmd.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Binds maps a path inside the container to a host path, bound read-only.
	Binds map[string]string `json:"binds,omitempty"`
	// WorkingDir is the image's WORKDIR (a container's workingDir overrides it).
	WorkingDir string `json:"workingDir,omitempty"`
	// Env is the image's ENV (the pod spec's env overrides it).
	Env map[string]string `json:"env,omitempty"`
	// User is the image's USER as "uid" or "uid:gid" (the securityContext overrides it).
	User string `json:"user,omitempty"`
}

func (img Image) validate() error {
	if img.Match == "" || img.Match == "*" {
		return fmt.Errorf(`"match" must be an image reference or a prefix ending in "*", not %q`, img.Match)
	}
	if strings.Contains(strings.TrimSuffix(img.Match, "*"), "*") {
		return fmt.Errorf(`image %q: "*" is allowed only at the end of "match"`, img.Match)
	}
	for dst, src := range img.Binds {
		if !filepath.IsAbs(dst) || filepath.Clean(dst) == "/" {
			return fmt.Errorf("image %q: bind target %q must be an absolute path other than /", img.Match, dst)
		}
		if !filepath.IsAbs(src) {
			return fmt.Errorf("image %q: bind source %q (for %s) must be an absolute host path", img.Match, src, dst)
		}
	}
	if img.WorkingDir != "" && !filepath.IsAbs(img.WorkingDir) {
		return fmt.Errorf("image %q: workingDir %q must be absolute", img.Match, img.WorkingDir)
	}
	if img.User != "" {
		if _, _, err := img.UserIDs(); err != nil {
			return fmt.Errorf("image %q: %w", img.Match, err)
		}
	}
	return nil
}

// UserIDs parses User ("uid" or "uid:gid"); gid is -1 when not given.
func (img Image) UserIDs() (uid, gid int64, err error) {
	if img.User == "" {
		return 0, -1, nil
	}
	u, g, hasGID := strings.Cut(img.User, ":")
	uid, err = strconv.ParseInt(u, 10, 64)
	if err != nil || uid < 0 {
		return 0, 0, fmt.Errorf("user %q: the uid must be a number", img.User)
	}
	gid = -1
	if hasGID {
		gid, err = strconv.ParseInt(g, 10, 64)
		if err != nil || gid < 0 {
			return 0, 0, fmt.Errorf("user %q: the gid must be a number", img.User)
		}
	}
	return uid, gid, nil
}

// BindTargets returns the bind targets in a stable order (parents before children).
func (img Image) BindTargets() []string {
	targets := make([]string, 0, len(img.Binds))
	for dst := range img.Binds {
		targets = append(targets, dst)
	}
	sort.Slice(targets, func(i, j int) bool {
		di, dj := strings.Count(filepath.Clean(targets[i]), "/"), strings.Count(filepath.Clean(targets[j]), "/")
		if di != dj {
			return di < dj
		}
		return targets[i] < targets[j]
	})
	return targets
}

// ImageNotMappedError says that no entry of the image map matches an image.
type ImageNotMappedError struct {
	Image      string
	ConfigPath string
}

// Reason is the container's waiting reason for this error.
const ReasonImageNotMapped = "ImageNotMapped"

func (e *ImageNotMappedError) Error() string {
	where := "the kubelet config"
	if e.ConfigPath != "" {
		where = e.ConfigPath
	}
	return fmt.Sprintf("image %q is not in the image map of %s: add an \"images\" entry whose \"match\" is %q "+
		"(or a prefix of it ending in \"*\") naming its entrypoint and binds; the harness kubelet never pulls images",
		e.Image, where, e.Image)
}

// MatchImage returns the image map entry for ref: an exact match wins, else the longest prefix.
func (c *Config) MatchImage(ref string) (*Image, error) {
	var best *Image
	bestLen := -1
	for i := range c.Images {
		img := &c.Images[i]
		if img.Match == ref {
			return img, nil
		}
		if prefix, ok := strings.CutSuffix(img.Match, "*"); ok && strings.HasPrefix(ref, prefix) && len(prefix) > bestLen {
			best, bestLen = img, len(prefix)
		}
	}
	if best == nil {
		return nil, &ImageNotMappedError{Image: ref, ConfigPath: c.Path}
	}
	return best, nil
}

// Argv is the process a container runs, with Kubernetes' rules: the container's command replaces
// the image's entrypoint (and then the image's cmd is not used), its args replace the image's cmd.
func (img Image) Argv(command, args []string) []string {
	var argv []string
	switch {
	case len(command) > 0:
		argv = append(argv, command...)
		argv = append(argv, args...)
	case len(args) > 0:
		argv = append(argv, img.Entrypoint...)
		argv = append(argv, args...)
	default:
		argv = append(argv, img.Entrypoint...)
		argv = append(argv, img.Cmd...)
	}
	return argv
}
