"""deploy/k8s renders with `kubectl kustomize` and validates offline (kubernetes-validate, strict) against the
Kubernetes schema version pinned below, and the pieces fit together: stable ES names behind a headless
Service, a proxy that follows them (no ES listed by hand), probes, profiles, images a registry can replace.

Needs `kubectl` (any version with `kustomize` built in, >= 1.14) on PATH and the `dev` extra
(kubernetes-validate). Debian has no kubectl package, so `.ci/run` cannot install it cheaply; without it
these tests are skipped and pytest's summary (`-ra`, the project's default) lists the skip with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")

#: The schema version the manifests are validated against (kubernetes-validate ships 1.25 .. 1.37): pinned, so
#: a new kubernetes-validate release does not silently change what "valid" means.
KUBERNETES_VERSION = "1.32.0"

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="SKIPPED deploy/k8s validation: kubectl is not on PATH (tests/test_k8s.py renders the manifests with "
           "`kubectl kustomize`; install kubectl, https://kubernetes.io/docs/tasks/tools/)")


def render(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False)  # type: ignore[list-item]
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S)


@pytest.fixture(scope="module")
def gpu() -> list[dict[str, Any]]:
    return render(K8S / "gpu")


@pytest.mark.parametrize("which", ["base", "gpu"])
def test_manifests_validate_offline(which: str, request: pytest.FixtureRequest) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = request.getfixturevalue(which)
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Service", "StatefulSet", "Deployment", "Job"}
    version = KUBERNETES_VERSION
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the path
    # and an invalid one is caught (the validator is really checking)
    bad = yaml.safe_load(yaml.safe_dump(by_kind(docs, "StatefulSet", "es")))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_edge_servers_have_stable_names_the_proxy_uses(base: list[dict[str, Any]]) -> None:
    sts = by_kind(base, "StatefulSet", "es")
    svc = by_kind(base, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "multi-ES protocols address one ES: the Service must be headless"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    ns = sts["metadata"]["namespace"]
    assert all(d["metadata"].get("namespace", ns) == ns for d in base if d["kind"] != "Namespace")

    proxy = container(by_kind(base, "Deployment", "channel"), "meg-channel")
    assert by_kind(base, "Deployment", "channel")["spec"]["replicas"] == 1  # one channel state
    assert not [a for a in proxy["args"] if a.startswith("--upstream=")], "no ES listed by hand: the proxy follows them"
    from channel_emulator.membership import Pattern

    patterns = [Pattern.parse(a.split("=", 1)[1]) for a in proxy["args"] if a.startswith("--upstream-pattern=")]
    max_up = int(next(a.split("=", 1)[1] for a in proxy["args"] if a.startswith("--max-upstreams=")))
    # each ES pod, named as the pod names itself (es<ordinal>), at <pod>.<headless service>, for as many
    # replicas as --max-upstreams allows (scaling the StatefulSet is all a user does)
    assert len(patterns) == 1 and max_up >= 8 * sts["spec"]["replicas"]
    for i in range(max_up):
        assert patterns[0].expand(i) == (f"es{i}", f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}:50051")
    assert svc["spec"].get("publishNotReadyAddresses", False) is False  # an unready ES leaves the proxy
    es_cmd = " ".join(container(sts, "meg-edge")["args"])
    assert '--name "es${HOSTNAME##*-}"' in es_cmd and "--listen 0.0.0.0:50051" in es_cmd
    adv = next(a for a in proxy["args"] if a.startswith("--advertise="))
    chan_svc = by_kind(base, "Service", "channel")
    assert adv == f"--advertise={chan_svc['metadata']['name']}:{chan_svc['spec']['ports'][0]['port']}"

    # probes use the gRPC health service on the port each server listens on
    for workload, cname, port in [(sts, "meg-edge", 50051), (by_kind(base, "Deployment", "channel"), "meg-channel", 50052)]:
        c = container(workload, cname)
        assert [p["containerPort"] for p in c["ports"]] == [port]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_profiles_configmap_is_configs_file(base: list[dict[str, Any]]) -> None:
    configs = (ROOT / "configs" / "channel-profiles.toml").read_text()
    # kustomize reads nothing outside its folder, so base/ holds a copy: it must stay the same file
    assert (K8S / "base" / "channel-profiles.toml").read_text() == configs
    cm = next(d for d in base if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("channel-profiles"))
    assert cm["data"]["channel-profiles.toml"] == configs
    deploy = by_kind(base, "Deployment", "channel")
    vol = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "profiles")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]  # the generated (hashed) name is wired in
    mount = next(m for m in container(deploy, "meg-channel")["volumeMounts"] if m["name"] == "profiles")
    profiles_arg = next(a for a in container(deploy, "meg-channel")["args"] if a.startswith("--profiles="))
    assert profiles_arg == f"--profiles={mount['mountPath']}/channel-profiles.toml"


def test_load_job_goes_through_the_proxy(base: list[dict[str, Any]]) -> None:
    job = by_kind(base, "Job", "ue-load")
    args = container(job, "meg-ue")["args"]
    assert args[:2] == ["meg-ue", "load"] and args[args.index("--via") + 1] == "channel:50052"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    wait = job["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert "shared.rpc.healthcheck channel:50052" in wait


def test_gpu_overlay_puts_edge_servers_on_gpus(base: list[dict[str, Any]], gpu: list[dict[str, Any]]) -> None:
    es = container(by_kind(gpu, "StatefulSet", "es"), "meg-edge")
    assert es["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "MEG_DEVICE", "value": "cuda"} in es["env"]
    assert es["image"] == "meg:local-gpu"  # the image `docker compose --profile gpu build gpu0` tags
    # only the edge servers change: the proxy and the load job are the same as in the base
    for kind, name in [("Deployment", "channel"), ("Job", "ue-load"), ("Service", "es")]:
        assert by_kind(gpu, kind, name) == by_kind(base, kind, name)


def _images(docs: list[dict[str, Any]]) -> set[str]:
    out = set()
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            out.add(c["image"])
    return out


@pytest.mark.parametrize("which, names", [("base", ["meg", "meg-proxy"]), ("gpu", ["meg", "meg-proxy", "meg-gpu"])])
def test_kustomize_edit_set_image_reaches_every_container(which: str, names: list[str], tmp_path: Path) -> None:
    """What the docs tell a user: `kustomize edit set image NAME=REGISTRY/...` in that folder. That command
    appends to the folder's ``images:`` list; done here on a copy, every rendered container must then come
    from the registry (a hard-coded image would stay local: ImagePullBackOff on a real cluster)."""
    shutil.copytree(K8S, tmp_path / "k8s")
    folder = tmp_path / "k8s" / ("gpu" if which == "gpu" else "base")
    kfile = folder / "kustomization.yaml"
    doc = yaml.safe_load(kfile.read_text())
    doc["images"] = [i for i in doc.get("images", []) if i["name"] not in names] + [
        {"name": n, "newName": f"registry.example/{n}", "newTag": "v9"} for n in names]
    kfile.write_text(yaml.safe_dump(doc))
    docs = render(tmp_path / "k8s" if which == "base" else folder)
    images = _images(docs)
    assert images and all(i.startswith("registry.example/") and i.endswith(":v9") for i in images), images
    if which == "gpu":  # the GPU edge servers get the GPU image, never the CPU image set for `meg`
        assert container(by_kind(docs, "StatefulSet", "es"), "meg-edge")["image"] == "registry.example/meg-gpu:v9"


@pytest.fixture(scope="module")
def mobility() -> list[dict[str, Any]]:
    return render(K8S / "mobility")


def test_mobility_overlay_mounts_a_scenario_and_traces(base: list[dict[str, Any]], mobility: list[dict[str, Any]]) -> None:
    """deploy/k8s/mobility: the proxy plays a scenario from a ConfigMap (MEG_SCENARIO, meg-channel's variable for
    --scenario) and reads traces from a claim, both read-only; it validates offline and changes nothing else."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert {d["kind"] for d in mobility} == {"Namespace", "ConfigMap", "Service", "StatefulSet", "Deployment", "Job",
                                             "PersistentVolumeClaim"}
    for doc in mobility:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    deploy = by_kind(mobility, "Deployment", "channel")
    proxy = container(deploy, "meg-channel")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in proxy["volumeMounts"]}
    assert set(mounts) == {"profiles", "tmp", "scenarios", "traces"} and set(volumes) == set(mounts)
    assert mounts["scenarios"]["readOnly"] is True and mounts["traces"]["readOnly"] is True
    scenario = next(e["value"] for e in proxy["env"] if e["name"] == "MEG_SCENARIO")
    assert next(e["value"] for e in proxy["env"] if e["name"] == "MEG_TRACE_DIR") == mounts["traces"]["mountPath"]
    folder, _, name = scenario.rpartition("/")
    assert folder == mounts["scenarios"]["mountPath"]
    cm = next(d for d in mobility if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volumes["scenarios"]["configMap"]["name"])
    assert cm["data"][name] == (ROOT / "configs" / "scenarios" / name).read_text()  # the copy is the configs file
    assert (K8S / "mobility" / name).read_text() == (ROOT / "configs" / "scenarios" / name).read_text()
    claim = by_kind(mobility, "PersistentVolumeClaim", volumes["traces"]["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["namespace"] == deploy["metadata"]["namespace"] == "meg"
    assert volumes["traces"]["persistentVolumeClaim"]["readOnly"] is True
    # the scenario file parses (every event valid; its trace events, if any, are relative to the mount)
    import tomllib

    from shared.channel.scenario import parse_scenario

    assert parse_scenario(tomllib.loads(cm["data"][name]), name).events
    # the rest is the base's
    for kind, name in [("StatefulSet", "es"), ("Job", "ue-load"), ("Service", "es"), ("Service", "channel")]:
        assert by_kind(mobility, kind, name) == by_kind(base, kind, name)
    stripped = yaml.safe_load(yaml.safe_dump(deploy))
    c = container(stripped, "meg-channel")
    del c["env"]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] in ("profiles", "tmp")]
    spec = stripped["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] in ("profiles", "tmp")]
    assert stripped == by_kind(base, "Deployment", "channel")
