"""Parse benchmark: a DagBag load of N generated image specs vs dag-factory loading N equivalent YAML DAGs.

Both sides are parsed by Airflow's own ``DagBag`` in a fresh Python process each (imports counted), alternating
Image Factory and dag-factory ``repeat`` times; the medians are reported. Each worker times the DagBag
construction with ``time.perf_counter`` and prints JSON; the parent times the whole process and reads its peak
RSS from ``os.wait4``. Both bags must hold N DAGs of the same 5 tasks and 8 edges, with no import error.

    PYTHONPATH=plugins:. .venv/bin/python -m bench.parse [--n 1000] [--repeat 3] [--profile]

This module imports only the standard library at the top: the worker's timings start before Airflow is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import Result, Row

PROJECT = Path(__file__).resolve().parents[1]

STEPS = ("create_builder_network", "launch_builder_instance", "configure", "register_image", "tear_down")
#: The dependencies of an Image Factory DAG (plugins/image_factory/dag.py), XCom arguments and the teardown's
#: setup included. The dag-factory DAGs get exactly these; both bags are checked against them.
EDGES = (
    ("create_builder_network", "launch_builder_instance"),
    ("create_builder_network", "configure"),
    ("create_builder_network", "register_image"),
    ("create_builder_network", "tear_down"),
    ("launch_builder_instance", "configure"),
    ("launch_builder_instance", "register_image"),
    ("configure", "register_image"),
    ("register_image", "tear_down"),
)
#: The steps that call the cloud API run in the image_factory pool.
POOLED = ("create_builder_network", "launch_builder_instance", "register_image", "tear_down")
SCHEDULE = "0 2 * * *"
PYTHON_OPERATOR = "airflow.providers.standard.operators.python.PythonOperator"
REGIONS = ("eu-west-1", "us-east-1", "us-west-2", "ap-southeast-2")
SIZES = ("small", "medium", "large", "m6i.large")
ROLES = ("appserver", "dbserver", "webserver", "cache")
SSM_ORIGIN = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
FILTER_ORIGIN = {"name": "al2023-ami-2023.*-x86_64", "owners": ["amazon"], "architecture": "x86_64"}

#: Every worker process is killed past this many seconds (a run never hangs the benchmark).
WORKER_TIMEOUT = 300.0
TARGET_RATIO = 4.0


# --- generation -------------------------------------------------------------------------------------------

def _name(i: int) -> str:
    return f"bench-image-{i:04d}"


def _origin(i: int) -> str | dict:
    # Three origin forms in turn: an SSM public parameter, a literal AMI id, a name/owners filter.
    return (SSM_ORIGIN, f"ami-{0x0123456789abcdef0 + i:017x}", FILTER_ORIGIN)[i % 3]


def _q(value) -> str:
    """A YAML scalar or flow collection (JSON is YAML)."""
    return json.dumps(value)


def spec_yaml(i: int) -> str:
    """Image Factory spec number ``i``: valid, and varied in region, size, origin form, tool and role."""
    role = ROLES[i % len(ROLES)]
    lines = [
        "image:",
        f"  name: {_name(i)}",
        "  platform: aws",
        f"  origin: {_q(_origin(i))}",
        f"  region: {REGIONS[i % len(REGIONS)]}",
        f"  instance_size: {SIZES[(i // 2) % len(SIZES)]}",
        "  subnet: ${IMAGE_BUILDER_SUBNET_ID}",
        "  ssh_key: ${IMAGE_BUILDER_SSH_KEY}",
        f"  schedule: {_q(SCHEDULE)}",
        f"  description: {_q(f'Benchmark image {i} ({role})')}",
        "  tags:",
        f"    team: team-{i % 7}",
        "    purpose: parse-benchmark",
        "  configure:",
    ]
    if i % 2:
        lines += ["    tool: servermaker", "    code_repo: servermaker.shopspinner.xyz"]
    else:
        lines += ["    tool: shell"]
    lines.append(f"    server_role: {role}")
    return "\n".join(lines) + "\n"


def dagfactory_yaml(i: int) -> str:
    """The dag-factory DAG equivalent to spec ``i``: same dag_id, the 5 steps as PythonOperators with the same
    dependencies, pool, schedule, catchup, max_active_runs, tags, trigger params and default_args (retries,
    delay, backoff), and the spec's data as each step's op_kwargs."""
    role, region = ROLES[i % len(ROLES)], REGIONS[i % len(REGIONS)]
    step_kwargs = {"region": region, "origin": _origin(i),
                   "instance_size": SIZES[(i // 2) % len(SIZES)], "server_role": role,
                   "tool": "servermaker" if i % 2 else "shell"}
    lines = [
        f"{_name(i)}:",
        f"  description: {_q(f'Build the {_name(i)} image in {region}')}",
        f"  schedule: {_q(SCHEDULE)}",
        "  start_date: 2026-01-01",
        "  catchup: false",
        "  max_active_runs: 1",
        f"  tags: {_q(['image-build', 'aws', f'role:{role}'])}",
        f"  params: {_q({'origin': None, 'instance_size': None, 'server_role': None, 'extra_tags': {}})}",
        "  default_args:",
        "    owner: image-factory",
        "    retries: 3",
        "    retry_delay: {__type__: datetime.timedelta, seconds: 20}",
        "    retry_exponential_backoff: true",
        "    max_retry_delay: {__type__: datetime.timedelta, minutes: 10}",
        "  tasks:",
    ]
    for step in STEPS:
        lines += [
            f"    {step}:",
            f"      operator: {PYTHON_OPERATOR}",
            f"      python_callable: bench.dagfactory_steps.{step}",
            f"      op_kwargs: {_q(step_kwargs)}",
        ]
        if step in POOLED:
            lines.append("      pool: image_factory")
        upstream = [up for up, down in EDGES if down == step]
        if upstream:
            lines.append(f"      dependencies: {_q(upstream)}")
    return "\n".join(lines) + "\n"


DAGFACTORY_LOADER = '''"""The Airflow DAG folder's one file: dag-factory makes a DAG per YAML file of {configs}."""

