"""istio-egress-harness: prove that an Istio mesh sends external traffic through its egress gateway."""

__version__ = "0.1.0"
