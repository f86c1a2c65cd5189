"""The examples run, print what the docs say, and the docs include them.

Every ``examples/*.py`` runs as its own process, as a reader would run it,
against the real loopback servers it starts; the test checks what it
prints. The docs quote the examples through ``--8<--`` snippet lines, and
the last tests keep those references and the examples in step.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"

#: What each example must print: each entry starts a line of its output.
#: An example missing here fails `test_every_example_is_checked`.
_LOOP_OUTPUT = [
    "200 report for /reports/42?format=txt (api key: secret-key)",
    "201 {'shouted': 'HELLO', 'content_type': 'application/json'}",
    "200 hello from the backend",
    "502 Bad Gateway",
]
EXPECTED: dict[str, list[str]] = {
    "aiohttp_loop.py": _LOOP_OUTPUT,
    "starlette_loop.py": _LOOP_OUTPUT,
    "asgi_proxy.py": [
        "/report 200 report for /reports/42?format=txt (api key: secret-key)",
        "/download 200 report for /files/report.txt (api key: none)",
        "/hello 200 hello from the backend",
        "/broken 502 Bad Gateway",
        'offloader_offloads_total{outcome="ok"} 2.0',
    ],
    "asyncio_loop.py": _LOOP_OUTPUT,
    "destination_policy.py": [
        "allowed: https://api.example.com/v1/report",
        "allowed: http://reports.svc.internal/r/42",
        "refused: host 'evil.example.net' is not allowed for offloads",
        "refused: port 8080 is not allowed for offloads",
        "refused: scheme 'file' is not allowed for offloads",
        "refused: address 127.0.0.1 is not allowed for offloads",
    ],
    "httpx_hook.py": [
        "200 report for /reports/42?format=txt (api key: secret-key)",
        "served by: offload-server",
        "hello from the backend",
        "201 {'shouted': 'OFFLOAD ME', 'content_type': 'application/json'}",
    ],
    "transport.py": [
        "200 report for /reports/42?format=txt (api key: secret-key)",
    ],
    "custom_parser.py": [
        "200 report for /reports/7 (api key: none)",
        "200 report for /reports/42?format=txt (api key: secret-key)",
        "False",
    ],
    "x_accel_redirect.py": [
        "200 report for /files/report.txt (api key: none)",
        "False",
    ],
    "observer.py": [
        "finish 200, 56 bytes in ",
        "start  GET http://127.0.0.1:9/nothing-here",
        "raised OffloadRequestFailed",
        "refuse InvalidDirective",
        "raised InvalidDirective",
    ],
    "parse_directive.py": [
        "OffloadDirective(url='http://reports.internal/r/42?f=pdf', "
        "method='POST', forward_body=False, headers=(('api-key', 'k'),), "
        "timeout=None, keep_headers=())",
        "None",
        "InvalidDirective (502): offload URL is missing",
    ],
    "prometheus_metrics.py": [
        "refused: DestinationRefused 502",
        "offloader_offloads_in_flight 0.0",
        'offloader_offloads_total{outcome="ok"} 4.0',
        'offloader_offloads_total{outcome="destination_refused"} 1.0',
        'offloader_offload_duration_seconds_count{outcome="ok"} 4.0',
        "offloader_offloads_limit 500.0",
    ],
}


def _examples() -> list[str]:
    return sorted(
        path.name
        for path in EXAMPLES.glob("*.py")
        if not path.name.startswith("_")
    )


def _run(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_every_example_is_checked() -> None:
    """Each example in examples/ has its expected output listed here."""
    missing = set(_examples()) - set(EXPECTED)

    assert not missing, f"add the expected output of {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    """The example exits 0 and prints what the docs show."""
    result = _run(name)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for expected in EXPECTED[name]:
        assert any(line.startswith(expected) for line in lines), (
            f"{expected!r} not in {result.stdout!r}"
        )
    assert "Traceback" not in result.stderr


def test_httpx_hook_leaks_no_offload_header() -> None:
    """What the hook example's client receives carries no Offload-*."""
    result = _run("httpx_hook.py")

    assert result.returncode == 0, result.stderr
    assert "offload-" not in result.stdout.lower().replace(
        "offload-server", ""
    )


