"""What deploy/ and compose.yaml describe, checked without a cluster, Docker or systemd.

- Every YAML file parses, and every Kubernetes document names its apiVersion, kind and name.
- The kustomizations resolve: a small resolver below follows `resources`, the ConfigMap generators
  (create/merge/replace), `images` and `namespace` the way kustomize does, fails on any field it does
  not know (so nothing is silently skipped), and refuses generator files outside their kustomization.
  Every manifest in base/ is listed; every overlay builds on the base.
- Every container image is one the Dockerfile builds (its `# image:` lines), the node-agent's image
  for the per-node services and the service image for the others; NATS is the same release as in
  compose.yaml.
- Every HUTCH_* variable given to a service (Kubernetes env and ConfigMaps, compose.yaml, the systemd
  EnvironmentFile examples, even inside a container's shell command) is a field of that service's
  pydantic settings class, and the literal values pass its validation.
- Ports and addresses agree with `hutch local` (hutch.local.services), compose.yaml runs exactly the
  services it names, and references inside the manifests (ConfigMaps and their keys, Secrets and their
  keys in secrets.example.yaml, volumes, Service selectors and target ports) point at something real.
- NATS: the Kubernetes nats.conf is deploy/nats/server.conf, `nats-server -t` accepts both with the
  environment each deployment gives it, and each overlay's region is its NATS cluster name and a
  gateway of every other region.
- Where kubectl is installed, its kustomize agrees with the resolver.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from ruamel.yaml import YAML

from hutch.core.config import RegionAddresses, ServiceSettings
from hutch.local.credentials import StackSecrets
from hutch.local.paths import StackPaths
from hutch.local.process import find_executable
from hutch.local.services import SERVICES, ServiceContext, ServiceSpec, service_env

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SYSTEMD = DEPLOY / "systemd"
NATS_DIR = DEPLOY / "nats"

SERVICE_NAMES = {spec.name for spec in SERVICES}
# The services that run once per node, beside the sandboxes, from the node-agent's image.
PER_NODE = {"node-agent", "egress-proxy"}
INFRASTRUCTURE = {"nats", "postgres", "minio", "otel-collector"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}
# Variables a manifest gives a Hutch container that are not settings (inputs of its command).
NON_SETTINGS_ENV = {"NODE_NAME"}


# --- YAML ----------------------------------------------------------------------------------------


def load_all(path: Path) -> list[Any]:
    # The pure-Python parser: libyaml refuses plain scalars such as `a:/b` in flow sequences, which
    # YAML 1.2 (and Docker Compose) accept.
    return [doc for doc in YAML(typ="safe", pure=True).load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> Any:
    docs = load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def yaml_files() -> list[Path]:
    found = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")]
    return sorted([*found, COMPOSE])


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- settings ------------------------------------------------------------------------------------


@functools.cache
def settings_class(service: str) -> type[ServiceSettings]:
    """The pydantic settings class of a service, found from its console script's package."""
    spec = next(s for s in SERVICES if s.name == service)
    entry_points = importlib.metadata.entry_points(group="console_scripts", name=spec.script)
    assert entry_points, f"{spec.script} is not installed"
    package = next(iter(entry_points)).module.split(".")[0]
    module = importlib.import_module(f"{package}.settings")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"{module.__name__}: expected one ServiceSettings subclass, found {classes}"
    return classes[0]


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The models a field nests directly (`Model`, `Model | None`), not those inside lists or dicts,
    which are set as one JSON value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [model for arg in typing.get_args(annotation) for model in _nested_models(arg)]
    return []


def _keys(model: type[BaseModel], prefix: str) -> set[str]:
    keys = set()
    for name in model.model_fields:
        key = f"{prefix}{name.upper()}"
        keys.add(key)  # a group may also be given whole, as JSON
        for nested in _nested_models(model.model_fields[name].annotation):
            keys |= _keys(nested, f"{key}__")
    return keys


@functools.cache
def valid_keys(service: str) -> frozenset[str]:
    """Every HUTCH_* variable the service's settings read (prefix HUTCH_, nested delimiter __)."""
    cls = settings_class(service)
    assert cls.model_config.get("env_prefix") == "HUTCH_"
    assert cls.model_config.get("env_nested_delimiter") == "__"
    return frozenset(_keys(cls, "HUTCH_"))