from dagfactory import load_yaml_dags

load_yaml_dags(globals_dict=globals(), dags_folder={configs!r})
'''


def generate(n: int, root: Path) -> dict[str, Path]:
    """Write N specs and N dag-factory YAML DAGs under ``root``, and each side's DAG folder."""
    folders = {key: root / key for key in ("specs", "if_dags", "df_configs", "df_dags")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for i in range(n):
        (folders["specs"] / f"{_name(i)}.yaml").write_text(spec_yaml(i))
        (folders["df_configs"] / f"{_name(i)}.yml").write_text(dagfactory_yaml(i))
    # Image Factory: a copy of the project's DAG file, pointed at the specs by [image_factory] specs_folder.
    shutil.copy(PROJECT / "dags" / "image_builds.py", folders["if_dags"] / "image_builds.py")
    (folders["df_dags"] / "dagfactory_dags.py").write_text(DAGFACTORY_LOADER.format(configs=str(folders["df_configs"])))
    return folders


# --- the worker: one fresh process per measurement -----------------------------------------------------------

def _timetable(dag) -> str:
    timetable = dag.timetable
    return f"{type(timetable).__name__}({getattr(timetable, '_expression', getattr(timetable, 'expression', ''))})"


def worker(folder: str, profile_to: str | None = None) -> dict:
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    imported = time.perf_counter()
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu_started = time.process_time()
    bag = DagBag(dag_folder=folder)
    built, cpu_built = time.perf_counter(), time.process_time()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile_to)
    # What the dag-processor does next with each DAG it parsed (in the same process, within its time limit).
    for dag in bag.dags.values():
        DagSerialization.to_dict(dag)
    serialized = time.perf_counter()
    edges = set(EDGES)
    task_counts: dict[int, int] = {}
    timetables: dict[str, int] = {}
    wrong_edges = []
    for dag_id, dag in bag.dags.items():
        task_counts[len(dag.tasks)] = task_counts.get(len(dag.tasks), 0) + 1
        timetables[_timetable(dag)] = timetables.get(_timetable(dag), 0) + 1
        found = {(up.task_id, task.task_id) for task in dag.tasks for up in task.upstream_list}
        if found != edges:
            wrong_edges.append(dag_id)
    return {
        "import_airflow_s": imported - started,
        "dagbag_s": built - imported,
        "dagbag_cpu_s": cpu_built - cpu_started,
        "serialize_s": serialized - built,
        "dags": len(bag.dags),
        "tasks": sum(len(dag.tasks) for dag in bag.dags.values()),
        "task_counts": task_counts,
        "timetables": timetables,
        "wrong_edges": wrong_edges[:5],
        "wrong_edges_count": len(wrong_edges),
        "import_errors": {path: error[-2000:] for path, error in list(bag.import_errors.items())[:3]},
        "import_error_count": len(bag.import_errors),
    }


def warmup() -> dict:
    """Import what both sides import (compiled bytecode and page cache warm for both); nothing timed."""
    import dagfactory  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag  # noqa: F401
    from airflow.providers.standard.operators.python import PythonOperator  # noqa: F401

    import image_factory.dag  # noqa: F401

    return {}


def phases(specs: str) -> dict:
    """Image Factory's parse step by step, outside the DagBag, without a profiler: CPU seconds of this process
    (``time.process_time``: a busy machine slows the wall clock more than it does these)."""
    clock = time.process_time
    started = clock()
    from airflow.sdk import DAG  # noqa: F401  the DAG classes, imported by the DagBag side too
    from airflow.serialization.serialized_objects import DagSerialization

    airflow_imported = clock()
    import yaml

    from image_factory import settings
    from image_factory.dag import build_dag
    from image_factory.spec import ImageSpec, load_specs

    ours_imported = clock()
    texts = [path.read_text() for path in sorted(Path(specs).glob("*.yaml"))]
    documents = [yaml.load(text, Loader=yaml.CSafeLoader) for text in texts]
    yaml_loaded = clock()
    for document in documents:
        ImageSpec.model_validate(document["image"])
    validated = clock()
    loaded, errors = load_specs(Path(specs))
    specs_loaded = clock()
    deployment = settings.load()
    dags = [build_dag(spec, deployment) for spec in loaded]
    dags_built = clock()
    for dag in dags:
        DagSerialization.to_dict(dag)
    serialized = clock()
    return {
        "specs": len(loaded), "errors": len(errors), "dags": len(dags),
        "import_airflow_s": airflow_imported - started,
        "import_image_factory_s": ours_imported - airflow_imported,
        "yaml_load_s": yaml_loaded - ours_imported,
        "pydantic_validate_s": validated - yaml_loaded,
        "load_specs_s": specs_loaded - validated,
        "build_dag_s": dags_built - specs_loaded,
        "serialize_s": serialized - dags_built,
    }


# --- the parent ----------------------------------------------------------------------------------------------

def worker_env(home: Path, dags_folder: Path, specs: Path) -> dict[str, str]:
    """The same environment for both sides but the DAG folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # One DAG file makes N DAGs on both sides: Airflow's 30 s per-file import limit is lifted for the benchmark.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
        "AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(specs),
        # dag-factory's telemetry (sent on DAG runs only, none here) stays off: loopback traffic only.
        "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
        "DO_NOT_TRACK": "1",
        "SCARF_NO_ANALYTICS": "1",
        "PYTHONPATH": os.pathsep.join([str(PROJECT / "plugins"), str(PROJECT)]),
    })
    return env


def run_process(args: list[str], env: dict[str, str], log: Path, timeout: float = WORKER_TIMEOUT) -> dict:
    """Run ``python -m bench.parse ARGS`` and return its JSON, the wall seconds and the peak RSS (MiB)."""
    import subprocess

    stdout, stderr = log.with_suffix(".out"), log.with_suffix(".err")
    with stdout.open("w") as out, stderr.open("w") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "bench.parse", *args], cwd=PROJECT, env=env,
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - started
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() > deadline:
                process.send_signal(signal.SIGKILL)
                os.wait4(process.pid, 0)
                process.returncode = -9
                raise RuntimeError(f"bench.parse {' '.join(args)}: killed after {timeout:.0f} s (log: {stderr})")
            time.sleep(0.02)
    if process.returncode != 0:
        tail = stderr.read_text()[-3000:]
        raise RuntimeError(f"bench.parse {' '.join(args)} exited {process.returncode}:\n{tail}")
    result = json.loads(stdout.read_text().strip().splitlines()[-1])
    result["wall_s"] = wall
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def check(side: str, result: dict, n: int) -> None:
    """Fail loudly unless the bag holds N DAGs of 5 tasks with the expected edges and no import error."""
    problems = []
    if result["import_error_count"]:
        problems.append(f"{result['import_error_count']} import errors: {result['import_errors']}")
    if result["dags"] != n:
        problems.append(f"{result['dags']} DAGs, expected {n}")
    if result["task_counts"] != {str(len(STEPS)): n}:
        problems.append(f"tasks per DAG {result['task_counts']}, expected {len(STEPS)} each")
    if result["wrong_edges_count"]:
        problems.append(f"{result['wrong_edges_count']} DAGs with other dependencies, e.g. {result['wrong_edges']}")
    if len(result["timetables"]) != 1 or SCHEDULE not in next(iter(result["timetables"])):
        problems.append(f"schedules {result['timetables']}, expected {SCHEDULE!r} everywhere")
    if problems:
        raise RuntimeError(f"parse benchmark, {side}: " + "; ".join(problems))



#: Where the profiled DagBag time goes: (file name, function) -> what it is. Cumulative times, so they nest.
PROFILE_BUCKETS = (
    (("spec.py", "load_specs"), "`load_specs`: read, parse, validate every spec"),
    (("__init__.py", "load"), "of which `yaml.load` (PyYAML with libyaml's CSafeLoader)"),
    (("main.py", "model_validate"), "of which pydantic `ImageSpec.model_validate`"),
    (("parameters.py", "check_parameters"), "of which `check_parameters` (a `model_dump` per spec)"),
    (("dag.py", "build_dag"), "`build_dag` x N"),
    (("dag.py", "trigger_params"), "of which `trigger_params` (4 `Param`s per DAG)"),
    (("dag.py", "_validate_params"), "of which Airflow's jsonschema check of the params (scheduled DAGs)"),
    (("dag.py", "_doc"), "of which `_doc` (doc_md)"),
    (("operator.py", "apply_defaults"), "of which operator creation (5 per DAG)"),
    (("operator.py", "_get_parent_defaults"), "of which Airflow deep-copying the DAG's params into each task"),
    (("dagbag.py", "bag_dag"), "`DagBag.bag_dag`: Airflow's checks of each DAG"),
)


def _profile_buckets(stats_file: Path) -> tuple[float, list[tuple[str, float]]]:
    import pstats

    stats = pstats.Stats(str(stats_file)).stats  # (file, line, function) -> (cc, nc, tottime, cumtime, callers)
    total = max((ct for (_f, _l, name), (_cc, _nc, _tt, ct, _c) in stats.items() if name == "__init__"
                 and _f.endswith("dagbag.py")), default=0.0)
    rows = []
    for (suffix, function), label in PROFILE_BUCKETS:
        seconds = sum(ct for (file, _line, name), (_cc, _nc, _tt, ct, _c) in stats.items()
                      if name == function and file.endswith(suffix)
                      and (suffix != "__init__.py" or "yaml" in file)
                      and (suffix != "main.py" or "pydantic" in file)
                      and (suffix != "dag.py" or "image_factory" in file or "sdk/definitions" in file)
                      and (suffix != "operator.py" or "sdk/bases" in file))
        rows.append((label, seconds))
    return total, rows


def _profile_top(stats_file: Path, top: int = 15) -> str:
    import io
    import pstats

    buffer = io.StringIO()
    pstats.Stats(str(stats_file), stream=buffer).strip_dirs().sort_stats("tottime").print_stats(top)
    text = buffer.getvalue()
    start = text.find("   ncalls")  # the table, not pstats' preamble
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def run(n: int = 1000, repeat: int = 3, profile: bool | None = None, profile_n: int = 250) -> Result:
    """Generate, measure both sides alternately, check, and return the rows (and details)."""
    from importlib import metadata

    root = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    try:
        folders = generate(n, root)
        home = root / "airflow-home"
        home.mkdir()
        logs = root / "logs"
        logs.mkdir()
        sides = {
            "image-factory": worker_env(home, folders["if_dags"], folders["specs"]),
            "dag-factory": worker_env(home, folders["df_dags"], folders["specs"]),
        }
        bags = {"image-factory": folders["if_dags"], "dag-factory": folders["df_dags"]}
        # One untimed process first imports both sides' code: bytecode and page cache are warm for both alike.
        run_process(["warmup"], sides["image-factory"], logs / "warmup")
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for attempt in range(repeat):
            for side, env in sides.items():
                result = run_process(["worker", str(bags[side])], env, logs / f"{side}-{attempt}")
                check(side, result, n)
                results[side].append(result)
                print(f"  parse {side} #{attempt + 1}: DagBag {result['dagbag_s']:.2f} s, "
                      f"process {result['wall_s']:.2f} s ({result['cpu_s']:.2f} s CPU), "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)

        def median(side: str, key: str) -> float:
            return statistics.median(r[key] for r in results[side])

        def pair(key: str) -> tuple[float, float]:
            return median("image-factory", key), median("dag-factory", key)

        (ours_bag, peer_bag), (ours_wall, peer_wall) = pair("dagbag_s"), pair("wall_s")
        (ours_cpu, peer_cpu), (ours_rss, peer_rss) = pair("cpu_s"), pair("peak_rss_mib")
        ours_imp, peer_imp = pair("import_airflow_s")
        (ours_bag_cpu, peer_bag_cpu), (ours_ser, peer_ser) = pair("dagbag_cpu_s"), pair("serialize_s")
        ratio = peer_bag / ours_bag
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        name = f"parse, {n} DAGs"
        rows = [
            Row(name, "DagBag construction (s, median)", f"{ours_bag:.2f}", f"{peer_bag:.2f}", f"{ratio:.2f}x",
                f"{verdict} the {TARGET_RATIO:.0f}x goal"),
            Row(name, "per DAG (ms)", f"{1000 * ours_bag / n:.1f}", f"{1000 * peer_bag / n:.1f}", f"{ratio:.2f}x"),
            Row(name, "DagBag construction, CPU (s, median)", f"{ours_bag_cpu:.2f}", f"{peer_bag_cpu:.2f}",
                f"{peer_bag_cpu / ours_bag_cpu:.2f}x", "this process's CPU time: less swayed by a busy machine"),
            Row(name, "then serializing every DAG (s, median)", f"{ours_ser:.2f}", f"{peer_ser:.2f}",
                f"{peer_ser / ours_ser:.2f}x", "`DagSerialization.to_dict`, as the dag-processor does next"),
            Row(name, "whole process, wall (s, median)", f"{ours_wall:.2f}", f"{peer_wall:.2f}",
                f"{peer_wall / ours_wall:.2f}x", "interpreter start, imports, DagBag, checks"),
            Row(name, "whole process, CPU (s, median)", f"{ours_cpu:.2f}", f"{peer_cpu:.2f}",
                f"{peer_cpu / ours_cpu:.2f}x", "user + system: less swayed by a busy machine"),
            Row(name, "of which `import DagBag`, wall (s)", f"{ours_imp:.2f}", f"{peer_imp:.2f}",
                f"{peer_imp / ours_imp:.2f}x", "the same Airflow import on both sides"),
            Row(name, "peak RSS (MiB, median)", f"{ours_rss:.0f}", f"{peer_rss:.0f}", f"{peer_rss / ours_rss:.2f}x",
                "ru_maxrss of the worker process"),
            Row(name, "DAGs x tasks, import errors", f"{n} x {len(STEPS)}, 0", f"{n} x {len(STEPS)}, 0", "",
                f"checked: the same {len(EDGES)} edges and schedule in every DAG"),
        ]
        runs = "; ".join(
            f"{side} " + ", ".join(f"{r['dagbag_s']:.2f}" for r in results[side]) for side in sides)
        details = [
            f"**Parse.** {n} generated specs vs {n} equivalent dag-factory YAML DAGs "
            f"(dag-factory {metadata.version('dag-factory')}, Airflow {metadata.version('apache-airflow')}), each "
            f"side parsed by `DagBag` in a fresh process, the sides alternating, {repeat} runs each after one "
            f"untimed warm-up import; medians. DagBag seconds of each run: {runs}. Ratio = dag-factory / Image "
            f"Factory. Both sides run with the same environment (`AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=600`: on "
            f"both sides one DAG file makes all {n} DAGs, around Airflow's default limit of 30 s per file), "
            f"dag-factory telemetry off.",
        ]
        want_profile = profile if profile is not None else ratio < TARGET_RATIO
        if want_profile:
            details += _profile(min(n, profile_n), root, logs, ratio)
        return Result(rows, details)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _profile(n: int, root: Path, logs: Path, ratio: float) -> list[str]:
    """Where Image Factory's parse time goes, on N specs: phases without a profiler, then a cProfile of DagBag."""
    folders = generate(n, root / "profile")
    env = worker_env(root / "airflow-home", folders["if_dags"], folders["specs"])
    phase = run_process(["phases", str(folders["specs"])], env, logs / "phases")
    stats_file = logs / "image-factory.pstats"
    profiled = run_process(["worker", str(folders["if_dags"]), "--profile-to", str(stats_file)], env,
                           logs / "profile")
    check("image-factory (profiled)", profiled, n)

    def ms(seconds: float) -> str:
        return f"{1000 * seconds / n:.2f}"

    phases_table = "\n".join([
        f"| phase, {n} specs, no profiler | CPU s | per spec (ms) |",
        "|---|---:|---:|",
        f"| `yaml.load` (libyaml's CSafeLoader) | {phase['yaml_load_s']:.2f} | {ms(phase['yaml_load_s'])} |",
        f"| `ImageSpec.model_validate` (pydantic) | {phase['pydantic_validate_s']:.2f} "
        f"| {ms(phase['pydantic_validate_s'])} |",
        f"| `load_specs` (read, YAML, validation, parameter checks, hash) | {phase['load_specs_s']:.2f} "
        f"| {ms(phase['load_specs_s'])} |",
        f"| `build_dag` (DAG, params, doc, 5 tasks, edges) | {phase['build_dag_s']:.2f} "
        f"| {ms(phase['build_dag_s'])} |",
        f"| `DagSerialization.to_dict` of each DAG (the dag-processor's next step) | {phase['serialize_s']:.2f} "
        f"| {ms(phase['serialize_s'])} |",
    ])
    total, buckets = _profile_buckets(stats_file)
    bucket_table = "\n".join(
        [f"| cProfile of `DagBag(...)`, {n} specs | s (profiled) | share |", "|---|---:|---:|"]
        + [f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f}% |" for label, seconds in buckets]
        + [f"| `DagBag(...)` total | {total:.2f} | 100% |"])
    return [
        f"**Where Image Factory's parse time goes** (profiled because the ratio, {ratio:.2f}x, is below "
        f"{TARGET_RATIO:.0f}x, or on request; measured on {n} specs, costs per spec).",
        phases_table,
        bucket_table,
        "Top functions by own time (cProfile; the profiler slows everything about 2x):\n\n```\n"
        + _profile_top(stats_file) + "\n```",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    bench = sub.add_parser("run", help="the benchmark (the default)")
    bench.add_argument("--n", type=int, default=1000)
    bench.add_argument("--repeat", type=int, default=3)
    bench.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                       help="profile the Image Factory side (default: only when it misses the goal)")
    one = sub.add_parser("worker", help="one DagBag load; prints JSON (internal)")
    one.add_argument("folder")
    one.add_argument("--profile-to")
    phase = sub.add_parser("phases", help="Image Factory's parse phases; prints JSON (internal)")
    phase.add_argument("specs")
    sub.add_parser("warmup", help="import both sides' code (internal)")
    gen = sub.add_parser("generate", help="write the generated folders, to look at them")
    gen.add_argument("root", type=Path)
    gen.add_argument("--n", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.command == "worker":
        print(json.dumps(worker(args.folder, args.profile_to)))
    elif args.command == "phases":
        print(json.dumps(phases(args.specs)))
    elif args.command == "warmup":
        print(json.dumps(warmup()))
    elif args.command == "generate":
        print(json.dumps({k: str(v) for k, v in generate(args.n, args.root).items()}))
    else:
        result = run(getattr(args, "n", 1000), getattr(args, "repeat", 3), getattr(args, "profile", None))
        for row in result.rows:
            print(" | ".join([row.measure, row.ours, row.peer, row.ratio, row.note]))
        print("\n\n".join(result.details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
