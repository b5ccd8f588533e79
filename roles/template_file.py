"""One configuration file written from its template: the way every role writes one."""

from __future__ import annotations

from typing import Any, Mapping

from pyinfra.operations import files

from hastack.templating import template_path


def template_file(role: str, target: str, tvars: Mapping[str, Mapping[str, Any]] | None = None, *,
                  name: str | None = None, mode: str = "0644", user: str = "root", group: str = "root",
                  dest: str | None = None):
    """Write templates/<role>/<target>.j2 to ``dest`` (``target`` itself unless told), owned by
    ``user``:``group`` with ``mode``, rendered with the variables ``tvars`` gives that target (a target
    missing from ``tvars`` is an error, not an empty render)."""
    return files.template(name=name or f"Write {dest or target}", src=template_path(role, target),
                          dest=dest or target, user=user, group=group, mode=mode,
                          **(tvars[target] if tvars is not None else {}))
