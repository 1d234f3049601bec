"""Command line: `xdsd serve | bootstrap | translate | demo`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from xdsd import __version__
from xdsd.translate.bootstrap import ISTIO_SDS_SOCKET


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line for log collectors (default: text)",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"xdsd: --metadata is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit("xdsd: --metadata must be a JSON object")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdsd",
        description="A lightweight xDS control plane for Envoy, with Istio-style config.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"xdsd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve xDS from a folder of YAML config or from Kubernetes clusters",
    )
    serve.add_argument("--config-dir", type=Path, help="folder of *.yaml to serve")
    serve.add_argument("--xds-host", default="127.0.0.1", help="xDS listen address (127.0.0.1)")
    serve.add_argument(
        "--xds-port",
        type=int,
        help="xDS gRPC port: TLS (15012) with a TLS certificate or --dev-certs, "
        "else plaintext (15010) for a lab",
    )
    serve.add_argument(
        "--admin-host", default="127.0.0.1", help="admin/debug listen address (127.0.0.1)"
    )
    serve.add_argument(
        "--admin-port", type=int, default=15014, help="admin HTTP port (15014; -1: off)"
    )
    serve.add_argument(
        "--remote-debug",
        action="store_true",
        help="serve /debug/* to non-loopback clients (it lists every proxy and service)",
    )
    serve.add_argument(
        "--peer-admin",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="admin address of another replica (repeatable; a name counts for each of its "
        "addresses, e.g. a headless Service): istio.io/debug/syncz (istioctl proxy-status) "
        "then lists its proxies too; the peers need --remote-debug (default: none)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes serving xDS on the same ports (SO_REUSEPORT); the config "
        "sources run once, in the serve process (1: one process; set it to the CPU limit)",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between scans of --config-dir when file events are unavailable (a "
        "missing folder, no inotify watches left, WATCHFILES_FORCE_POLLING set); with events "
        "it only caps their batching (at most 0.1 s). Also --remote-secrets-dir's poll (0.5)",
    )
    serve.add_argument(
        "--debounce-quiet",
        type=float,
        default=0.1,
        help="seconds without changes before a push (0.1)",
    )
    serve.add_argument(
        "--debounce-quiet-endpoints",
        type=float,
        default=0.02,
        metavar="S",
        help="the quiet period while only endpoints changed, seconds (0.02, at most "
        "--debounce-quiet; 0.1 debounces them like istiod)",
    )
    serve.add_argument(
        "--debounce-max", type=float, default=10.0, help="longest a push waits, seconds (10)"
    )
    serve.add_argument(
        "--push-concurrency",
        type=int,
        default=100,
        help="responses written at once over all streams (100, as istiod's push throttle)",
    )
    serve.add_argument(
        "--gc-collect-interval",
        type=float,
        default=300.0,
        metavar="S",
        help="the loaded heap is frozen so GC passes skip it; every S seconds, after a "
        "push or else on a timer, all of it is collected once (cyclic garbage); 0: never (300)",
    )
    serve.add_argument(
        "--jwks-refresh-interval",
        type=float,
        default=1200.0,
        metavar="S",
        help="RequestAuthentication jwksUri key sets are fetched by xdsd and inlined; each is "
        "fetched again every S seconds (a failed fetch is retried sooner) (1200, as istiod)",
    )
    serve.add_argument(
        "--jwks-blocked-cidrs",
        default="",
        metavar="CIDR,...",
        help="jwksUri hosts in these ranges are not fetched (as istiod's "
        "BLOCKED_CIDRS_IN_JWKS_URIS); link-local and cloud metadata addresses never are",
    )
    kube = serve.add_argument_group(
        "Kubernetes", "read config from a config cluster instead of --config-dir"
    )
    kube.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="the config cluster's kubeconfig (default: $KUBECONFIG without --config-dir)",
    )
    kube.add_argument(
        "--in-cluster", action="store_true", help="the config cluster is the one xdsd runs in"
    )
    kube.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        dest="namespaces",
        help="watch only this namespace (repeatable; default: all)",
    )
    kube.add_argument(
        "--own-namespace",
        default="istio-system",
        help="namespace of the istio/multiCluster=true remote secrets (istio-system)",
    )
    kube.add_argument(
        "--remote-secrets-dir",
        type=Path,
        metavar="DIR",
        help="remote clusters from kubeconfig files (name = cluster id) instead of Secrets",
    )
    kube.add_argument(
        "--cluster-id", default="Kubernetes", help="the config cluster's id (Kubernetes)"
    )
    kube.add_argument(
        "--revision",
        metavar="REV",
        help="this control plane's istio.io/rev: Istio config and remote secrets labelled "
        "for another revision are not read; root certs only in namespaces of this revision "
        "(default: none, everything)",
    )
    kube.add_argument(
        "--remote-sync-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="readiness waits at most this long for a remote cluster's first sync (30)",
    )
    kube.add_argument(
        "--write-status",
        action="store_true",
        help="write each Istio config object's validation result into its status",
    )
    _add_security_args(serve)
    _add_webhook_args(serve)
    _add_log_level(serve)

    boot = sub.add_parser(
        "bootstrap", allow_abbrev=False, help="print an Envoy bootstrap that connects to xdsd"
    )
    boot.add_argument("--node-id", required=True, help="TYPE~IP~POD.NS~NS.svc.cluster.local")
    boot.add_argument("--metadata", help="node metadata as a JSON object")
    boot.add_argument(
        "--xds-address", default="127.0.0.1:15010", help="HOST:PORT of xdsd (127.0.0.1:15010)"
    )
    boot.add_argument("--delta", action="store_true", help="use Delta ADS (istio-proxy default)")
    boot.add_argument("--admin-port", type=int, default=15000, help="Envoy admin port (15000)")
    boot.add_argument(
        "--sds-socket",
        default=ISTIO_SDS_SOCKET,
        metavar="PATH",
        help="unix socket of the local agent's SDS (cluster sds-grpc, for ISTIO_MUTUAL), "
        "relative to Envoy's working directory; '' leaves it out "
        f"(default: {ISTIO_SDS_SOCKET}, Istio's)",
    )
    boot.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="a service-account token (JWT) sent as 'authorization: Bearer' to xdsd",
    )
    boot.add_argument(
        "--xds-ca-file",
        metavar="PATH",
        help="connect to xdsd over TLS, trusting this CA bundle (path as Envoy sees it)",
    )
    boot.add_argument("--xds-server-name", help="TLS server name (SNI) of xdsd")
    boot.add_argument("--cluster-id", help="the proxy's cluster (sent as the clusterid header)")
    boot.add_argument(
        "--output-file", type=Path, metavar="PATH", help="write to this file instead of stdout"
    )

    tr = sub.add_parser(
        "translate", allow_abbrev=False, help="print the resources a proxy would get, no server"
    )
    tr.add_argument("--config-dir", type=Path, help="config folder (not with --diff)")
    tr.add_argument("--node-id", required=True)
    tr.add_argument("--metadata", help="node metadata as a JSON object")
    tr.add_argument(
        "--fetch-jwks",
        action="store_true",
        help="fetch RequestAuthentication jwksUri key sets and inline them, as serve does "
        "(without: a key set no token matches)",
    )
    _add_log_level(tr)

    tr.add_argument(
        "--diff",
        nargs=2,
        metavar=("OLD_DIR", "NEW_DIR"),
        type=Path,
        help="show which resources change for the proxy between two config folders",
    )

    val = sub.add_parser(
        "validate",
        allow_abbrev=False,
        help="check config files/folders; exit 1 on errors (2: a path does not exist)",
    )
    val.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    val.add_argument("--quiet", action="store_true", help="print errors only, not warnings")
    val.add_argument(
        "--fetch-jwks",
        action="store_true",
        help="fetch each RequestAuthentication jwksUri once; one that fails is a warning",
    )

    st = sub.add_parser(
        "status",
        allow_abbrev=False,
        help="sync status of every proxy (like istioctl proxy-status)",
    )
    st.add_argument(
        "--xds-address", default="127.0.0.1:15010", help="HOST:PORT of xdsd (127.0.0.1:15010)"
    )
    st.add_argument(
        "--xds-ca-file",
        type=Path,
        metavar="PATH",
        help="connect over TLS (xdsd's 15012), trusting this CA bundle (with --dev-certs DIR: "
        "DIR/root-cert.pem)",
    )
    st.add_argument("--xds-server-name", help="TLS server name to expect (default: the host)")
    st.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="a service-account token (JWT) sent as 'authorization: Bearer' (TLS servers "
        "that authenticate), of --namespace",
    )
    st.add_argument(
        "--namespace",
        default="istio-system",
        metavar="NS",
        help="the token's namespace, sent as the client's, as istioctl does (the root "
        "namespace sees every proxy, another only its own; default: istio-system)",
    )
    st.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the answer (10)"
    )
    st.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help="format (table)"
    )

    demo = sub.add_parser(
        "demo", allow_abbrev=False, help="xdsd + backends + a real Envoy, on loopback"
    )
    demo.add_argument("--config-dir", type=Path, help="config to serve (default: bundled example)")
    demo.add_argument("--requests", type=int, default=6, help="requests to send at start (6)")
    demo.add_argument("--once", action="store_true", help="exit after the demo requests")
    _add_log_level(demo)
    return parser


def _worker_parser() -> argparse.ArgumentParser:
    """`xdsd _worker`: a worker process of `serve --workers N`, started by the supervisor.
    Parsed apart from the public commands so it shows in no usage or error message."""
    worker = argparse.ArgumentParser(prog="xdsd _worker", allow_abbrev=False)
    worker.add_argument("--fd", type=int, required=True)
    worker.add_argument("--parent", type=int, required=True)
    _add_log_level(worker)
    return worker


def _add_security_args(serve: argparse.ArgumentParser) -> None:
    tls = serve.add_argument_group(
        "TLS, authentication and the CA",
        "TLS xDS and the CA on --xds-port (15012); the plaintext port is off unless asked",
    )
    tls.add_argument("--tls-cert-file", type=Path, metavar="PATH", help="serving certificate")
    tls.add_argument("--tls-key-file", type=Path, metavar="PATH", help="its key")
    tls.add_argument(
        "--dev-certs",
        type=Path,
        metavar="DIR",
        help="make (or reuse) a self-signed development CA and serving certificate in DIR; "
        "used for TLS and the CA unless given explicitly",
    )
    tls.add_argument(
        "--dev-cert-name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP of the development serving certificate (repeatable)",
    )
    tls.add_argument(
        "--plaintext-port",
        type=int,
        metavar="PORT",
        help="also serve plaintext xDS here (Istio's 15010), without authentication",
    )
    tls.add_argument(
        "--mtls-port",
        type=int,
        metavar="PORT",
        help="TLS xDS and CA requiring a client certificate of the mesh CA (off)",
    )
    tls.add_argument("--ca-cert-file", type=Path, metavar="PATH", help="CA certificate (PEM)")
    tls.add_argument("--ca-key-file", type=Path, metavar="PATH", help="CA key (PEM)")
    tls.add_argument(
        "--ca-chain-file",
        type=Path,
        metavar="PATH",
        help="certificates from the CA up to the root, when the CA is an intermediate",
    )
    tls.add_argument(
        "--ca-secret",
        metavar="NAME",
        help="the CA from this Secret in --own-namespace (Istio's cacerts: ca-cert.pem, "
        "ca-key.pem, cert-chain.pem, root-cert.pem), the Kubernetes mode, instead of files",
    )
    tls.add_argument(
        "--max-cert-ttl",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="longest workload certificate the CA signs (24)",
    )
    tls.add_argument(
        "--trust-domain", default="cluster.local", help="SPIFFE trust domain (cluster.local)"
    )
    tls.add_argument(
        "--mesh-id",
        default="",
        metavar="ID",
        help="the mesh's id given to injected proxies (ISTIO_META_MESH_ID) when neither "
        "MeshConfig meshId nor the injector's global.meshID names one (default: the "
        "trust domain, as istiod)",
    )
    tls.add_argument(
        "--token-review-kubeconfig",
        type=Path,
        metavar="PATH",
        help="cluster that reviews proxies' tokens when config comes from --config-dir",
    )
    tls.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="do not authenticate proxies (a trusted lab only); the CA then signs nothing",
    )
    tls.add_argument(
        "--max-connection-age",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="close connections after this long so proxies spread over replicas (1800; 0: never)",
    )
    tls.add_argument(
        "--max-streams-per-connection",
        type=int,
        default=100,
        help="concurrent streams one connection may open (100)",
    )
    tls.add_argument(
        "--new-streams-per-second",
        type=float,
        default=100.0,
        help="new xDS streams and CA calls accepted per second, burst twice that (100; 0: no limit)",
    )
    tls.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after GOAWAY, how long streams get before the server stops (5)",
    )


def _add_webhook_args(serve: argparse.ArgumentParser) -> None:
    wh = serve.add_argument_group(
        "Webhooks",
        "istiod's sidecar injection (/inject) and validation (/validate) webhooks over HTTPS; "
        "on when a certificate is configured",
    )
    wh.add_argument(
        "--webhook-port",
        type=int,
        default=15017,
        metavar="PORT",
        help="webhook HTTPS port (15017; -1: off)",
    )
    wh.add_argument(
        "--webhook-host", metavar="HOST", help="webhook listen address (default: --xds-host)"
    )
    wh.add_argument(
        "--webhook-cert-file",
        type=Path,
        metavar="PATH",
        help="webhook serving certificate (default: --tls-cert-file, or the --dev-certs serving certificate)",
    )
    wh.add_argument("--webhook-key-file", type=Path, metavar="PATH", help="its key")
    wh.add_argument(
        "--webhook-discovery-address",
        metavar="HOST:PORT",
        help="the xDS/CA address injected proxies connect to, e.g. the external control "
        "plane's ingress gateway (default: istiod.<istioNamespace>.svc:15012; MeshConfig "
        "defaultConfig.discoveryAddress and a pod's proxy.istio.io/config win)",
    )


def _webhook_settings(args: argparse.Namespace, grpc_settings: Any) -> tuple[Any, Any]:
    """(WebhookSettings or None, InjectSettings) from the serve flags."""
    from xdsd.webhooks.inject import InjectSettings
    from xdsd.webhooks.server import WebhookSettings

    inject = InjectSettings(
        discovery_address=args.webhook_discovery_address or "",
        cluster_id=args.cluster_id,
        trust_domain=args.trust_domain,
        revision=args.revision or "",
        mesh_id=args.mesh_id,
    )
    cert, key = args.webhook_cert_file, args.webhook_key_file
    if (cert is None) != (key is None):
        raise ValueError("give both --webhook-cert-file and --webhook-key-file")
    if cert is None:
        cert, key = grpc_settings.tls_cert_file, grpc_settings.tls_key_file
    if args.webhook_port < 0 or cert is None or key is None:
        return None, inject  # off; without a certificate `serve` logs why
    host = args.webhook_host if args.webhook_host is not None else args.xds_host
    return WebhookSettings(
        host=host,
        port=args.webhook_port,
        cert_file=cert,
        key_file=key,
        shutdown_grace=args.shutdown_grace,
    ), inject


def _security_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """(GrpcSettings, SecuritySettings) from the serve flags; ValueError if they do not fit."""
    import datetime

    from xdsd.ca.authority import ensure_dev_certs
    from xdsd.security import SecuritySettings
    from xdsd.server.grpc_server import GrpcSettings

    cert, key = args.tls_cert_file, args.tls_key_file
    ca_cert, ca_key, ca_chain = args.ca_cert_file, args.ca_key_file, args.ca_chain_file
    if (cert is None) != (key is None):
        raise ValueError("give both --tls-cert-file and --tls-key-file")
    if args.ca_secret is not None:
        if ca_cert is not None or ca_key is not None or ca_chain is not None:
            raise ValueError("give the CA as --ca-secret or as files, not both")
        if args.config_dir is not None:
            raise ValueError("--ca-secret needs the Kubernetes mode (not --config-dir)")
        if args.mtls_port is not None:
            raise ValueError("--mtls-port needs the CA as files (--ca-cert-file)")
    if args.dev_certs is not None:
        names = [*args.dev_cert_name]
        if args.xds_host not in ("0.0.0.0", "::", ""):
            names.append(args.xds_host)
        from xdsd.ca.authority import DEFAULT_SERVER_NAMES

        dev = ensure_dev_certs(
            args.dev_certs,
            list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *names])),
            trust_domain=args.trust_domain,
        )
        if cert is None:
            cert, key = dev.server_cert, dev.server_key
        if ca_cert is None and ca_key is None and args.ca_secret is None:
            ca_cert, ca_key = dev.root_cert, dev.root_key
    tls = cert is not None
    if tls:
        xds_port = 15012 if args.xds_port is None else args.xds_port
        plaintext = -1 if args.plaintext_port is None else args.plaintext_port
    else:
        if args.mtls_port is not None:
            raise ValueError("--mtls-port needs a TLS certificate (--tls-cert-file or --dev-certs)")
        # No certificate: plaintext xDS for a lab (on --xds-port, default 15010).
        xds_port = -1
        plaintext = args.plaintext_port if args.plaintext_port is not None else args.xds_port
        if plaintext is None:
            plaintext = 15010
    grpc_settings = GrpcSettings(
        host=args.xds_host,
        port=plaintext,
        tls_port=xds_port,
        tls_cert_file=cert,
        tls_key_file=key,
        mtls_port=-1 if args.mtls_port is None else args.mtls_port,
        client_ca_file=ca_chain or ca_cert,
        max_connection_age_s=args.max_connection_age,
        max_concurrent_streams=args.max_streams_per_connection,
        shutdown_grace_s=args.shutdown_grace,
    )
    if args.max_cert_ttl <= 0:
        raise ValueError("--max-cert-ttl must be positive")
    security = SecuritySettings(
        authenticate=tls and not args.insecure_no_auth,
        trust_domain=args.trust_domain,
        ca_cert_file=ca_cert,
        ca_key_file=ca_key,
        ca_chain_file=ca_chain,
        ca_secret=args.ca_secret,
        max_cert_ttl=datetime.timedelta(hours=args.max_cert_ttl),
        token_review_kubeconfig=args.token_review_kubeconfig,
        new_streams_per_second=args.new_streams_per_second,
        new_streams_burst=2 * args.new_streams_per_second,
        mtls_port=-1 if args.mtls_port is None else args.mtls_port,
    )
    return grpc_settings, security


def _setup_logging(level: str, fmt: str = "text", tag: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


async def _serve(args: argparse.Namespace) -> int:
    from xdsd.app import AppSettings, XdsdApp
    from xdsd.push.debounce import DebounceSettings
    from xdsd.server.ads import ServerSettings
    from xdsd.sources.jwks import JwksSettings, parse_cidrs

    kubeconfig = args.kubeconfig
    if args.config_dir is None and kubeconfig is None and not args.in_cluster:
        kubeconfig = _kubeconfig_from_env()
        if kubeconfig is None:
            print(
                "xdsd: serve needs --config-dir DIR, --kubeconfig PATH (or $KUBECONFIG) "
                "or --in-cluster",
                file=sys.stderr,
            )
            return 2
    if args.config_dir is not None and not args.config_dir.is_dir():
        print(f"xdsd: --config-dir {args.config_dir} is not a directory", file=sys.stderr)
        return 2
    bad_port = _port_out_of_range(args)
    if bad_port:
        print(f"xdsd: {bad_port}", file=sys.stderr)
        return 2
    try:
        grpc_settings, security = _security_settings(args)
        webhooks, inject = _webhook_settings(args, grpc_settings)
        settings = AppSettings(
            config_dir=args.config_dir,
            kubeconfig=kubeconfig,
            in_cluster=args.in_cluster,
            namespaces=frozenset(args.namespaces) if args.namespaces else None,
            own_namespace=args.own_namespace,
            remote_secrets_dir=args.remote_secrets_dir,
            cluster_id=args.cluster_id,
            revision=args.revision or None,
            remote_sync_timeout=args.remote_sync_timeout,
            write_status=args.write_status,
            xds=grpc_settings,
            security=security,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            remote_debug=args.remote_debug,
            peer_admins=tuple(args.peer_admin),
            poll_interval=args.poll_interval,
            debounce=DebounceSettings(
                quiet=args.debounce_quiet,
                max_delay=args.debounce_max,
                endpoint_quiet=args.debounce_quiet_endpoints,
            ),
            server=ServerSettings(push_concurrency=args.push_concurrency),
            freeze_heap=True,
            gc_collect_interval=args.gc_collect_interval,
            webhooks=webhooks,
            inject=inject,
            jwks=JwksSettings(
                refresh_interval=args.jwks_refresh_interval,
                blocked_cidrs=parse_cidrs(args.jwks_blocked_cidrs),
            ),
        )
    except ValueError as e:
        print(f"xdsd: {e}", file=sys.stderr)
        return 2
    if args.push_concurrency < 1:
        print("xdsd: --push-concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.gc_collect_interval < 0:
        print("xdsd: --gc-collect-interval must not be negative", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("xdsd: --workers must be at least 1", file=sys.stderr)
        return 2
    taken = _port_taken(args, grpc_settings, webhooks)
    if taken:
        print(f"xdsd: {taken}", file=sys.stderr)
        return 2
    if webhooks is None and args.webhook_port >= 0:
        logging.getLogger("xdsd").info(
            "webhooks off: no certificate (give --webhook-cert-file/--webhook-key-file, "
            "--tls-cert-file/--tls-key-file or --dev-certs)"
        )
    if grpc_settings.tls_port < 0:
        logging.getLogger("xdsd").warning(
            "no TLS certificate: serving plaintext xDS without authentication on port %d "
            "(give --tls-cert-file/--tls-key-file or --dev-certs for TLS)",
            grpc_settings.port,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.workers > 1:
        return await _serve_workers(args, settings, stop)
    try:
        xdsd_app = XdsdApp(settings)
    except ValueError as e:
        print(f"xdsd: {e}", file=sys.stderr)
        return 2
    what = args.config_dir or f"Kubernetes cluster {settings.cluster_id}"
    async with contextlib.AsyncExitStack() as stack:
        try:
            app = await stack.enter_async_context(xdsd_app)
        except (OSError, RuntimeError) as e:
            # A port taken between the check above and the bind (grpc: "Failed to bind").
            if not _bind_failure(e):
                raise
            print(f"xdsd: cannot listen: {_one_line(e)}", file=sys.stderr)
            return 2
        ports = [f"TLS {app.tls_port}"] if app.tls_port >= 0 else []
        if app.xds_port >= 0:
            ports.append(f"plaintext {app.xds_port}")
        logging.getLogger("xdsd").info(
            "serving %s: xDS on %s (%s)%s%s, admin on http://%s:%d%s",
            what,
            args.xds_host,
            ", ".join(ports),
            ", with the CA" if app.security.ca is not None else "",
            "" if app.security.auth.enabled else ", no authentication",
            args.admin_host,
            app.admin_port,
            f", webhooks on https://{settings.webhooks.host}:{app.webhook_port}"
            if settings.webhooks is not None and app.webhook_port >= 0
            else "",
        )
        await stop.wait()
        logging.getLogger("xdsd").info("shutting down")
    return 0


async def _serve_workers(args: argparse.Namespace, settings: Any, stop: asyncio.Event) -> int:
    from xdsd.workers import Supervisor, WorkerOptions

    options = WorkerOptions(
        workers=args.workers,
        worker_args=("--log-level", args.log_level, "--log-format", args.log_format),
    )
    try:
        supervisor = await Supervisor(settings, options).__aenter__()
    except (OSError, ValueError, RuntimeError) as e:
        print(f"xdsd: {e}", file=sys.stderr)
        return 1
    try:
        ports = [f"TLS {supervisor.tls_port}"] if supervisor.tls_port >= 0 else []
        if supervisor.xds_port >= 0:
            ports.append(f"plaintext {supervisor.xds_port}")
        logging.getLogger("xdsd").info(
            "serving %s with %d worker processes: xDS on %s (%s), admin on http://%s:%d%s",
            args.config_dir or f"Kubernetes cluster {settings.cluster_id}",
            args.workers,
            args.xds_host,
            ", ".join(ports),
            args.admin_host,
            supervisor.admin_port,
            f", webhooks on https://{settings.webhooks.host}:{supervisor.webhook_port}"
            if settings.webhooks is not None
            else "",
        )
        await stop.wait()
        logging.getLogger("xdsd").info("shutting down the workers")
    finally:
        await supervisor.__aexit__(None, None, None)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from xdsd.workers import run_worker

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_worker(args.fd, args.parent))
    return 0


def _bind_failure(e: BaseException) -> bool:
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    return "Failed to bind" in str(e)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# The serve flags that name a port, with the flag of the address each listens on.
_PORT_FLAGS = (
    ("xds_port", "--xds-port"),
    ("plaintext_port", "--plaintext-port"),
    ("mtls_port", "--mtls-port"),
    ("admin_port", "--admin-port"),
    ("webhook_port", "--webhook-port"),
)


def _port_out_of_range(args: argparse.Namespace) -> str:
    """The first port flag that is no port (0-65535, or -1 for off), as an error line."""
    for attr, flag in _PORT_FLAGS:
        port = getattr(args, attr)
        if port is not None and not -1 <= port <= 65535:
            return f"{flag} {port}: not a port (0-65535, or -1 for off)"
    return ""


def _port_taken(args: argparse.Namespace, grpc: Any, webhooks: Any = None) -> str:
    """The first listen address `serve` cannot bind, as one line naming its flag ("" if none).

    Checked before anything starts, so a busy port is one line and exit 2, not a traceback
    from grpc ("Failed to bind") or aiohttp (EADDRINUSE). Port 0 (any free port) and -1
    (off) need no check.
    """
    tls = grpc.tls_port >= 0
    listens = [
        (
            "--xds-port" if not tls and args.plaintext_port is None else "--plaintext-port",
            "--xds-host",
            args.xds_host,
            grpc.port,
        ),
        ("--xds-port", "--xds-host", args.xds_host, grpc.tls_port),
        ("--mtls-port", "--xds-host", args.xds_host, grpc.mtls_port),
        ("--admin-port", "--admin-host", args.admin_host, args.admin_port),
    ]
    if webhooks is not None:
        host_flag = "--webhook-host" if args.webhook_host is not None else "--xds-host"
        listens.append(("--webhook-port", host_flag, webhooks.host, webhooks.port))
    for port_flag, host_flag, host, port in listens:
        if port <= 0:
            continue
        why = _cannot_bind(host, port)
        if why:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return f"{port_flag} {port}: cannot listen on {where} ({host_flag}): {why}"
    return ""


def _cannot_bind(host: str, port: int) -> str:
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as e:
        return f"cannot resolve {host!r}: {e.strerror or e}"
    family, _, _, _, addr = infos[0]
    # No SO_REUSEPORT here: grpc binds with it, so a port another process holds the
    # same way would otherwise be shared silently.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as e:
            return "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
    return ""


def _kubeconfig_from_env() -> Path | None:
    """$KUBECONFIG (a path list, as kubectl reads it): its first existing file."""
    paths = [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    for path in paths:
        if path.is_file():
            return path
    return paths[0] if paths else None


def _bootstrap(args: argparse.Namespace) -> int:
    from xdsd.model.proxy import NodeIdError, parse_proxy
    from xdsd.translate.bootstrap import BootstrapOptions, build_bootstrap

    metadata = _metadata(args.metadata)
    try:
        # The checks xdsd makes when the proxy connects, made now: a bootstrap that
        # would be refused (or never connect) is an error here, not in Envoy's log.
        proxy = parse_proxy(args.node_id, metadata)
    except NodeIdError as e:
        print(f"xdsd: --node-id: {e}", file=sys.stderr)
        return 2
    bad_ips = [ip for ip in proxy.ip_addresses if not _is_ip(ip)]
    if bad_ips:
        # istiod refuses a node whose IP part (or INSTANCE_IPS) is not an address.
        print(f"xdsd: --node-id: {bad_ips[0]!r} is not an IP address", file=sys.stderr)
        return 2
    if not 0 <= args.admin_port <= 65535:
        print(f"xdsd: --admin-port {args.admin_port}: not a port (0-65535)", file=sys.stderr)
        return 2
    try:
        host, port = _host_port(args.xds_address)
    except ValueError as e:
        print(f"xdsd: --xds-address: {e}", file=sys.stderr)
        return 2
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            print(
                f"xdsd: cannot read --token-file {args.token_file}: {e.strerror}", file=sys.stderr
            )
            return 2
        if not token:
            print(f"xdsd: --token-file {args.token_file} is empty", file=sys.stderr)
            return 2
    doc = build_bootstrap(
        BootstrapOptions(
            node_id=args.node_id,
            metadata=metadata,
            xds_host=host,
            xds_port=port,
            delta=args.delta,
            admin_port=args.admin_port,
            sds_socket=args.sds_socket or None,
            token=token,
            cluster_id_header=args.cluster_id,
            tls_ca_file=args.xds_ca_file,
            tls_server_name=args.xds_server_name,
        )
    )
    text = json.dumps(doc, indent=2) + "\n"
    if args.output_file:
        args.output_file.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_port(address: str) -> tuple[str, int]:
    """HOST:PORT ([IPv6]:PORT), the port required; ValueError with the reason."""
    from xdsd.translate.bootstrap import split_address

    if ":" not in address:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:15010)")
    return split_address(address)


def _translate(args: argparse.Namespace) -> int:
    from xdsd.offline import translate_dir

    if args.diff:
        if args.config_dir is not None:
            print(
                "xdsd: translate takes --config-dir DIR or --diff OLD_DIR NEW_DIR, not both",
                file=sys.stderr,
            )
            return 2
        return _translate_diff(args)
    if args.config_dir is None:
        print("xdsd: translate needs --config-dir DIR or --diff OLD_DIR NEW_DIR", file=sys.stderr)
        return 2

    try:
        dump, errors = translate_dir(
            args.config_dir, args.node_id, _metadata(args.metadata), fetch_jwks=args.fetch_jwks
        )
    except ValueError as e:
        print(f"xdsd: {e}", file=sys.stderr)
        return 2
    for err in errors:
        print(str(err), file=sys.stderr)
    sys.stdout.write(json.dumps(dump, indent=2) + "\n")
    return 0


def _translate_diff(args: argparse.Namespace) -> int:
    from xdsd.client import diff_dirs

    old, new = args.diff
    for d in (old, new):
        if not d.is_dir():
            print(f"xdsd: {d} is not a directory", file=sys.stderr)
            return 2
    try:
        lines = asyncio.run(diff_dirs(old, new, args.node_id, _metadata(args.metadata)))
    except ValueError as e:
        print(f"xdsd: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n".join(lines) + "\n" if lines else "no changes for this proxy\n")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from xdsd.client import validate_paths

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        # A usage error (exit 2, as every command's), not a finding about the config.
        print(f"xdsd: validate: {missing[0]}: no such file or directory", file=sys.stderr)
        return 2
    problems = asyncio.run(validate_paths(args.paths, fetch_jwks=args.fetch_jwks))
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity == "error" or not args.quiet:
            print(f"{p.severity}: {p}")
    # The summary goes with the findings (stdout), so `| tail -1` or a file has both.
    print(f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s)")
    return 1 if errors else 0


def _status(args: argparse.Namespace) -> int:
    import grpc

    from xdsd.client import fetch_status, status_table

    try:
        _host_port(args.xds_address)
    except ValueError as e:
        print(f"xdsd: --xds-address: {e}", file=sys.stderr)
        return 2
    token = None
    try:
        ca = args.xds_ca_file.read_bytes() if args.xds_ca_file is not None else None
        if args.token_file is not None:
            token = args.token_file.read_text().strip()
    except OSError as e:
        print(f"xdsd: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(
            fetch_status(
                args.xds_address,
                args.timeout,
                ca=ca,
                server_name=args.xds_server_name,
                token=token,
                namespace=args.namespace,
            )
        )
    except (grpc.aio.AioRpcError, TimeoutError, ConnectionError, OSError) as e:
        detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e) or type(e).__name__
        print(
            f"xdsd: cannot get status from {args.xds_address}: {detail}{_status_hint(args, e)}",
            file=sys.stderr,
        )
        return 1
    if args.output == "json":
        doc = [
            {
                "proxy": r.proxy,
                "cluster": r.cluster,
                "version": r.version,
                "types": dict(r.types),
                "errors": dict(r.errors),
            }
            for r in rows
        ]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(status_table(rows))
    return 0


def _status_hint(args: argparse.Namespace, e: BaseException) -> str:
    """What to try next, for the failures a wrong port or missing credentials give."""
    import grpc

    code = e.code() if isinstance(e, grpc.aio.AioRpcError) else None
    if args.xds_ca_file is None and code in (grpc.StatusCode.UNAVAILABLE, None):
        # A plaintext client on a TLS port sees the socket close ("Socket closed").
        return (
            " (if the server uses TLS, e.g. serve --dev-certs DIR on 15012, give "
            "--xds-ca-file DIR/root-cert.pem; plaintext xDS is on 15010)"
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return (
            f" (give --token-file with a service-account token of namespace {args.namespace}"
            ", or --namespace with the token's)"
        )
    if args.xds_ca_file is not None and code is grpc.StatusCode.UNAVAILABLE:
        return " (check --xds-ca-file and --xds-server-name match the server's certificate)"
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        wargs = _worker_parser().parse_args(argv[1:])
        _setup_logging(wargs.log_level, wargs.log_format, f"[pid {os.getpid()}] ")
        return _worker(wargs)
    args = _parser().parse_args(argv)
    if hasattr(args, "log_level"):
        _setup_logging(args.log_level, args.log_format)
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_serve(args))
        return 0
    if args.command == "bootstrap":
        return _bootstrap(args)
    if args.command == "translate":
        return _translate(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "status":
        return _status(args)
    if args.command == "demo":
        from xdsd.demo import run_demo

        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run_demo(args.config_dir, requests=args.requests, once=args.once))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
