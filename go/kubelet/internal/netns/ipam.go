// Package netns builds and removes pod network namespaces: the IP allocator, the veth and routes,
// sysctls, and entering a namespace from a locked OS thread.
package netns

import (
	"fmt"
	"net/netip"
	"sync"
)

// IPAM hands out /32 pod addresses from one node's pod CIDR. It never hands out the network or
// broadcast address or the node's own IP, and it continues after the last address it gave (like
// CNI's host-local) so that a deleted pod's address is not reused at once while istiod or
// kube-proxy may still hold it.
type IPAM struct {
	mu     sync.Mutex
	prefix netip.Prefix
	node   netip.Addr
	used   map[netip.Addr]string // address -> owner (pod UID)
	last   netip.Addr
}

// NewIPAM returns an allocator over prefix that skips node.
func NewIPAM(prefix netip.Prefix, node netip.Addr) *IPAM {
	prefix = prefix.Masked()
	return &IPAM{prefix: prefix, node: node, used: map[netip.Addr]string{}, last: prefix.Addr()}
}

func (a *IPAM) usable(ip netip.Addr) bool {
	if !a.prefix.Contains(ip) || ip == a.node || ip == a.prefix.Addr() || ip == broadcast(a.prefix) {
		return false
	}
	_, taken := a.used[ip]
	return !taken
}

// Allocate returns a free address for owner. preferred (e.g. the pod's status.podIP from before
// a kubelet restart) is taken when it is in range and free.
func (a *IPAM) Allocate(owner string, preferred string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, o := range a.used {
		if o == owner {
			return ip, nil
		}
	}
	if p, err := netip.ParseAddr(preferred); err == nil && a.usable(p) {
		a.used[p] = owner
		return p, nil
	}
	ip := a.last
	for range size(a.prefix) {
		ip = ip.Next()
		if !a.prefix.Contains(ip) {
			ip = a.prefix.Addr()
			continue
		}
		if a.usable(ip) {
			a.used[ip] = owner
			a.last = ip
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free pod address left in %s (%d in use)", a.prefix, len(a.used))
}

// Release frees ip if owner holds it.
func (a *IPAM) Release(owner string, ip netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.used[ip] == owner {
		delete(a.used, ip)
	}
}

func size(p netip.Prefix) int {
	return 1 << (32 - p.Bits())
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
