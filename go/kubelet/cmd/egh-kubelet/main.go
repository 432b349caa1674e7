// Command egh-kubelet is the harness kubelet: it registers the configured Nodes and runs every pod
// bound to them as processes in network and mount namespaces (see go/kubelet/README.md).
//
//	egh-kubelet --config FILE            run (stop with SIGTERM or SIGINT; SIGHUP re-reads the hosts file)
//	egh-kubelet --cleanup --config FILE  remove what a crashed run left (namespaces, processes, pod directories)
//	egh-kubelet --version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/istio-egress-harness/kubelet/internal/config"
	"github.com/istio-egress-harness/kubelet/internal/pods"
	"github.com/istio-egress-harness/kubelet/internal/probe"
	"github.com/istio-egress-harness/kubelet/internal/vklog"
	vkl "github.com/virtual-kubelet/virtual-kubelet/log"
	"k8s.io/klog/v2"
)

// version is set at build time (-X main.version=...).
var version = "dev"

func main() {
	klog.InitFlags(nil)
	configPath := flag.String("config", "", "the kubelet config file (JSON; see README.md)")
	cleanup := flag.Bool("cleanup", false, "remove the leftovers of a run of this config (network namespaces, container processes, mounts, pod directories) and exit")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	if err := run(*configPath, *cleanup); err != nil {
		klog.Flush()
		fmt.Fprintf(os.Stderr, "egh-kubelet: %v\n", err)
		os.Exit(1)
	}
	klog.Flush()
}

func run(configPath string, cleanup bool) error {
	if configPath == "" {
		return errors.New("--config FILE is required")
	}
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("egh-kubelet must run as root (it makes network namespaces and mounts)")
	}
	vkl.L = vklog.New()
	probe.UserAgent = userAgent(cfg.KubeletVersion)

	if cleanup {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := pods.Cleanup(ctx, cfg, pods.CleanupAll); err != nil {
			return fmt.Errorf("cleanup of %s: %w", cfg.Path, err)
		}
		klog.InfoS("Cleanup done", "config", cfg.Path)
		return nil
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	k, err := start(ctx, cfg)
	if err != nil {
		return err
	}
	for {
		select {
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				klog.InfoS("SIGHUP: re-reading the hosts file")
				k.manager.ReloadHosts()
				continue
			}
			klog.InfoS("Stopping", "signal", sig.String())
			k.stop(cancel)
			return nil
		case err := <-k.failed:
			klog.ErrorS(err, "A node controller stopped; shutting down")
			k.stop(cancel)
			return err
		}
	}
}

func userAgent(kubeletVersion string) string {
	var major, minor int
	if _, err := fmt.Sscanf(kubeletVersion, "v%d.%d", &major, &minor); err != nil {
		return probe.UserAgent
	}
	return fmt.Sprintf("kube-probe/%d.%d", major, minor)
}
