"""A Kubernetes API server stand-in for tests (see apiserver.py)."""

from tests.kube.apiserver import KubeApiServer, ResourceType

__all__ = ["KubeApiServer", "ResourceType"]
