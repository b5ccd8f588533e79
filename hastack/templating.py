"""Template paths and rendering, shared by the roles and the template tests.

Renders exactly as pyinfra's files.template does (StrictUndefined, trailing
newline kept), so a template that passes the tests renders the same on hosts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def template_path(role: str, target: str) -> str:
    """templates/<role>/<target path>.j2: template paths mirror the target."""
    path = TEMPLATES_DIR / role / (target.lstrip("/") + ".j2")
    if not path.exists():
        raise FileNotFoundError(f"no template for {target} in role {role}: {path}")
    return str(path)


def render_user_data(topo, host) -> str:
    """The first-boot cloud-init user-data of a host (Hetzner's, and the lab's through NoCloud)."""
    # B701: no autoescape: the templates are configuration files (YAML, haproxy, systemd units...), not HTML;
    # escaping would corrupt them, and pyinfra's files.template renders them without it too
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)  # nosec B701  # configuration files, not HTML (above)
    return env.get_template("cloud-init/user-data.yaml.j2").render(topo=topo, host=host)


def render(role: str, target: str, **context: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)))  # nosec B701  # as in render_user_data
    return env.get_template(f"{role}/{target.lstrip('/')}.j2").render(**context)
