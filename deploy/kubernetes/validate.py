#!/usr/bin/env python3
"""Checks what `kubectl kustomize` builds from each given directory, without a cluster.

1. Every object against the Kubernetes OpenAPI schemas (strict: an unknown or misspelt field
   is an error), for each --kubernetes-version, with the schemas the `kubernetes-validate`
   package ships. A kind with no schema is an error too, never a silent pass.
2. What the schemas cannot see, as deploy/kubernetes/README.md lists it: workloads locked down
   (non-root by number, read-only root, no privilege escalation, every capability dropped),
   images pinned, resources set; Coffer's probes, and a termination grace period above its
   shutdown grace plus drain timeout; Services, the PodDisruptionBudget and the HPA pointing at
   pods and ports that exist; every ConfigMap and Secret a pod names made by the same build
   (Secrets excepted with --secrets-from-outside, as for base/); no live provider key in a
   Secret.

Run by scripts/validate-kubernetes, which installs kubectl and kubernetes-validate first.
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
from pathlib import Path

import yaml
from kubernetes_validate import utils as schemas

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# Coffer's listeners (src/config.rs) and the health port the readiness probe must use.
GRPC_PORT = 50051
# What `serve` takes from the signal to its exit beyond grace + drain (README, --drain-timeout).
SHUTDOWN_SLACK_SECONDS = 2
LIVE_KEY = re.compile(r"\b(sk|rk|pk)_live_")


def build(kubectl: str, directory: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def seconds(value: str) -> float:
    """A duration as COFFER_* variables write it: 500ms, 10s, 2m, 1h (humantime's common units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", value)
    if not match:
        raise ValueError(f"cannot read the duration {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


class Checker:
    def __init__(self, directory: Path, objects: list[dict], secrets_from_outside: bool):
        self.directory = directory
        self.objects = objects
        self.secrets_from_outside = secrets_from_outside
        self.problems: list[str] = []

    def problem(self, obj: dict, text: str) -> None:
        self.problems.append(f"{self.directory}: {name_of(obj)}: {text}")

    def schemas(self, versions: list[str]) -> None:
        for obj in self.objects:
            for version in versions:
                try:
                    schemas.validate(obj, version, strict=True)
                except schemas.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(top)"
                    self.problem(obj, f"Kubernetes {version}: {path}: {e.message}")
                except schemas.SchemaNotFoundError as e:
                    self.problem(obj, e.message)

    def pod_templates(self) -> list[tuple[dict, dict]]:
        found = []
        for obj in self.objects:
            if obj["kind"] in WORKLOAD_KINDS:
                found.append((obj, obj["spec"]["template"]))
        return found

    def workloads(self) -> None:
        for obj, template in self.pod_templates():
            pod = template["spec"]
            pod_sc = pod.get("securityContext", {})
            containers = pod.get("initContainers", []) + pod["containers"]
            for c in containers:
                where = f"container {c['name']}"
                sc = c.get("securityContext", {})
                non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
                user = sc.get("runAsUser", pod_sc.get("runAsUser"))
                if non_root is not True:
                    self.problem(obj, f"{where}: runAsNonRoot is not true")
                if not isinstance(user, int) or user == 0:
                    self.problem(obj, f"{where}: runAsUser is not a non-zero number")
                if sc.get("readOnlyRootFilesystem") is not True:
                    self.problem(obj, f"{where}: readOnlyRootFilesystem is not true")
                if sc.get("allowPrivilegeEscalation") is not False:
                    self.problem(obj, f"{where}: allowPrivilegeEscalation is not false")
                if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                    self.problem(obj, f"{where}: capabilities do not drop ALL")
                if not pinned(c["image"]):
                    self.problem(obj, f"{where}: image {c['image']} has no tag, or :latest")
                resources = c.get("resources", {})
                for need in ("requests.cpu", "requests.memory", "limits.memory"):
                    section, key = need.split(".")
                    if key not in resources.get(section, {}):
                        self.problem(obj, f"{where}: resources.{need} is not set")

    def coffer(self) -> None:
        servers = [
            (obj, template)
            for obj, template in self.pod_templates()
            if any(c.get("args", [])[:1] == ["serve"] for c in template["spec"]["containers"])
        ]
        if not servers:
            self.problems.append(f"{self.directory}: no workload runs `coffer serve`")
        for obj, template in servers:
            pod = template["spec"]
            server = next(c for c in pod["containers"] if c.get("args", [])[:1] == ["serve"])
            readiness = server.get("readinessProbe", {}).get("grpc", {})
            if readiness.get("port") != GRPC_PORT:
                self.problem(obj, f"readinessProbe is not the gRPC health check on {GRPC_PORT}")
            if "livenessProbe" not in server:
                self.problem(obj, "no livenessProbe")
            env = {e["name"]: e.get("value") for e in server.get("env", [])}
            grace = seconds(env.get("COFFER_SHUTDOWN_GRACE") or "0s")
            drain = seconds(env.get("COFFER_DRAIN_TIMEOUT") or "10s")
            needed = grace + drain + SHUTDOWN_SLACK_SECONDS
            period = pod.get("terminationGracePeriodSeconds", 30)
            if period <= needed:
                self.problem(
                    obj,
                    f"terminationGracePeriodSeconds {period} is not above shutdown grace "
                    f"{grace:g}s + drain timeout {drain:g}s + {SHUTDOWN_SLACK_SECONDS}s",
                )
            if obj["kind"] == "Deployment" and "replicas" in obj["spec"] and self.by_kind(
                "HorizontalPodAutoscaler"
            ):
                self.problem(obj, "sets replicas, which the HPA owns")

    def by_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def selected(self, selector: dict) -> list[dict]:
        """The pod templates whose labels include every label of `selector`."""
        return [
            template
            for _, template in self.pod_templates()
            if selector
            and all(template["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def wiring(self) -> None:
        for svc in self.by_kind("Service"):
            templates = self.selected(svc["spec"].get("selector", {}))
            if not templates:
                self.problem(svc, "its selector matches no pod template")
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for template in templates:
                    ports = [
                        p
                        for c in template["spec"]["containers"]
                        for p in c.get("ports", [])
                        if p.get("name") == target or p["containerPort"] == target
                    ]
                    if not ports:
                        self.problem(svc, f"targetPort {target} is no port of its pods")
        for pdb in self.by_kind("PodDisruptionBudget"):
            if not self.selected(pdb["spec"]["selector"].get("matchLabels", {})):
                self.problem(pdb, "its selector matches no pod template")
        for hpa in self.by_kind("HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            targets = [
                o
                for o in self.objects
                if o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"]
            ]
            if not targets:
                self.problem(hpa, f"scales {ref['kind']}/{ref['name']}, which this build lacks")

    def references(self) -> None:
        made = {(o["kind"], o["metadata"]["name"]) for o in self.objects}
        for obj, template in self.pod_templates():
            pod = template["spec"]
            wanted = []
            for c in pod.get("initContainers", []) + pod["containers"]:
                for e in c.get("env", []):
                    source = e.get("valueFrom", {})
                    if "secretKeyRef" in source:
                        wanted.append(("Secret", source["secretKeyRef"]))
                    if "configMapKeyRef" in source:
                        wanted.append(("ConfigMap", source["configMapKeyRef"]))
                for e in c.get("envFrom", []):
                    if "secretRef" in e:
                        wanted.append(("Secret", e["secretRef"]))
                    if "configMapRef" in e:
                        wanted.append(("ConfigMap", e["configMapRef"]))
            for v in pod.get("volumes", []):
                if "configMap" in v:
                    wanted.append(("ConfigMap", v["configMap"]))
                if "secret" in v:
                    wanted.append(("Secret", {"name": v["secret"]["secretName"]}))
            for kind, ref in wanted:
                if ref.get("optional") or (kind, ref["name"]) in made:
                    continue
                if kind == "Secret" and self.secrets_from_outside:
                    continue
                self.problem(obj, f"names {kind}/{ref['name']}, which this build does not make")

    def secrets(self) -> None:
        for secret in self.by_kind("Secret"):
            values = list(secret.get("stringData", {}).values())
            values += [
                base64.b64decode(v).decode(errors="replace")
                for v in secret.get("data", {}).values()
            ]
            for value in values:
                if LIVE_KEY.search(value):
                    self.problem(secret, "holds what looks like a live provider key")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        dest="versions",
        help="validate against this version's schemas (repeatable)",
    )
    parser.add_argument(
        "--secrets-from-outside",
        action="store_true",
        help="Secrets the pods name are made outside this build (base/)",
    )
    args = parser.parse_args()
    versions = args.versions or [schemas.latest_version()]

    problems = []
    for directory in args.directories:
        objects = build(args.kubectl, directory)
        checker = Checker(directory, objects, args.secrets_from_outside)
        checker.schemas(versions)
        checker.workloads()
        checker.coffer()
        checker.wiring()
        checker.references()
        checker.secrets()
        problems += checker.problems
        kinds = ", ".join(sorted({name_of(o) for o in objects}))
        status = f"{len(checker.problems)} problem(s)" if checker.problems else "ok"
        print(
            f"{directory}: {len(objects)} objects against Kubernetes {', '.join(versions)}: "
            f"{status}\n  {kinds}"
        )
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