def test_prometheus_example_logs_offloads() -> None:
    """The metrics example shows one INFO line per offload and a WARNING
    for the refused one, as the logging page says."""
    result = _run("prometheus_metrics.py")

    info = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("INFO offloader: offload ")
    ]
    warnings = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("WARNING offloader:")
    ]
    assert len(info) == 4
    assert "GET 127.0.0.1 -> 200 in" in info[0]
    assert len(warnings) == 1
    assert "not allowed" in warnings[0]


_SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"', re.MULTILINE)


def _snippet_references() -> list[tuple[Path, str, str | None]]:
    references = []
    for page in sorted(DOCS.rglob("*.md")):
        for target in _SNIPPET.findall(page.read_text()):
            path, _, section = target.partition(":")
            references.append((page, path, section or None))
    return references


def test_docs_snippets_resolve() -> None:
    """Every ``--8<--`` line in docs/ names an existing file, and the
    section markers it names exist in that file."""
    references = _snippet_references()

    assert references, "the docs include no example"
    for page, path, section in references:
        source = ROOT / path
        assert source.is_file(), f"{page.name}: {path} does not exist"
        if section is not None:
            text = source.read_text()
            assert f"--8<-- [start:{section}]" in text, (page.name, path)
            assert f"--8<-- [end:{section}]" in text, (page.name, path)


def test_every_example_is_in_the_docs() -> None:
    """Each runnable example is quoted by at least one docs page."""
    quoted = {Path(path).name for _, path, _ in _snippet_references()}

    assert set(_examples()) <= quoted, set(_examples()) - quoted


_MARKER = re.compile(r"\n\s*# --8<-- \[\w+:\w+\]\n")
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_readme_examples_come_from_the_examples() -> None:
    """Each Python block in the README, imports aside, is a verbatim
    excerpt of a runnable example (dedented)."""
    # Each section between snippet markers, dedented as the docs show it.
    dedented = "\n".join(
        textwrap.dedent(chunk)
        for path in EXAMPLES.glob("*.py")
        for chunk in _MARKER.split(path.read_text())
    )
    blocks = _PYTHON_BLOCK.findall((ROOT / "README.md").read_text())

    assert blocks, "the README shows no example"
    for block in blocks:
        code = "\n".join(
            line
            for line in block.splitlines()
            if not line.startswith(("import ", "from "))
        ).strip()
        assert code in dedented, code[:200]


def _unit_command() -> list[str]:
    """The command line of the systemd unit's ExecStart."""
    lines = (EXAMPLES / "deploy" / "offloader.service").read_text()
    command = lines.split("\nExecStart=", 1)[1]
    joined = []
    for line in command.splitlines():
        joined.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(joined))


def _container_command() -> list[str]:
    """ENTRYPOINT plus CMD of the container example."""
    parts: dict[str, list[str]] = {}
    for line in (
        (EXAMPLES / "deploy" / "Containerfile").read_text().split("\n")
    ):
        keyword, _, rest = line.partition(" ")
        if keyword in ("ENTRYPOINT", "CMD"):
            parts[keyword] = json.loads(rest)
    return parts["ENTRYPOINT"] + parts["CMD"]


@pytest.mark.parametrize(
    "command", [_unit_command(), _container_command()], ids=["unit", "image"]
)
def test_deployment_examples_use_valid_commands(command: list[str]) -> None:
    """The systemd unit and the container example run ``offloader serve``
    with options the command accepts."""
    from offloader._cli import build_parser

    args = build_parser().parse_args(command[1:])

    assert Path(command[0]).name == "offloader"
    assert args.command == "serve"
    assert args.backend.startswith("http://")
    assert args.listen[0] == "0.0.0.0"
    assert args.workers == 2


def test_docs_python_blocks_are_all_included_examples() -> None:
    """The docs write no Python of their own: each Python block is made
    of ``--8<--`` lines only, so every line of code shown is run."""
    for page in sorted(DOCS.rglob("*.md")):
        for block in _PYTHON_BLOCK.findall(page.read_text()):
            lines = [line for line in block.splitlines() if line.strip()]
            assert lines, page
            assert all(_SNIPPET.match(line) for line in lines), (
                f"{page.relative_to(ROOT)}: {block[:80]!r}"
            )
