"""``ropepatch run`` for real: a tree of Python processes (like TGI's shards), each enabled alike."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from launcher_helpers import ROOT, clean_env, ropepatch_cli

from ropepatch.launcher import BOOTSTRAP_DIR

# Each process reports what it sees. It asks ropepatch for the spec of a small Llama config under
# the inherited overrides, so "same overrides" means the same resolved numbers, not just a string.
REPORT = r"""
import json, os, sys
import sitecustomize
import ropepatch.runtime as rt

def report(role):
    state = rt.current()
    out = {"role": role, "pid": os.getpid(), "enabled": rt.is_enabled()}
    if state is not None:
        spec = state.spec_for({"model_type": "llama", "hidden_size": 512, "num_attention_heads": 8,
                               "max_position_embeddings": 4096, "_name_or_path": "org/tiny-llama"})
        out.update(env=[o.to_env() for o in state.env], method=spec.method, factor=spec.effective_factor,
                   original=spec.effective_original, attention=spec.attention_factor(), strict=state.strict)
    out["user_sitecustomize"] = getattr(sitecustomize, "MARK", None)
    out["bootstrap_on_path"] = os.environ.get("PYTHONPATH", "").split(os.pathsep).count(sys.argv[1])
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps(out) + "\n")
"""

SHARD = (
    REPORT
    + r"""
report("shard " + sys.argv[3])
"""
)

# The launched program: starts shards the ways servers do (directly, through a non-Python
# parent as TGI's Rust launcher does, and with multiprocessing's spawn as vLLM's engine core).
LAUNCHER = (
    REPORT
    + r"""
import multiprocessing as mp, subprocess

def spawned(bootstrap, log):
    sys.argv = ["spawned", bootstrap, log]
    report("spawn child")

if __name__ == "__main__":
    report("launched command")
    shard = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shard.py")
    procs = [subprocess.Popen([sys.executable, shard, sys.argv[1], sys.argv[2], str(rank)]) for rank in (0, 1)]
    procs.append(subprocess.Popen(["sh", "-c", f'exec "{sys.executable}" "{shard}" "$0" "$1" 2', sys.argv[1], sys.argv[2]]))
    for p in procs:
        assert p.wait() == 0
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=spawned, args=(sys.argv[1], sys.argv[2]))
    child.start(); child.join()
    assert child.exitcode == 0
