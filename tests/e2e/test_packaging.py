"""What ships: the runtime-only install boots and publishes; the lock files match pyproject.toml.

The suite itself runs in the dev virtualenv, where pytest and friends bring in
packages the service may import without declaring (gunicorn's gevent worker
needs ``packaging``, which only gunicorn's ``gevent`` extra declares). So one
test builds a virtualenv the way the Dockerfile does (the hashed runtime lock,
then the app with ``--no-deps``), checks that every module of the app imports
there, and runs gunicorn from it against the real broker.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.server import REPO, GatewayProcess, publish

LOCKS = {  # lock file -> the pyproject extras it is compiled with (make lock)
    "runtime.txt": (),
    "dev.txt": ("dev",),
    "bench.txt": ("dev", "bench"),
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)(?:\[[^\]]*\])?==([^\s;]+)")
UV = REPO / ".venv" / "tools" / "bin" / "uv"


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def _direct_pins(extras: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    pins = {}
    for line in lines:
        match = PIN.match(line)
        assert match, f"pyproject.toml: {line!r} is not pinned with =="
        pins[_name(match.group(1))] = match.group(2)
    return pins


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, the packages it is there for)} from a uv/pip-compile lock file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = _name(match.group(1))
            entries[current] = (match.group(2), [])
            assert line.rstrip().endswith("\\"), f"{path.name}: {current} has no --hash"
        elif current and line.lstrip().startswith("#"):  # "# via x", or "# via" then "#   x" lines
            text = line.strip().lstrip("#").strip()
            text = text[3:].strip() if text.startswith("via") else text
            if text:
                entries[current][1].append(text)
    return entries


@pytest.mark.parametrize("lock_name", LOCKS)
def test_lock_pins_exactly_the_direct_dependencies_of_pyproject(lock_name):
    lock = _lock(REPO / "requirements" / lock_name)
    direct = _direct_pins(LOCKS[lock_name])
    from_pyproject = {name for name, (_, via) in lock.items() if "amqp-publish-gateway (pyproject.toml)" in via}
    assert from_pyproject == set(direct), "pyproject.toml and the lock disagree: run `make lock`"
    for name, version in direct.items():
        assert lock[name][0] == version, f"{name}: pyproject.toml says {version}, the lock {lock[name][0]}"


def test_dev_and_bench_run_the_runtime_versions():
    """The tests exercise the same versions the image ships."""
    runtime = _lock(REPO / "requirements" / "runtime.txt")
    for other in ("dev.txt", "bench.txt"):
        locked = _lock(REPO / "requirements" / other)
        assert {n: locked[n][0] for n in runtime} == {n: v for n, (v, _) in runtime.items()}, other


@pytest.mark.parametrize("lock_name", [*LOCKS, "tools.txt"])
def test_lock_is_what_make_lock_makes(lock_name, tmp_path):
    """Resolve again, keeping the locked versions (uv's default): any difference is drift."""
    assert UV.exists(), "uv is in the tools venv: run the tests through make"
    out = tmp_path / lock_name
    shutil.copy(REPO / "requirements" / lock_name, out)  # uv keeps the versions already in its output
    source = ["requirements/tools.in"] if lock_name == "tools.txt" else ["pyproject.toml"]
    extras = [arg for extra in LOCKS.get(lock_name, ()) for arg in ("--extra", extra)]
    done = subprocess.run([str(UV), "pip", "compile", "--quiet", "--generate-hashes", "--python-version", "3.11",
                           "--python-platform", "linux", "--custom-compile-command", "make lock",
                           *source, *extras, "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"uv could not resolve (is the package index reachable?): {done.stderr}"
    assert out.read_text() == (REPO / "requirements" / lock_name).read_text(), \
        f"requirements/{lock_name} is stale: run `make lock`"


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the runtime lock and the app only, built as the Dockerfile builds it."""
    root = tmp_path_factory.mktemp("runtime")
    source = root / "src"  # a copy, as the image's build context: no build files left in the repo
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "--no-deps",
         "-r", str(REPO / "requirements" / "runtime.txt")],
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(source)],
        [str(venv / "bin" / "pip"), "check"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(step)}:\n{done.stdout}\n{done.stderr}"
    return venv


def test_every_module_imports_from_the_runtime_install(runtime_venv):
    # -I: nothing from the repo or the environment on sys.path, only what was installed.
    # app.http.wsgi builds the app from the config when imported: the gunicorn test below loads it.
    script = (
        "import importlib, pkgutil, app, gunicorn.workers.ggevent\n"
        f"assert app.__file__.startswith({str(runtime_venv)!r}), app.__file__\n"
        "for mod in pkgutil.walk_packages(app.__path__, 'app.'):\n"
        "    if mod.name != 'app.http.wsgi':\n"
        "        importlib.import_module(mod.name)\n"
    )
    done = subprocess.run([str(runtime_venv / "bin" / "python"), "-I", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr


@pytest.mark.e2e
@pytest.mark.integration
def test_runtime_only_install_boots_gunicorn_and_publishes(runtime_venv, tmp_path, rabbit):
    run_dir = tmp_path / "run"  # gunicorn.conf.py alone: the app comes from the venv, not the repo
    run_dir.mkdir()
    shutil.copy(REPO / "gunicorn.conf.py", run_dir)
    queue = rabbit.queue("runtime")
    gw = GatewayProcess(tmp_path, "NO_OF_CONNECTIOS,1\nRMQ_CONN_STR,rt,guest:guest@127.0.0.1:5672/\n",
                        workers=1, python=str(runtime_venv / "bin" / "python"), cwd=run_dir)
    try:
        gw.start()
        assert publish(gw.port, f"rt|{queue}|from the runtime install".encode()) == (200, {"status": "ok"})
    finally:
        assert gw.stop() == 0
    assert rabbit.bodies(queue) == [b"from the runtime install"]
