"""The container images, checked without a Docker daemon: hadolint, the build context
(.dockerignore keeps every crate), what the stages copy, and what they run."""

import re
import subprocess

import pytest
from deploy_support import (
    BINARIES,
    DOCKERFILES,
    ROOT,
    arg_defaults,
    binaries_of,
    copy_sources,
    default_values,
    dockerfile_stages,
    dockerignore,
    env_values,
    exec_form,
    files_under,
    hadolint_path,
    workspace_members,
)


@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request):
    path = ROOT / request.param
    assert path.is_file(), f"{request.param} is missing at the repository root"
    return path


def stage_map(path):
    return {s.name: s for s in dockerfile_stages(path) if s.name}


def test_hadolint_passes(dockerfile):
    proc = subprocess.run(
        [hadolint_path(), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def test_one_target_per_service_running_its_binary(dockerfile):
    stages = stage_map(dockerfile)
    for binary in BINARIES.values():
        assert binary in stages, f"{dockerfile.name}: no stage named {binary} (--target {binary})"
        stage = stages[binary]
        entrypoints = stage.all("ENTRYPOINT")
        assert len(entrypoints) == 1, f"{dockerfile.name} {binary}: one ENTRYPOINT expected"
        entrypoint = exec_form(entrypoints[0].args)
        assert entrypoint == [f"/usr/local/bin/{binary}"], (
            f"{dockerfile.name} {binary}: ENTRYPOINT {entrypoints[0].args}"
        )
        # The binary is copied from the build stage to exactly that path.
        copies = [copy_sources(i) for i in stage.all("COPY")]
        assert any(
            flags.get("from") and dest == f"/usr/local/bin/{binary}" for flags, _, dest in copies
        ), f"{dockerfile.name} {binary}: the binary is not copied to /usr/local/bin/{binary}"
        assert not stage.all("CMD"), f"{dockerfile.name} {binary}: flags come from the env/args"
        # The real crate builds a binary of that name.
        assert binary in binaries_of(ROOT / binary), (
            f"{binary}/Cargo.toml builds no binary named {binary}"
        )


def test_build_stage_builds_both_services_against_the_pinned_torch(dockerfile):
    text = dockerfile.read_text()
    builds = re.findall(r"cargo build[^\n&]*", text)
    assert builds, f"{dockerfile.name}: no cargo build"
    for build in builds:
        assert "--release" in build and "--locked" in build, build
        for binary in BINARIES.values():
            assert f"-p {binary}" in build, f"{dockerfile.name}: {build!r} misses -p {binary}"
    stages = dockerfile_stages(dockerfile)
    builder_env = {}
    for stage in stages:
        builder_env.update(env_values(stage))
    assert builder_env.get("LIBTORCH_USE_PYTORCH") == "1", dockerfile.name
    # The torch version matches what the project's venv pins (what tch 0.26 links against).
    requirements = (ROOT / "scripts" / "requirements.txt").read_text()
    pinned = re.search(r"^torch==(\S+)", requirements, re.M)
    assert pinned, "scripts/requirements.txt pins no torch version"
    assert arg_defaults(dockerfile).get("TORCH_VERSION") == pinned.group(1), (
        f"{dockerfile.name}: ARG TORCH_VERSION must be {pinned.group(1)}"
    )
    assert re.search(r'pip install [^\n]*"?torch==\$\{TORCH_VERSION\}', text), dockerfile.name


def test_runtime_stages_are_slim_non_root_and_find_libtorch(dockerfile):
    stages = stage_map(dockerfile)
    values = default_values()
    for component, binary in BINARIES.items():
        grpc_port, metrics_port = values[component]["port"], values[component]["metricsPort"]
        # Walk the stage's ancestry (FROM runtime, FROM <base image>).
        chain, stage = [], stages[binary]
        while stage is not None:
            chain.append(stage)
            stage = stages.get(stage.base)
        base_image = chain[-1].base
        if dockerfile.name == "Dockerfile.cuda":
            assert base_image.startswith("nvidia/cuda:") and "-runtime-" in base_image, base_image
        else:
            assert "slim" in base_image or "distroless" in base_image, base_image
        assert not any("rust" in s.base for s in chain), f"{binary}: runtime built on a toolchain"
        env = {}
        for s in reversed(chain):
            env.update(env_values(s))
        lib_path = env.get("LD_LIBRARY_PATH", "")
        copied = [copy_sources(i) for s in chain for i in s.all("COPY")]
        torch_dirs = [dest for flags, _, dest in copied if flags.get("from")]
        assert any(lib_path.split(":")[0].startswith(d) for d in torch_dirs), (
            f"{dockerfile.name} {binary}: LD_LIBRARY_PATH={lib_path!r} is not a copied directory"
        )
        assert "torch/lib" in lib_path, lib_path
        users = [i.args for s in chain for i in s.all("USER")]
        assert users, f"{dockerfile.name} {binary}: no USER"
        user = users[-1].split(":")[0]
        assert user.isdigit() and int(user) != 0, f"{binary}: USER must be a numeric non-root UID"
        assert not any(s.all("HEALTHCHECK") for s in chain), "Kubernetes probes check health"
        exposed = {
            int(p.split("/")[0]) for s in chain for i in s.all("EXPOSE") for p in i.args.split()
        }
        assert {grpc_port, metrics_port} <= exposed, f"{binary}: EXPOSE {exposed}"
        assert env.get("ICAE_PORT") == str(grpc_port), f"{binary}: ICAE_PORT"
        assert env.get("ICAE_METRICS_PORT") == str(metrics_port), f"{binary}: ICAE_METRICS_PORT"
        text = dockerfile.read_text()
        assert "ca-certificates" in text, "CA certificates for rediss:// and OTLP over TLS"


def test_every_copied_context_path_exists_and_is_in_the_context(dockerfile):
    ignore = dockerignore()
    for stage in dockerfile_stages(dockerfile):
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, sources, _ = copy_sources(ins)
            if "from" in flags:
                continue
            for source in sources:
                matches = [ROOT] if source in (".", "./") else list(ROOT.glob(source))
                assert matches, f"{dockerfile.name}:{ins.line}: COPY source {source} does not exist"
                for path in matches:
                    rel = path.relative_to(ROOT).as_posix()
                    if rel != ".":
                        assert not ignore.excluded(rel), (
                            f"{dockerfile.name}:{ins.line}: {rel} is excluded by .dockerignore"
                        )


def test_dockerignore_keeps_every_workspace_member():
    ignore = dockerignore()
    for path in ("Cargo.toml", "Cargo.lock"):
        assert (ROOT / path).is_file() and not ignore.excluded(path), path
    members = workspace_members()
    assert {"encoder-svc", "decoder-svc"} <= set(members), members
    for member in members:
        assert (ROOT / member / "Cargo.toml").is_file(), f"workspace member {member} is missing"
        for path in files_under(ROOT / member):
            rel = path.relative_to(ROOT).as_posix()
            assert not ignore.excluded(rel), f".dockerignore excludes {rel} (member {member})"


@pytest.mark.parametrize(
    "path",
    [
        "target/release/encoder-svc",
        "cli/target/debug/x",
        ".git/HEAD",
        ".venv/bin/python",
        "venv/bin/python",
        "training/runs/pretrain/checkpoint.pt",
        "tests/e2e/__pycache__/x.cpython-311.pyc",
        "icae-core/src/__pycache__/x.pyc",
        "helm/icae/values.yaml",
    ],
)
def test_dockerignore_leaves_out_build_outputs_and_caches(path):
    assert dockerignore().excluded(path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_matcher_semantics():
    """The matcher follows Docker's rules (parents, `**`, `!`, last match wins)."""
    from deploy_support import DockerIgnore

    ignore = DockerIgnore("target\n**/*.pyc\ndocs/\n!docs/keep.md\n*.md\n!README.md\n")
    assert ignore.excluded("target/a/b")
    assert not ignore.excluded("a/target")  # patterns are anchored at the root
    assert ignore.excluded("a/b/c.pyc") and ignore.excluded("c.pyc")
    assert ignore.excluded("docs/x.png") and not ignore.excluded("docs/keep.md")
    assert ignore.excluded("CHANGES.md") and not ignore.excluded("README.md")
    assert not ignore.excluded("crate/NOTES.md")  # `*` does not cross `/`
