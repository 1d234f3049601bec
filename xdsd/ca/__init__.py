"""Istio's CA: signing workload CSRs with the caller's identity, served over gRPC.

- `authority.CertificateAuthority`: a CA from a certificate and key (root or
  intermediate with its chain); `sign_csr(csr, identities, ttl)`.
  `ensure_dev_certs(dir)`: a self-signed development CA and serving certificate.
- `identity`: SPIFFE identities, Kubernetes service-account user names, and
  `IstioAuthorizer` (istiod's rule for xDS streams).
- `proto`: the `istio.v1.auth` messages (protos/istio_ca.proto), built at runtime.
- `service.CertificateService`: `IstioCertificateService/CreateCertificate`.
"""