def check_env(service: str, env: dict[str, str | None], where: str) -> None:
    """Every HUTCH_* key is a setting of `service`; the literal values (None: given at run time, from a
    Secret or the downward API) pass the settings' validation."""
    unknown = sorted(k for k in env if k.startswith("HUTCH_") and k.upper() not in valid_keys(service))
    assert not unknown, f"{where}: not settings of the {service}: {unknown}"
    others = sorted(k for k in env if not k.startswith("HUTCH_") and k not in NON_SETTINGS_ENV)
    assert not others, f"{where}: variables the {service} does not read: {others}"
    literal = {k: v for k, v in env.items() if k.startswith("HUTCH_") and v is not None}
    kept = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    with mock.patch.dict(os.environ, {**kept, **literal}, clear=True):
        try:
            settings_class(service)()
        except ValidationError as exc:
            pytest.fail(f"{where}: settings of the {service} do not validate:\n{exc}")


@functools.cache
def local_env(service: str) -> dict[str, str]:
    """The environment `hutch local` gives the service, with every port at its default."""
    ports = {spec.name: spec.default_port for spec in SERVICES}
    ports.update({name: port for spec in SERVICES for name, port in spec.extra_ports})
    context = ServiceContext(
        paths=StackPaths(Path("/nonexistent/hutch-home")),
        secrets=StackSecrets.generate(),
        nats_url="nats://nats.invalid:4222",
        postgres_dsn="postgresql://hutch@postgres.invalid:5432/hutch",
        s3_endpoint="s3.invalid:9000",
        s3_access_key="a",
        s3_secret_key="s",
        s3_bucket="hutch",
        ports=ports,
    )
    spec: ServiceSpec = next(s for s in SERVICES if s.name == service)
    return service_env(spec, context, spec.default_port)


def check_ports(service: str, env: dict[str, str | None], where: str) -> None:
    """Every port `hutch local` sets for the service (a port, or a loopback address of one) is set
    here too, to the same port: compose, Kubernetes and bare metal all use the stack's defaults."""
    for key, value in local_env(service).items():
        address = re.fullmatch(r"127\.0\.0\.1:(\d+)", value)
        if address:
            port = address.group(1)
        elif key.endswith("_PORT") and value.isdigit():
            port = value
        else:
            continue
        assert key in env, f"{where}: {key} is not set (hutch local sets {value})"
        given = env[key]
        assert given is not None, f"{where}: {key} should be a literal port"
        assert given == port or given.endswith(f":{port}"), f"{where}: {key}={given}, hutch local uses port {port}"


# --- images --------------------------------------------------------------------------------------


@functools.cache
def dockerfile_images() -> dict[str, str]:
    """Target -> image name, from the Dockerfile's `# image: TARGET -> NAME` lines."""
    text = DOCKERFILE.read_text()
    images = dict(re.findall(r"^# image: (\S+) -> (\S+)$", text, re.MULTILINE))
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    assert images, f"{rel(DOCKERFILE)} names no images"
    assert set(images) == targets, f"image lines {sorted(images)} vs build targets {sorted(targets)}"
    return images


def expected_target(service: str) -> str:
    return "node-agent" if service in PER_NODE else "service"


def split_image(image: str) -> tuple[str, str | None]:
    """name, tag (None when absent) of an image reference without a digest."""
    assert "@" not in image, f"unexpected digest in {image}"
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, None


# --- a small kustomize ---------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "images",
}
GENERATOR_FIELDS = {"name", "behavior", "envs", "files", "literals", "options"}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "StorageClass"}