"""
)


def _write_programs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "shard.py").write_text(SHARD)
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    return launcher, tmp_path / "reports.jsonl"


def test_every_process_in_the_tree_is_enabled_with_the_same_overrides(tmp_path, user_sitecustomize):
    launcher, log = _write_programs(tmp_path)
    sc_log = tmp_path / "user_sc.log"
    env = clean_env(USER_SC_LOG=str(sc_log))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(user_sitecustomize)])
    proc = ropepatch_cli(
        "run", "--method", "yarn", "--factor", "4", "--set", "beta_fast=16", "--strict",
        "--", sys.executable, str(launcher), str(BOOTSTRAP_DIR), str(log),
        env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    roles = sorted(r["role"] for r in reports)
    assert roles == ["launched command", "shard 0", "shard 1", "shard 2", "spawn child"]
    assert len({r["pid"] for r in reports}) == 5
    for r in reports:
        assert r["enabled"] is True, r
        assert r["env"] == ["yarn:factor=4.0,beta_fast=16.0"], r
        assert (r["method"], r["factor"], r["original"]) == ("yarn", 4.0, 4096), r
        # YaRN's published temperature 0.1 ln s + 1 at s=4 (methods.md vector)
        assert abs(r["attention"] - 1.138629436111989) < 1e-12, r
        assert r["strict"] is True
        # the user's sitecustomize ran, and is what `import sitecustomize` gives
        assert r["user_sitecustomize"] == "user sitecustomize", r
        # no recursion: the bootstrap folder is on PYTHONPATH exactly once at every level
        assert r["bootstrap_on_path"] == 1, r
    # the user's sitecustomize ran in each process; `ropepatch run` execs the command in its own pid,
    # so that pid ran it twice (once as ropepatch, once as the command); multiprocessing's resource
    # tracker is one more Python process
    pids = sc_log.read_text().split()
    assert {str(r["pid"]) for r in reports} <= set(pids)
    launched = next(r["pid"] for r in reports if r["role"] == "launched command")
    assert pids.count(str(launched)) == 2
    assert all(pids.count(str(r["pid"])) == 1 for r in reports if r["pid"] != launched)


def test_bad_overrides_fail_before_the_command_starts(tmp_path):
    marker = tmp_path / "started"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    cases = [
        (["--method", "yran"], "did you mean 'yarn'"),
        (["--method", "yarn", "--set", "beta_fats=16"], "did you mean 'beta_fast'"),
        (["--runtimes", "vllmm"], "unknown runtime 'vllmm'"),
        (["--log", "loud"], "log level must be"),
    ]
    for flags, message in cases:
        proc = ropepatch_cli("run", *flags, "--", *command, cwd=tmp_path)
        assert proc.returncode == 2, (flags, proc.stderr)
        assert message in proc.stderr, (flags, proc.stderr)
        assert proc.stderr.startswith("ropepatch: error:"), proc.stderr
        assert "Traceback" not in proc.stderr
        assert not marker.exists(), flags
    # an inherited $ROPEPATCH that children would reject fails here too
    proc = ropepatch_cli("run", "--", *command, env=clean_env(ROPEPATCH="yarn:factr=4"), cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean 'factor'" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_exit_status_and_missing_command(tmp_path):
    proc = ropepatch_cli("run", "--", sys.executable, "-c", "import sys; sys.exit(7)", cwd=tmp_path)
    assert proc.returncode == 7  # exec: the command's own status
    proc = ropepatch_cli("run", "--", "no-such-command-ropepatch-test", cwd=tmp_path)
    assert proc.returncode == 127 and "command not found" in proc.stderr
    proc = ropepatch_cli("run", "--method", "yarn", cwd=tmp_path)
    assert proc.returncode == 2 and "needs a command" in proc.stderr


def test_run_overrides_beat_the_inherited_env_and_nesting_does_not_stack(tmp_path):
    # inner `ropepatch run` inside an outer one: later overrides win, bootstrap stays on the path once
    program = (
        "import os, sys, ropepatch.runtime as rt; st = rt.current();"
        "spec = st.spec_for({'model_type': 'llama', 'head_dim': 64, 'max_position_embeddings': 2048});"
        f"print(spec.method, spec.effective_factor, os.environ['PYTHONPATH'].split(os.pathsep).count({str(BOOTSTRAP_DIR)!r}))"
    )
    env = clean_env(ROPEPATCH="linear:factor=2")
    proc = ropepatch_cli(
        "run", "--method", "ntk", "--alpha", "3", "--",
        sys.executable, "-m", "ropepatch", "run", "--factor", "8", "--", sys.executable, "-c", program,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    method, factor, count = proc.stdout.split()
    assert (method, float(factor), int(count)) == ("ntk", 8.0, 1)


def test_a_process_can_opt_out_and_strict_children_stop_on_bad_settings(tmp_path):
    program = "import ropepatch.runtime as rt; print(rt.is_enabled())"
    env = clean_env(ROPEPATCH_AUTOENABLE="0", PYTHONPATH=os.pathsep.join([str(BOOTSTRAP_DIR), str(ROOT)]))
    proc = ropepatch_cli("--version", env=env)  # the bootstrap is harmless to ropepatch itself
    assert proc.returncode == 0
    import subprocess

    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"
    # a child whose environment was broken after launch: warns and runs, or (strict) exits 2 at start-up
    bad = clean_env(ROPEPATCH="yran", PYTHONPATH=os.pathsep.join([str(BOOTSTRAP_DIR), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", program], env=bad, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "False"
    assert "ropepatch: not enabled in process" in out.stderr and "did you mean 'yarn'" in out.stderr
    bad["ROPEPATCH_STRICT"] = "1"
    out = subprocess.run([sys.executable, "-c", program], env=bad, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "did you mean 'yarn'" in out.stderr and "Traceback" not in out.stderr


def test_print_env_shows_what_the_command_gets(tmp_path):
    proc = ropepatch_cli(
        "run",
        "--method",
        "yarn",
        "--factor",
        "4",
        "--kernels",
        "--runtimes",
        "vllm,tgi",
        "--log",
        "info",
        "--print-env",
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert lines["ROPEPATCH"] == "yarn:factor=4.0"
    assert lines["ROPEPATCH_AUTOENABLE"] == "1" and lines["ROPEPATCH_KERNELS"] == "1"
    assert lines["ROPEPATCH_RUNTIMES"] == "vllm,tgi" and lines["ROPEPATCH_LOG"] == "info"
    assert lines["PYTHONPATH"].split(os.pathsep)[0] == str(BOOTSTRAP_DIR)
