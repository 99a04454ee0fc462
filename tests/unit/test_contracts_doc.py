"""``topics/CONTRACTS.md`` keeps up with the code: every topic, every public event field, every error code."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from framebus.topics import registry

REPO = Path(__file__).resolve().parents[2]
DOC_PATH = REPO / "topics" / "CONTRACTS.md"
#: the folders installed as ``framebus.*`` (pyproject's package-dir)
PACKAGES = ("streams", "agents", "models", "indexing", "topics", "loadtest")
#: where error codes are written in the source: ``code="..."`` arguments, ``code = "..."`` class defaults
#: (``code: str = "..."`` on the base class),
#: and ``_fail("...", ...)`` (``agents/media/uri.py``'s shorthand for ``IngestError(message, code=...)``)
CODE_PATTERNS = (re.compile(r'\bcode\s*(?::\s*str\s*)?=\s*"([^"]+)"'), re.compile(r'\b_fail\(\s*"([^"]+)"'))
HEADING = re.compile(r"^(#+)\s")


def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def section(text: str, title_fragment: str) -> str:
    """The section whose heading contains ``title_fragment``, up to the next heading of its level or above."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = HEADING.match(line)
        if m and title_fragment in line:
            level = len(m.group(1))
            end = next(
                (j for j in range(i + 1, len(lines)) if (h := HEADING.match(lines[j])) and len(h.group(1)) <= level),
                len(lines),
            )
            return "\n".join(lines[i:end])
    raise AssertionError(f"CONTRACTS.md has no section titled with {title_fragment!r}")


def nested_models(annotation) -> set[type[BaseModel]]:
    """Every pydantic model inside a field annotation (``list[Segment] | None`` -> {Segment})."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {m for arg in typing.get_args(annotation) for m in nested_models(arg)}


def public_models() -> list[type[BaseModel]]:
    """The value model of every public topic and every model nested in one (Segment, ErrorInfo, ...)."""
    seen: dict[str, type[BaseModel]] = {}
    todo = [spec.model for spec in registry.PUBLIC]
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for field in model.model_fields.values():
            todo.extend(nested_models(field.annotation))
    return sorted(seen.values(), key=lambda m: m.__name__)


def source_error_codes() -> set[str]:
    codes = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in CODE_PATTERNS:
                codes.update(pattern.findall(text))
    return codes


def test_every_topic_is_documented():
    text = section(doc(), "Topics")
    missing = [spec.name for spec in registry.ALL if f"`{spec.name}`" not in text]
    assert not missing, f"topics missing from CONTRACTS.md section 2: {missing}"


@pytest.mark.parametrize("model", public_models(), ids=lambda m: m.__name__)
def test_every_public_event_field_is_documented(model):
    text = section(doc(), f"`{model.__name__}`")
    names = [field.alias or name for name, field in model.model_fields.items()]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"fields of {model.__name__} missing from its CONTRACTS.md section: {missing}"


def test_every_error_code_in_the_source_is_documented():
    codes = source_error_codes()
    assert {"event.invalid", "ingest.outside_allowed_roots", "decode.crashed", "index.failed"} <= codes
    text = section(doc(), "Error codes")
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert not missing, f"error codes missing from CONTRACTS.md section 4: {missing}"


def test_code_cites_contracts_not_the_design_page():
    citing = [
        str(p.relative_to(REPO))
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if "DESIGN.md" in p.read_text(encoding="utf-8")
    ]
    assert not citing, f"cite topics/CONTRACTS.md instead of DESIGN.md (not in the repository): {citing}"
