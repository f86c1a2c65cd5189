"""Development sessions: ``nox`` runs tests, lint, typecheck and docs."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite against real loopback servers."""
    session.install("-e", ".[server,metrics]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "tests"))
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Check the code with ruff, and that it is formatted."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """Check the types with mypy in strict mode."""
    session.install("-e", ".[server,metrics]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "typecheck"))
    session.install(*nox.project.dependency_groups(PYPROJECT, "tests"))
    session.run("mypy", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site; warnings are errors."""
    session.install("-e", ".[server,metrics]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmark against NGINX and a reference proxy (not run by default).

    Needs Linux with 2 cores and ``apt-get install -y nginx wrk curl``.
    ``nox -s bench -- --quick`` makes a short run; results go to
    ``bench/results/latest.json``.
    """
    session.install("-e", ".[server,aiohttp]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "bench"))
    session.run("python", "-m", "bench.run", *session.posargs)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """Soak the proxy with 100,000 requests and every fault (not run by
    default; takes minutes). ``nox -s soak -- --requests 10000`` makes
    a shorter run."""
    session.install("-e", ".[server]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "tests"))
    session.run("python", "-m", "tests.soak", *session.posargs)
