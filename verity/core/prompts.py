"""Prompt templates: Jinja files in ``prompts/``, declared in ``prompts/prompts.yaml``.

Templates are loaded and checked once (every declared file exists and uses
only its declared variables), rendered in a sandbox, and fail on a missing
variable. Each prompt's SHA-256 is available for reports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from verity.core.errors import ConfigError

DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str
    variables: frozenset[str]
    sha256: str
    source: str


class PromptLibrary:
    """All prompts of a directory, checked at load time.

    Example:
        >>> prompts = PromptLibrary.load()
        >>> prompts.render("answer_user", question="...", sources=[...])
    """

    def __init__(self, env: SandboxedEnvironment, prompts: dict[str, Prompt]) -> None:
        self._env = env
        self.prompts = prompts

    @classmethod
    def load(cls, directory: Path | None = None) -> PromptLibrary:
        """Read ``prompts.yaml`` and every template it declares.

        Raises:
            ConfigError: the manifest or a template is missing or malformed, or a
                template uses a variable it does not declare.
        """
        directory = directory or DEFAULT_PROMPTS_DIR
        manifest_path = directory / "prompts.yaml"
        try:
            manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read prompt manifest {manifest_path}: {e}") from e
        env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False,
                                   trim_blocks=True, lstrip_blocks=True, autoescape=False)
        prompts = {}
        for name, spec in manifest.items():
            prompts[name] = _check(env, directory, name, spec)
        return cls(env, prompts)

    def render(self, name: str, **variables: Any) -> str:
        """Render a prompt with exactly its declared variables.

        Raises:
            ConfigError: unknown prompt, or missing / undeclared variables.
        """
        prompt = self.prompts.get(name)
        if prompt is None:
            raise ConfigError(f"no prompt named {name!r}; known: {sorted(self.prompts)}")
        given = set(variables)
        if given != prompt.variables:
            raise ConfigError(
                f"prompt {name!r} takes {sorted(prompt.variables)}, got {sorted(given)}"
            )
        try:
            return self._env.from_string(prompt.source).render(**variables).strip()
        except TemplateError as e:
            raise ConfigError(f"prompt {name!r} failed to render: {e}") from e

    def hashes(self) -> dict[str, str]:
        return {name: p.sha256 for name, p in self.prompts.items()}


def _check(env: SandboxedEnvironment, directory: Path, name: str, spec: Any) -> Prompt:
    if not isinstance(spec, dict) or "file" not in spec:
        raise ConfigError(f"prompt {name!r} in prompts.yaml needs a 'file' entry")
    path = directory / str(spec["file"])
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"prompt {name!r}: cannot read {path}") from e
    declared = frozenset(spec.get("variables") or [])
    try:
        used = meta.find_undeclared_variables(env.parse(source))
    except TemplateError as e:
        raise ConfigError(f"prompt {name!r} ({path.name}) is not valid Jinja: {e}") from e
    if used - declared:
        raise ConfigError(
            f"prompt {name!r} uses undeclared variables {sorted(used - declared)}; "
            "declare them in prompts.yaml"
        )
    return Prompt(name=name, variables=declared,
                  sha256=hashlib.sha256(source.encode()).hexdigest(), source=source)
