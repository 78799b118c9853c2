"""Write tests/openrlhf/train_ppo_ray_flags.json: every flag of OpenRLHF's PPO command line, read
from the pinned release's own source.

    python scripts/openrlhf_flags.py [--version 0.11.2] [--output tests/openrlhf/train_ppo_ray_flags.json]

It downloads the wheel (`pip download openrlhf==VERSION --no-deps`), opens
`openrlhf/cli/train_ppo_ray.py` and reads its `parser.add_argument(...)` calls with `ast`; nothing
from the package is imported or executed. Flags made in a `for prefix in ("actor", "critic")` loop
are expanded for each value. For each flag it records the arity (0 for store_true/store_false, an
int, or "?", "*", "+"), the value type and the literal choices, so tests/openrlhf/test_flags.py can
check every flag chimed-ray emits against that version.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
SOURCE = "openrlhf/cli/train_ppo_ray.py"


def download_source(version: str, into: Path) -> str:
    """The text of SOURCE inside the openrlhf wheel of `version`."""
    subprocess.run([sys.executable, "-m", "pip", "download", f"openrlhf=={version}", "--no-deps", "--quiet",
                    "-d", str(into)], check=True)
    wheel = next(into.glob("openrlhf-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(SOURCE))
        return archive.read(name).decode("utf-8")


def literal(node: ast.AST, env: dict[str, Any]) -> Any:
    """The value of a constant, a literal container, or an f-string over loop variables in `env`."""
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name):
                parts.append(str(env[value.value.id]))
            else:
                raise ValueError(f"line {node.lineno}: unsupported f-string part")
        return "".join(parts)
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.Name) and node.id in ("int", "float", "str", "bool"):
        return node.id
    return ast.literal_eval(node)


def add_argument_calls(statements: list[ast.stmt], env: dict[str, Any]) -> Iterator[tuple[ast.Call, dict]]:
    """Every `*.add_argument(...)` call, with the loop variables bound where it sits."""
    for statement in statements:
        if isinstance(statement, ast.For) and isinstance(statement.target, ast.Name):
            for value in literal(statement.iter, env):
                yield from add_argument_calls(statement.body, {**env, statement.target.id: value})
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.For):
                break  # loops nested deeper are handled when reached as statements
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                yield node, env
        for child in ("body", "orelse"):
            block = getattr(statement, child, None)
            if isinstance(block, list) and not isinstance(statement, ast.For):
                yield from add_argument_calls(block, env)


def describe(call: ast.Call, env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"--flag": {"nargs": ..., "type": ..., "choices": ...}}` for one add_argument call."""
    names = [literal(arg, env) for arg in call.args]
    options = {kw.arg: kw.value for kw in call.keywords if kw.arg}
    action = literal(options["action"], env) if "action" in options else "store"
    if action in ("store_true", "store_false"):
        nargs: Any = 0
    elif "nargs" in options:
        nargs = literal(options["nargs"], env)
    else:
        nargs = 1
    entry: dict[str, Any] = {"nargs": nargs}
    if "type" in options:
        entry["type"] = literal(options["type"], env)
    if "choices" in options:
        entry["choices"] = literal(options["choices"], env)
    return {name: entry for name in names if name.startswith("--")}


def read_flags(source: str) -> dict[str, dict[str, Any]]:
    tree = ast.parse(source)
    main = [node for node in tree.body if isinstance(node, ast.If)]  # `if __name__ == "__main__":`
    flags: dict[str, dict[str, Any]] = {}
    for block in main:
        for call, env in add_argument_calls(block.body, {}):
            flags.update(describe(call, env))
    if not flags:
        raise SystemExit(f"no add_argument calls found in {SOURCE}")
    return dict(sorted(flags.items()))


def main(argv: list[str] | None = None) -> int:
    from chimed_ray.integrations.openrlhf.flags import OPENRLHF_VERSION

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=OPENRLHF_VERSION)
    parser.add_argument("--output", default=str(REPO / "tests" / "openrlhf" / "train_ppo_ray_flags.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        flags = read_flags(download_source(args.version, Path(tmp)))
    fixture = {"openrlhf_version": args.version, "source": SOURCE, "flags": flags}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(flags)} flags of openrlhf {args.version} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
