"""Traffic conformance suite: Istio's traffic-management tasks through real Envoy."""
