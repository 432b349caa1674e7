package volumes

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// File is one file of a volume's payload.
type File struct {
	Data []byte
	Mode os.FileMode
}

// WriteAtomic publishes payload (relative path -> file) into dir the way the kubelet's atomic
// writer does: the files go into a fresh "..<timestamp>" directory, "..data" is switched to it with
// a rename, and each top-level name is a symlink through "..data". A reader never sees half a
// payload, and a later update reaches containers that mounted dir (not those that mounted a
// subPath, as in Kubernetes). An unchanged payload is not rewritten. gid >= 0 chowns the files
// to that group (fsGroup).
func WriteAtomic(dir string, payload map[string]File, gid int64) (changed bool, err error) {
	for p := range payload {
		if err := checkPayloadPath(p); err != nil {
			return false, fmt.Errorf("volume %s: %w", dir, err)
		}
	}
	if same(dir, payload) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	tsDir, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05.")+"")
	if err != nil {
		return false, err
	}
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return false, err
	}
	for p, f := range payload {
		full := filepath.Join(tsDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return false, err
		}
		if err := os.WriteFile(full, f.Data, f.Mode); err != nil {
			return false, err
		}
		if err := os.Chmod(full, f.Mode); err != nil { // WriteFile's mode is cut by the umask
			return false, err
		}
	}
	if gid >= 0 {
		if err := chownTree(tsDir, int(gid)); err != nil {
			return false, err
		}
	}
	// Switch ..data to the new directory atomically.
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(tsDir), tmpLink); err != nil {
		return false, err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
		return false, err
	}
	// Top-level symlinks for the new payload; remove those of names that went away.
	tops := topLevel(payload)
	for name := range tops {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return false, err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") {
			if n != "..data" && n != filepath.Base(tsDir) {
				_ = os.RemoveAll(filepath.Join(dir, n)) // the previous payload
			}
			continue
		}
		if !tops[n] {
			_ = os.RemoveAll(filepath.Join(dir, n))
		}
	}
	return true, nil
}

func checkPayloadPath(p string) error {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "..") || strings.Contains(p, "/../") || filepath.Clean(p) != p {
		return fmt.Errorf("file path %q is not a clean relative path", p)
	}
	return nil
}

func topLevel(payload map[string]File) map[string]bool {
	tops := map[string]bool{}
	for p := range payload {
		top, _, _ := strings.Cut(p, "/")
		tops[top] = true
	}
	return tops
}

// same reports whether dir already publishes exactly payload.
func same(dir string, payload map[string]File) bool {
	data := filepath.Join(dir, "..data")
	if _, err := os.Stat(data); err != nil {
		return false
	}
	var found []string
	err := filepath.Walk(data+"/", func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(data+"/", path)
		found = append(found, rel)
		return nil
	})
	if err != nil || len(found) != len(payload) {
		return false
	}
	sort.Strings(found)
	for _, rel := range found {
		f, ok := payload[rel]
		if !ok {
			return false
		}
		full := filepath.Join(data, rel)
		st, err := os.Stat(full)
		if err != nil || st.Mode().Perm() != f.Mode.Perm() {
			return false
		}
		old, err := os.ReadFile(full)
		if err != nil || !bytes.Equal(old, f.Data) {
			return false
		}
	}
	return true
}

func chownTree(root string, gid int) error {
	return filepath.Walk(root, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, -1, gid)
	})
}