@dataclass
class Build:
    """What `kustomize build <dir>` would produce, in the parts these tests look at."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    # ConfigMaps by their name before the content hash suffix.
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    # Every file the build read.
    files: set[Path] = field(default_factory=set)
    # Every kustomization directory it went through, the root first.
    kustomizations: list[Path] = field(default_factory=list)


def parse_env_file(path: Path) -> dict[str, str]:
    """A kustomize `envs` file: KEY=VALUE lines, the value taken as it is (quotes included)."""
    data = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path}:{number}: not KEY=VALUE"
        assert key not in data, f"{path}:{number}: {key} set twice"
        data[key] = value
    return data


def _inside(directory: Path, entry: str, what: str) -> Path:
    path = (directory / entry).resolve()
    assert path.is_relative_to(directory.resolve()), f"{directory}: {what} {entry} lies outside the kustomization"
    assert path.is_file(), f"{directory}: {what} {entry} does not exist"
    return path


def _generate(directory: Path, generator: dict[str, Any], build: Build) -> None:
    unknown = set(generator) - GENERATOR_FIELDS
    assert not unknown, f"{directory}: configMapGenerator fields this resolver does not know: {unknown}"
    data: dict[str, str] = {}
    for entry in generator.get("envs", []):
        path = _inside(directory, entry, "env file")
        build.files.add(path)
        data.update(parse_env_file(path))
    for entry in generator.get("files", []):
        key, sep, source = entry.partition("=")
        path = _inside(directory, source if sep else entry, "file")
        build.files.add(path)
        data[key if sep else path.name] = path.read_text()
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        assert sep, f"{directory}: literal {literal!r} is not KEY=VALUE"
        data[key] = value
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        assert name not in build.config_maps, f"{directory}: ConfigMap {name} is generated twice"
        build.config_maps[name] = data
    elif behavior == "merge":
        assert name in build.config_maps, f"{directory}: merges into ConfigMap {name}, which the bases lack"
        build.config_maps[name] = {**build.config_maps[name], **data}
    elif behavior == "replace":
        assert name in build.config_maps, f"{directory}: replaces ConfigMap {name}, which the bases lack"
        build.config_maps[name] = data
    else:
        pytest.fail(f"{directory}: unknown generator behavior {behavior!r}")


def containers(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container (init containers too) of a workload document."""
    if document.get("kind") not in WORKLOAD_KINDS:
        return
    spec = document["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def _apply_images(documents: list[dict[str, Any]], images: list[dict[str, Any]], directory: Path) -> None:
    for image in images:
        unknown = set(image) - {"name", "newName", "newTag"}
        assert not unknown, f"{directory}: image fields this resolver does not know: {unknown}"
        for document in documents:
            for container in containers(document):
                name, tag = split_image(container["image"])
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def build(directory: Path) -> Build:
    """Resolves the kustomization in `directory` (the fields in KUSTOMIZATION_FIELDS only)."""
    path = directory / "kustomization.yaml"
    assert path.is_file(), f"{directory} has no kustomization.yaml"
    kustomization = load_one(path)
    assert kustomization.get("kind") == "Kustomization", f"{path}: kind must be Kustomization"
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{path}: fields this resolver does not know (teach it, or do without): {sorted(unknown)}"
    result = Build(files={path}, kustomizations=[directory.resolve()])
    for entry in kustomization.get("resources", []):
        resource = (directory / entry).resolve()
        assert resource.exists(), f"{path}: resource {entry} does not exist"
        if resource.is_dir():
            base = build(resource)
            result.documents += base.documents
            for name in base.config_maps:
                assert name not in result.config_maps, f"{path}: ConfigMap {name} comes from two bases"
            result.config_maps.update(base.config_maps)
            result.files |= base.files
            result.kustomizations += base.kustomizations
        else:
            result.files.add(resource)
            result.documents += load_all(resource)
    for generator in kustomization.get("configMapGenerator", []):
        _generate(directory, generator, result)
    _apply_images(result.documents, kustomization.get("images", []), directory)
    if "namespace" in kustomization:
        for document in result.documents:
            if document["kind"] not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = kustomization["namespace"]
    return result


@functools.cache
def built(directory: Path) -> Build:
    return build(directory)


def workloads(result: Build) -> list[dict[str, Any]]:
    return [d for d in result.documents if d["kind"] in WORKLOAD_KINDS]


def hutch_containers(result: Build) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that runs a Hutch service."""
    for workload in workloads(result):
        for container in workload["spec"]["template"]["spec"].get("containers", []):
            if container["name"] in SERVICE_NAMES:
                yield workload, container


def container_env(result: Build, container: dict[str, Any]) -> dict[str, str | None]:
    """The container's environment as Kubernetes builds it: envFrom in order, then env; None for
    values given at run time (valueFrom)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: only ConfigMaps feed envFrom"
        env.update(result.config_maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def shell_variables(container: dict[str, Any]) -> set[str]:
    """HUTCH_* names a container's command sets or reads."""
    text = " ".join([*container.get("command", []), *container.get("args", [])])
    return set(re.findall(r"\bHUTCH_[A-Z0-9_]+", text))


BUILDS = [BASE, *OVERLAYS]
BUILD_IDS = [rel(p) for p in BUILDS]


# --- files and structure -------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_every_yaml_file_parses(path: Path) -> None:
    documents = load_all(path)
    assert documents, f"{rel(path)} is empty"
    if path.is_relative_to(K8S):
        for document in documents:
            assert isinstance(document, dict), f"{rel(path)}: a document is not a mapping"
            assert document.get("apiVersion") and document.get("kind"), f"{rel(path)}: apiVersion and kind"
            if document["kind"] != "Kustomization":
                assert document.get("metadata", {}).get("name"), f"{rel(path)}: a {document['kind']} has no name"


def test_there_are_two_example_regions() -> None:
    assert [p.name for p in OVERLAYS] == ["eu-west", "us-east"]


@pytest.mark.parametrize("directory", BUILDS, ids=BUILD_IDS)
def test_kustomization_resolves(directory: Path) -> None:
    result = built(directory)
    assert result.documents
    names = [(d["kind"], d["metadata"]["name"]) for d in result.documents]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"{rel(directory)}: resources defined twice: {duplicates}"


def test_every_file_of_the_base_is_used() -> None:
    used = built(BASE).files
    present = {p.resolve() for p in BASE.rglob("*") if p.is_file()}
    assert present - used == set(), f"files in {rel(BASE)} that its kustomization never reads"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_builds_on_the_base(overlay: Path) -> None:
    result = built(overlay)
    assert BASE.resolve() in result.kustomizations, f"{rel(overlay)} does not include {rel(BASE)}"
    present = {p.resolve() for p in overlay.rglob("*") if p.is_file()}
    assert present - result.files == set(), f"files in {rel(overlay)} that its kustomization never reads"


@pytest.mark.parametrize("directory", BUILDS, ids=BUILD_IDS)
def test_resolver_agrees_with_kustomize(directory: Path) -> None:
    """Where kubectl is installed, its kustomize builds the same resources, ConfigMaps and images."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the resolver above stands in for it")
    output = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    real = [doc for doc in YAML(typ="safe", pure=True).load_all(output) if doc is not None]
    ours = built(directory)
    config_maps = {
        re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"]): d.get("data", {})
        for d in real
        if d["kind"] == "ConfigMap"
    }
    assert config_maps == ours.config_maps
    others = sorted((d["kind"], d["metadata"]["name"]) for d in real if d["kind"] != "ConfigMap")
    assert others == sorted((d["kind"], d["metadata"]["name"]) for d in ours.documents)
    images = sorted(c["image"] for d in real for c in containers(d))
    assert images == sorted(c["image"] for d in ours.documents for c in containers(d))


# --- regions and NATS ----------------------------------------------------------------------------


def gateway_names(conf: str) -> list[str]:
    return re.findall(r'\{\s*name:\s*"?([a-z0-9-]+)"?', conf)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_sets_its_region_everywhere(overlay: Path) -> None:
    result = built(overlay)
    region = overlay.name
    assert result.config_maps["hutch-common"]["HUTCH_REGION"] == region
    assert result.config_maps["nats-env"]["NATS_REGION"] == region, "the NATS cluster is named after the region"
    ServiceSettings(region=region)  # a valid region: it becomes part of subjects and stream names
    gateways = gateway_names(result.config_maps["nats-config"]["gateways.conf"])
    assert sorted(gateways) == [p.name for p in OVERLAYS], "every region is a gateway of the supercluster"
    advertise = result.config_maps["nats-env"]["NATS_GATEWAY_ADVERTISE"]
    assert f"{advertise}" in result.config_maps["nats-config"]["gateways.conf"], (
        "the address this region advertises is its entry in gateways.conf"
    )


def test_all_regions_list_the_same_gateways() -> None:
    confs = {built(o).config_maps["nats-config"]["gateways.conf"] for o in OVERLAYS}
    assert len(confs) == 1


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_overlay_names_every_other_region_as_a_peer(overlay: Path) -> None:
    maps = built(overlay).config_maps
    others = sorted(p.name for p in OVERLAYS if p != overlay)
    peers = ServiceSettings(region=overlay.name, peer_regions=maps["hutch-common"]["HUTCH_PEER_REGIONS"]).peer_regions
    assert sorted(peers) == others, "billing reads every other region's usage"
    adapter: TypeAdapter[dict[str, str]] = TypeAdapter(RegionAddresses)
    gateways = adapter.validate_python(maps["hutch-gateway"]["HUTCH_GATEWAY__PEER_GATEWAYS"])
    stores = adapter.validate_python(maps["hutch-snapshot-store"]["HUTCH_SNAPSHOT_STORE__PEER_STORES"])
    assert list(gateways) == list(peers), "calls go on to every other region's gateway, nearest first"
    assert sorted(stores) == others, "snapshots are copied from every other region's store"


def test_local_gateways_name_every_region() -> None:
    assert sorted(gateway_names((NATS_DIR / "gateways.conf").read_text())) == [p.name for p in OVERLAYS]


def test_kubernetes_nats_conf_is_the_template() -> None:
    assert (BASE / "nats" / "nats.conf").read_text() == (NATS_DIR / "server.conf").read_text()


def shell_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as a shell reads them (`set -a; . file`)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            (env[key],) = shlex.split(value) or [""]
    return env


def nats_config_is_valid(directory: Path, config: str, env: dict[str, str]) -> None:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    result = subprocess.run(
        [str(find_executable("nats-server")), "-t", "-c", str(directory / config)],
        env={**kept, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"nats-server -t: {result.stderr or result.stdout}"


@pytest.mark.parametrize("region", ["eu-west", "us-east"])
def test_local_nats_template_is_valid(region: str) -> None:
    env = shell_env_file(NATS_DIR / f"{region}.env")
    assert env["NATS_REGION"] == region
    assert env["NATS_HOST"] == "127.0.0.1", "the local supercluster stays on loopback"
    nats_config_is_valid(NATS_DIR, "server.conf", env)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kubernetes_nats_config_is_valid(overlay: Path, tmp_path: Path) -> None:
    result = built(overlay)
    for name, text in result.config_maps["nats-config"].items():
        (tmp_path / name).write_text(text)
    (nats,) = [c for w in workloads(result) for c in containers(w) if c["name"] == "nats"]
    env = container_env(result, nats)
    assert env.pop("NATS_SERVER_NAME") is None, "the server name is the pod's name"
    args = nats["args"]
    assert args[args.index("--config") + 1] == "/etc/nats/nats.conf"
    nats_config_is_valid(tmp_path, "nats.conf", {**{k: v for k, v in env.items() if v}, "NATS_SERVER_NAME": "nats-0"})


def test_nats_routes_name_every_server_of_the_region() -> None:
    result = built(BASE)
    (statefulset,) = [w for w in workloads(result) if w["kind"] == "StatefulSet"]
    name, service, replicas = (
        statefulset["metadata"]["name"],
        statefulset["spec"]["serviceName"],
        statefulset["spec"]["replicas"],
    )
    routes = result.config_maps["nats-env"]["NATS_ROUTES"]
    expected = ", ".join(f"nats://{name}-{i}.{service}:6222" for i in range(replicas))
    assert routes == f"[{expected}]"


# --- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", BUILDS, ids=BUILD_IDS)
def test_images_are_the_ones_the_dockerfile_builds(directory: Path) -> None:
    images = dockerfile_images()
    compose_nats = load_one(COMPOSE)["services"]["nats"]["image"]
    for workload in workloads(built(directory)):
        for container in containers(workload):
            name, tag = split_image(container["image"])
            where = f"{rel(directory)}: {workload['metadata']['name']}/{container['name']}"
            if container["name"] == "nats":
                nats_name, nats_tag = split_image(compose_nats)
                assert name == nats_name and tag and nats_tag and tag.startswith(nats_tag), (
                    f"{where}: NATS {container['image']} is not the release compose.yaml runs ({compose_nats})"
                )
                continue
            assert tag, f"{where}: {container['image']} has no tag (set it with `images:`)"
            service = workload["metadata"]["name"]
            assert service in SERVICE_NAMES, f"{where}: a Hutch image in a workload that is not a service"
            assert name == images[expected_target(service)], f"{where}: {name} is not the {service}'s image"


def test_images_share_one_release() -> None:
    for directory in BUILDS:
        tags = {split_image(c["image"])[1] for _, c in hutch_containers(built(directory))}
        assert len(tags) == 1, f"{rel(directory)}: services on different releases {tags}"


# --- services, settings and ports ----------------------------------------------------------------


@pytest.mark.parametrize("directory", BUILDS, ids=BUILD_IDS)
def test_every_service_runs_once(directory: Path) -> None:
    result = built(directory)
    found = [c["name"] for _, c in hutch_containers(result)]
    assert sorted(found) == sorted(SERVICE_NAMES)
    services = {d["metadata"]["name"] for d in result.documents if d["kind"] == "Service"}
    for workload, container in hutch_containers(result):
        service = container["name"]
        assert workload["metadata"]["name"] == service
        command = " ".join([*container.get("command", []), *container.get("args", [])])
        script = next(s.script for s in SERVICES if s.name == service)
        assert re.search(rf"(^|\s){script}($|\s)", command), f"{service}: its command does not run {script}"
        pod = workload["spec"]["template"]["spec"]
        if service in PER_NODE:
            assert workload["kind"] == "DaemonSet", f"{service}: one per node"
            assert pod.get("hostNetwork") is True, f"{service}: sandboxes' traffic is in the host's network"
            assert pod.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{service}: must resolve cluster Services"
        else:
            assert workload["kind"] == "Deployment"
            assert service in services, f"{service} has no Service"
    (agent,) = [w for w, c in hutch_containers(result) if c["name"] == "node-agent"]
    pod = agent["spec"]["template"]["spec"]
    assert pod.get("hostPID") is True, "sandboxes must outlive the node-agent's pod"
    assert pod["containers"][0]["securityContext"].get("privileged") is True
    (proxy,) = [w for w, c in hutch_containers(result) if c["name"] == "egress-proxy"]
    assert proxy["spec"]["template"]["spec"]["nodeSelector"] == pod["nodeSelector"], "a proxy beside every agent"


@pytest.mark.parametrize("directory", BUILDS, ids=BUILD_IDS)
def test_kubernetes_env_keys_are_settings(directory: Path) -> None:
    result = built(directory)
    for _, container in hutch_containers(result):
        service = container["name"]
        env = container_env(result, container)
        for name in shell_variables(container):
            env.setdefault(name, None)
        check_env(service, env, f"{rel(directory)}: {service}")


@pytest.mark.parametrize("directory", BUILDS, ids=BUILD_IDS)
def test_kubernetes_ports_match_the_local_stack(directory: Path) -> None:
    result = built(directory)
    for _, container in hutch_containers(result):
        service = container["name"]
        env = container_env(result, container)
        check_ports(service, env, f"{rel(directory)}: {service}")
        port = int(env["HUTCH_GRPC__PORT"] or 0)
        probes = [container.get(p, {}) for p in ("readinessProbe", "livenessProbe", "startupProbe")]
        for probe in probes:
            if "grpc" in probe:
                assert probe["grpc"]["port"] == port, f"{service}: probe on {probe['grpc']['port']}, serves {port}"
            if "exec" in probe:
                assert f"127.0.0.1:{port}" in " ".join(probe["exec"]["command"]), f"{service}: probe port"
        declared = {p["containerPort"] for p in container.get("ports", [])}
        if env.get("HUTCH_GRPC__HOST") != "127.0.0.1":
            assert port in declared, f"{service}: gRPC port {port} is not declared"


def test_every_ref_points_at_something() -> None:
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in load_all(K8S / "secrets.example.yaml")}
    for directory in BUILDS:
        result = built(directory)
        for workload in workloads(result):
            name = workload["metadata"]["name"]
            template = workload["spec"]["template"]
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items(), f"{name}: selector vs labels"
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
            for volume in volumes.values():
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in result.config_maps, f"{name}: volume {volume['name']}"
            for container in containers(workload):
                where = f"{rel(directory)}: {name}/{container['name']}"
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes or mount["name"] in claims, f"{where}: volume {mount['name']}"
                for source in container.get("envFrom", []):
                    assert source["configMapRef"]["name"] in result.config_maps, f"{where}: {source}"
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        secret = ref["secretKeyRef"]
                        assert secret["key"] in secrets.get(secret["name"], set()), (
                            f"{where}: Secret {secret['name']}/{secret['key']} is not in secrets.example.yaml"
                        )
                    if "configMapKeyRef" in ref:
                        config = ref["configMapKeyRef"]
                        assert config["key"] in result.config_maps.get(config["name"], {}), f"{where}: {config}"
        pods = [(w["spec"]["template"]["metadata"]["labels"], w) for w in workloads(result)]
        for service in (d for d in result.documents if d["kind"] == "Service"):
            name = service["metadata"]["name"]
            matching = [w for labels, w in pods if service["spec"]["selector"].items() <= labels.items()]
            assert matching, f"{rel(directory)}: Service {name} selects no pods"
            ports = {
                p["name"]
                for w in matching
                for c in w["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{rel(directory)}: Service {name} targets {port['targetPort']}"


@pytest.mark.parametrize("service", ["node-agent", "egress-proxy"])
def test_node_id_from_the_node_name_is_valid(service: str, tmp_path: Path) -> None:
    """The per-node services name themselves after the Kubernetes node, made a valid node id."""
    from hutch_node_agent.settings import NodeOptions

    (workload, container) = next((w, c) for w, c in hutch_containers(built(BASE)) if c["name"] == service)
    script = next(s.script for s in SERVICES if s.name == service)
    variable = {"node-agent": "HUTCH_NODE__ID", "egress-proxy": "HUTCH_EGRESS__NODE_ID"}[service]
    stub = tmp_path / script
    stub.write_text(f'#!/bin/sh\nprintf "%s" "${variable}"\n')
    stub.chmod(0o755)
    names = {
        "ip-10-0-1-23.eu-west-1.compute.internal": "ip-10-0-1-23-eu-west-1-compute-internal",
        "worker-7": "worker-7",
        "a" * 62 + ".b" * 10: "a" * 62,
    }
    for node_name, expected in names.items():
        result = subprocess.run(
            [*container["command"], *container["args"]],
            env={"PATH": f"{tmp_path}:/usr/bin:/bin", "NODE_NAME": node_name},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert result.stdout == expected, f"{workload['metadata']['name']}: {node_name}"
        NodeOptions(id=result.stdout)


# --- compose -------------------------------------------------------------------------------------


def interpolate(value: Any) -> str:
    """A compose value with ${VAR:-default} / ${VAR-default} / ${VAR} resolved as if VAR were unset."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


@functools.cache
def compose() -> dict[str, Any]:
    compose_file: dict[str, Any] = load_one(COMPOSE)
    return compose_file


def test_compose_runs_exactly_the_local_stack() -> None:
    services = set(compose()["services"])
    assert services - INFRASTRUCTURE == SERVICE_NAMES
    assert services >= INFRASTRUCTURE, "NATS, PostgreSQL, MinIO (S3) and a collector run beside the services"


def test_compose_sends_telemetry_to_its_collector() -> None:
    """Every service exports over OTLP to the collector's gRPC receiver, whose pipelines use only
    components the collector configuration defines."""
    services = compose()["services"]
    collector = services["otel-collector"]
    mount = next(v for v in collector["volumes"] if v.startswith("./deploy/otel/"))
    source, target = mount.split(":")[:2]
    assert f"--config={target}" in collector["command"]
    config = load_one(REPO / source.removeprefix("./"))
    receiver = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    port = int(receiver.rsplit(":", 1)[1])
    for name in SERVICE_NAMES:
        env = {k: interpolate(v) for k, v in services[name]["environment"].items()}
        assert env["HUTCH_TELEMETRY__EXPORTER"] == "otlp", name
        assert env["HUTCH_TELEMETRY__OTLP_ENDPOINT"] == f"http://otel-collector:{port}", name
    for kind, pipeline in config["service"]["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            missing = set(pipeline.get(section, [])) - set(config.get(section) or {})
            assert not missing, f"the {kind} pipeline uses undefined {section}: {missing}"
    file_paths = [e["path"] for n, e in config["exporters"].items() if n.startswith("file")]
    assert all(Path(p).parent == Path("/data") for p in file_paths)
    assert "otel-data:/data" in collector["volumes"] and "otel-data" in compose()["volumes"]


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_compose_service(service: str) -> None:
    definition = compose()["services"][service]
    where = f"compose.yaml: {service}"
    env = {k: interpolate(v) for k, v in definition["environment"].items()}
    check_env(service, dict(env), where)
    check_ports(service, dict(env), where)
    target = expected_target(service)
    assert definition["build"]["target"] == target
    assert definition["build"]["dockerfile"] == rel(DOCKERFILE)
    name, _ = split_image(definition["image"])
    assert name == dockerfile_images()[target], f"{where}: image {definition['image']}"
    script = next(s.script for s in SERVICES if s.name == service)
    run = definition.get("command") or definition.get("entrypoint")
    if service == "node-agent":
        run = run or ["hutch-node-agent"]  # the image's entrypoint
    assert run and run[0] == script, f"{where}: runs {run}, not {script}"
    for dependency in definition.get("depends_on", {}):
        assert dependency in compose()["services"], f"{where}: depends on unknown {dependency}"
    for volume in definition.get("volumes", []):
        source = volume.split(":", 1)[0]
        assert source.startswith("/") or source in compose()["volumes"], f"{where}: volume {source} undeclared"


def test_compose_egress_proxy_sits_in_the_node_agents_network() -> None:
    services = compose()["services"]
    assert services["egress-proxy"]["network_mode"] == "service:node-agent"
    agent, proxy = services["node-agent"]["environment"], services["egress-proxy"]["environment"]
    assert agent["HUTCH_NODE__ID"] == proxy["HUTCH_EGRESS__NODE_ID"]
    ca = Path(agent["HUTCH_NODE__EGRESS_PROXY__CA_FILE"])
    assert ca.parent == Path(proxy["HUTCH_EGRESS__STATE_DIR"]), "the agent reads the proxy's CA certificate"
    assert any(v.startswith(f"egress-state:{ca.parent}") for v in services["node-agent"]["volumes"])


# --- systemd -------------------------------------------------------------------------------------


def unit_file(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as sections of (key, value) pairs (a key may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            assert stripped.endswith("]"), f"{path}:{number}: bad section header"
            current = stripped[1:-1]
            sections[current] = []
            continue
        key, sep, value = stripped.partition("=")
        assert current and sep, f"{path}:{number}: not KEY=VALUE inside a section"
        sections[current].append((key, value))
    return sections


UNITS = {"node-agent": "hutch-node-agent.service", "egress-proxy": "hutch-egress-proxy.service"}


@pytest.mark.parametrize("service", sorted(UNITS))
def test_systemd_unit(service: str) -> None:
    path = SYSTEMD / UNITS[service]
    unit = unit_file(path)
    assert set(unit) == {"Unit", "Service", "Install"}
    values = dict(unit["Service"])
    script = next(s.script for s in SERVICES if s.name == service)
    assert Path(values["ExecStart"].split()[0]).name == script
    env: dict[str, str | None] = {}
    files = [v for k, v in unit["Service"] if k == "EnvironmentFile"]
    assert files, f"{path.name}: no EnvironmentFile"
    for name in files:
        example = SYSTEMD / (Path(name.lstrip("-")).name + ".example")
        assert example.is_file(), f"{path.name}: {name} has no example {rel(example)}"
        env.update(parse_env_file(example))
    check_env(service, env, rel(path))
    check_ports(service, env, rel(path))
    if service == "node-agent":
        assert values["KillMode"] == "process", "stopping the agent must not kill the sandboxes"


def test_systemd_examples_name_the_same_node() -> None:
    agent = parse_env_file(SYSTEMD / "node-agent.env.example")
    proxy = parse_env_file(SYSTEMD / "egress-proxy.env.example")
    assert agent["HUTCH_NODE__ID"] == proxy["HUTCH_EGRESS__NODE_ID"]
    assert Path(agent["HUTCH_NODE__EGRESS_PROXY__CA_FILE"]).parent == Path(proxy["HUTCH_EGRESS__STATE_DIR"])
    unit = dict(unit_file(SYSTEMD / UNITS["egress-proxy"])["Service"])
    assert Path("/var/lib", unit["StateDirectory"]) == Path(proxy["HUTCH_EGRESS__STATE_DIR"])
