"""xdsd: a lightweight xDS control plane for Envoy with Istio-style config."""

__version__ = "0.1.0"
