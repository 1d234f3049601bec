"""istiod's webhooks on 15017: sidecar injection (`/inject`) and config validation (`/validate`).

- `config.py`: the injector's configuration from Istio's `istio-sidecar-injector`
  ConfigMap (`config` and `values`), with what is not honoured reported;
- `inject.py`: the injected pod (a built-in sidecar template in Python, fed with
  the same values as Istio's) and the JSONPatch from the pod to it;
- `admission.py`: AdmissionReview in and out, Istio's answers to bad input;
- `server.py`: the HTTPS server (aiohttp) and its metrics.

Pure except `server.py`; reads the model (snapshots), never Envoy protos.
"""
