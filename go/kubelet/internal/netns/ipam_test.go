package netns

import (
	"net/netip"
	"testing"
)

func TestIPAM(t *testing.T) {
	a := NewIPAM(netip.MustParsePrefix("10.244.1.0/29"), netip.MustParseAddr("10.244.1.1"))
	var got []string
	for i := range 5 {
		ip, err := a.Allocate(string(rune('a'+i)), "")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ip.String())
	}
	// .0 network, .1 node, .7 broadcast are never given.
	want := []string{"10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocations %v, want %v", got, want)
		}
	}
	if _, err := a.Allocate("f", ""); err == nil {
		t.Fatal("a full range must fail")
	}
	// The same owner gets its address again.
	if ip, _ := a.Allocate("c", ""); ip.String() != "10.244.1.4" {
		t.Errorf("owner c got %s again", ip)
	}
	// Released addresses are reused only after the cursor wraps.
	a.Release("b", netip.MustParseAddr("10.244.1.3"))
	a.Release("a", netip.MustParseAddr("10.244.1.2"))
	ip, err := a.Allocate("g", "")
	if err != nil || ip.String() != "10.244.1.2" {
		t.Errorf("after wrap: %s %v", ip, err)
	}
	// A preferred free address is honoured; one out of range or taken is not.
	a.Release("d", netip.MustParseAddr("10.244.1.5"))
	if ip, _ := a.Allocate("h", "10.244.1.5"); ip.String() != "10.244.1.5" {
		t.Errorf("preferred: %s", ip)
	}
	if ip, _ := a.Allocate("i", "10.244.1.1"); ip.String() == "10.244.1.1" {
		t.Error("the node IP must never be handed out")
	}
}

func TestBroadcast(t *testing.T) {
	if b := broadcast(netip.MustParsePrefix("10.244.0.0/24")); b.String() != "10.244.0.255" {
		t.Errorf("broadcast = %s", b)
	}
}

func TestNames(t *testing.T) {
	ns, veth := Names("egh-r1-", "istio-system", "istiod-5f9c", "3b0c5a1e-2d4f-4c3b-9a8e-0f1d2c3b4a59")
	if len(veth) > 15 || veth[0] != 'v' {
		t.Errorf("veth %q", veth)
	}
	if want := "egh-r1-pod-istio-system.istiod-5f9c-" + veth[1:]; ns != want {
		t.Errorf("netns %q, want %q", ns, want)
	}
}

func TestSysctlPath(t *testing.T) {
	if p := SysctlPath("net.ipv4.ip_unprivileged_port_start"); p != "/proc/sys/net/ipv4/ip_unprivileged_port_start" {
		t.Errorf("got %s", p)
	}
	if p := SysctlPath("net/ipv4/conf/eth0.100/forwarding"); p != "/proc/sys/net/ipv4/conf/eth0.100/forwarding" {
		t.Errorf("got %s", p)
	}
}
