"""``ropepatch run -- llama-server -m model.gguf ...``: the llama.cpp flags for the GGUF's resolved spec.

llama.cpp binaries are not Python, so the environment that enables ropepatch in Python children
does nothing for them. Instead the GGUF named by ``-m``/``--model`` is read (header only), its spec
resolved with the usual precedence (the run's overrides > ``$ROPEPATCH`` > known checkpoints > the
GGUF's keys), translated by :mod:`ropepatch.llamacpp` and appended to the command line. Flags the
user already gave win and are reported; a spec llama.cpp cannot run stops before anything starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ropepatch.errors import RopeConfigError

__all__ = ["LlamaCppCommand", "is_llamacpp_binary", "llamacpp_command"]

#: llama.cpp's programs are installed as llama-<tool> (llama-server, llama-cli, llama-perplexity, ...);
#: ik_llama.cpp and some packagers keep the same names
_BINARY = re.compile(r"^llama-[a-z0-9][a-z0-9_-]*$")

#: the option names (every spelling) that carry one value, for the flags ropepatch may add
_ALIASES: dict[str, tuple[str, ...]] = {
    "--rope-scaling": ("--rope-scaling",),
    # both set rope_freq_scale: a user giving either one decides it
    "--rope-scale": ("--rope-scale", "--rope-freq-scale"),
    "--rope-freq-base": ("--rope-freq-base",),
    "--yarn-orig-ctx": ("--yarn-orig-ctx",),
    "--yarn-ext-factor": ("--yarn-ext-factor",),
    "--yarn-beta-fast": ("--yarn-beta-fast",),
    "--yarn-beta-slow": ("--yarn-beta-slow",),
    "-c": ("-c", "--ctx-size"),
}
_MODEL = ("-m", "--model")
_REMOTE = ("-hf", "-hfr", "--hf-repo", "-mu", "--model-url", "-dr", "--docker-repo")


def is_llamacpp_binary(program: str) -> bool:
    """Whether ``program`` (a path or name) is one of llama.cpp's binaries (``llama-server``, ``llama-cli``, ...)."""
    name = os.path.basename(program)
    if name.lower().endswith(".exe"):
        name = name[:-4]
    return bool(_BINARY.match(name))


@dataclass
class LlamaCppCommand:
    """The command to run and what ropepatch did to it."""

    argv: list[str]
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the user's flags that won over ropepatch's
    model: str | None = None
    summary: str = ""

    def report(self) -> str:
        """The one line ``ropepatch run`` prints on stderr."""
        if self.model is None:
            return self.summary
        head = f"ropepatch: {os.path.basename(self.model)}: {self.summary}"
        if self.added:
            head += "; added " + " ".join(self.added)
        else:
            head += "; nothing added"
        if self.kept:
            head += "; kept yours: " + " ".join(self.kept)
        return head


def _option_values(argv: Sequence[str]) -> dict[str, str]:
    """The options in ``argv`` with their values (``--x v`` and ``--x=v``; the last one wins, as in llama.cpp)."""
    out: dict[str, str] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and "=" in arg and arg.startswith("--"):
            name, _, value = arg.partition("=")
            out[name] = value
        elif arg.startswith("-") and i + 1 < len(argv):
            out.setdefault(arg, "")
            nxt = argv[i + 1]
            if not nxt.startswith("-") or _is_number(nxt):
                out[arg] = nxt
                i += 1
        elif arg.startswith("-"):
            out[arg] = ""
        i += 1
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _kv_overrides(argv: Sequence[str]) -> set[str]:
    """Keys the user overrides with ``--override-kv KEY=TYPE:VALUE[,KEY=...]``."""
    keys: set[str] = set()
    for i, arg in enumerate(argv):
        value = None
        if arg == "--override-kv" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--override-kv="):
            value = arg.partition("=")[2]
        if value:
            keys.update(item.split("=", 1)[0].strip() for item in value.split(","))
    return keys


def _pairs(flags: Sequence[str]) -> list[tuple[str, str]]:
    return [(flags[i], flags[i + 1]) for i in range(0, len(flags), 2)]


def llamacpp_command(
    argv: Sequence[str], overrides: Mapping[str, Any], *, spec: Any = None, context: bool = True
) -> LlamaCppCommand:
    """``argv`` with the llama.cpp flags for its GGUF's spec appended (the user's own flags win).

    ``spec`` replaces detection (a caller that resolved it already, e.g. with per-model overrides);
    ``context=False`` leaves ``-c`` out.

    Raises :class:`~ropepatch.errors.RopeConfigError` (``LlamaCppUnsupported`` for a method llama.cpp cannot
    run) before anything starts.
    """
    from ropepatch.detection import detect
    from ropepatch.llamacpp import settings_for_gguf

    argv = list(argv)
    given = _option_values(argv)
    model = next((given[k] for k in _MODEL if given.get(k)), None)
    if model is None:
        remote = next((k for k in _REMOTE if k in given), None)
        where = (
            f"the model comes from {remote}, which ropepatch cannot read before llama.cpp downloads it"
            if remote
            else "no -m/--model given"
        )
        if overrides:
            raise RopeConfigError(
                f"{os.path.basename(argv[0])}: {where}; pass a local file with -m so the overrides can be applied",
                key="-m",
            )
        return LlamaCppCommand(argv, summary=f"ropepatch: {os.path.basename(argv[0])}: {where}; nothing added")
    if not os.path.exists(model):
        raise RopeConfigError("no such file (given with -m)", path=model, key="-m")
    if spec is None:
        spec = detect(model, emit_warnings=False, **overrides)
    settings, facts = settings_for_gguf(model, spec)
    result = LlamaCppCommand(argv, model=model, summary=settings.describe())
    if spec.method == "default" and not overrides and not spec.overridden and settings.attn_factor_key is None:
        result.summary = "plain RoPE per its metadata"
        return result  # llama.cpp reads the same from the GGUF
    user_kv = _kv_overrides(argv)
    for flag, value in _pairs(settings.flags(facts.arch, context=context)):
        if flag == "--override-kv":
            key = value.split("=", 1)[0]
            if key in user_kv:
                result.kept.append(f"--override-kv {key}=...")
                continue
        else:
            mine = next((a for a in _ALIASES.get(flag, (flag,)) if a in given), None)
            if mine is not None:
                result.kept.append(f"{mine} {given[mine]}".rstrip())
                continue
        result.argv += [flag, value]
        result.added += [flag, value]
    return result
