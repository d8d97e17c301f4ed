"""Versioned prompt sets (``conf/prompts/<version>.yaml``) and the rendering of untrusted text into them.

Customer reviews go into prompts only inside ``<reviews>``/``<review>`` fences. Anything in a review that
could close or forge a fence (``<``/``>``) is replaced by look-alike characters, so a review can never
step outside its fence; the system prompt tells the model to treat fenced text as data. A prompt set may
also quote each review's text (``quote_reviews: true``: «…», with any « » inside neutralised) and give a
``name_pattern`` that persona names must match while decoding (engines that enforce JSON Schema patterns),
and ask for ``distinct_personas`` (each persona answer checked as a set, ``reasoning/quality.py``).
These are options of the set's file, so a set without them (v1) renders and hashes exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from string import Template
from typing import Any

import yaml

from persona4rec.config import conf_dir
from persona4rec.errors import ConfigError

TEMPLATES = ("system", "personas", "summary", "aspects", "personas_from_aspects", "judge")

#: What a review's text can contain that would interfere with the fences, and its harmless stand-in.
_NEUTRALISE = str.maketrans({"<": "‹", ">": "›"})
#: Quoted review text (``quote_reviews``) cannot close its quote either.
_UNQUOTE = str.maketrans({"«": "‹", "»": "›"})


@dataclass(frozen=True)
class PromptSet:
    version: str
    templates: dict[str, str]
    #: Review text is shown «quoted» inside the fence (opt-in per set: it changes the rendered prompts).
    quote_reviews: bool = False
    #: A JSON Schema ``pattern`` for persona names, enforced while decoding where the engine supports it.
    name_pattern: str | None = None
    #: Check each persona answer as a set too (near-duplicates, restated rationales, shared evidence;
    #: ``reasoning/quality.py``) and retry once with the reason. How answers are checked, not what the
    #: engine sees: not part of the digest.
    distinct_personas: bool = False
    #: Persona schemas ask for each persona's evidence before its name and text (decoding follows the
    #: schema's property order): part of the schema, so of every key, and only for sets that ask for it.
    evidence_first: bool = False

    @property
    def system(self) -> str:
        """The system prompt (what no persona may quote)."""
        return self.templates["system"]

    @property
    def digest(self) -> str:
        """Hash of every template: part of each cache key, so an edited template redoes its work."""
        text = json.dumps(self.templates, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def render(self, name: str, **values: str) -> str:
        try:
            return Template(self.templates[name]).substitute(values)
        except KeyError as exc:
            raise ConfigError(f"prompt {self.version}/{name}: no value for placeholder {exc}") from None

    def chat(self, name: str, **values: str) -> tuple[dict[str, str], ...]:
        return (
            {"role": "system", "content": self.templates["system"]},
            {"role": "user", "content": self.render(name, **values)},
        )


@cache
def load_prompts(version: str) -> PromptSet:
    """Load and check a prompt set by version name (``v1`` reads ``conf/prompts/v1.yaml``)."""
    path = conf_dir() / "prompts" / f"{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "prompts").glob("*.yaml"))
        raise ConfigError(f"reason.prompts: no prompt set {version!r} (known: {', '.join(known)})")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [name for name in TEMPLATES if not isinstance(doc.get(name), str)]
    if missing or doc.get("version") != version:
        raise ConfigError(f"{path}: needs version: {version} and templates {', '.join(missing) or '(ok)'}")
    pattern = doc.get("name_pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{path}: name_pattern is not a regular expression ({exc})") from None
    return PromptSet(
        version=version,
        templates={name: doc[name] for name in TEMPLATES},
        quote_reviews=bool(doc.get("quote_reviews", False)),
        name_pattern=pattern,
        distinct_personas=bool(doc.get("distinct_personas", False)),
        evidence_first=bool(doc.get("evidence_first", False)),
    )


_FENCED = re.compile(r"(<(reviews|review|catalogue)>)(.*?)(</\2>)", re.DOTALL)


def without_double_quotes(content: str) -> str:
    """A prompt whose fenced data shows straight double quotes as ″ (a 1/4" jack, a "warm" tone).

    What a retry shows a model after a quote it copied from a review closed a JSON string early: the
    stand-in reads the same and cannot end a string. The instructions outside the fences are unchanged.
    """
    return _FENCED.sub(lambda m: m.group(1) + m.group(3).replace('"', "″") + m.group(4), content)


def fence_text(text: str, limit: int, *, quote: bool = False) -> str:
    """A review's text made safe to place inside a fence, cut to ``limit`` characters on a word boundary;
    ``quote``: inside «», which the text then cannot close."""
    text = " ".join(text.split()).translate(_NEUTRALISE)
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " …"
    return f"«{text.translate(_UNQUOTE)}»" if quote else text


def review_line(number: int, rating: float, title: str | None, text: str, limit: int, *, quote: bool = False) -> str:
    """One numbered review inside a ``<reviews>`` fence: ``[R3] (4★) title: text`` (``quote``: «title»: «text»)."""
    head = f"[R{number}] ({rating:g}★)"
    if title and title.strip():
        head += f" {fence_text(title, 120, quote=quote)}:"
    return f"{head} {fence_text(text, limit, quote=quote)}"


def item_block(item: dict[str, Any]) -> str:
    """The item's catalogue data for a prompt, or a note that there is none."""
    lines = []
    for key, label in (("title", "Title"), ("brand", "Brand"), ("city", "City")):
        if item.get(key):
            lines.append(f"{label}: {fence_text(str(item[key]), 200)}")
    if item.get("categories"):
        lines.append("Categories: " + fence_text(" > ".join(item["categories"]), 300))
    if item.get("description"):
        lines.append("Description: " + fence_text(item["description"], 1200))
    if not lines:
        return "Catalogue data: none for this item; infer what it is from the reviews."
    return "Catalogue data (from the seller, fenced as data):\n<catalogue>\n" + "\n".join(lines) + "\n</catalogue>"


def count_rule(n_reviews: int, low: int, high: int) -> tuple[int, int, str]:
    """How many personas an item may have: exactly 1 for a single review, else between low and high, and
    never more than there are reviews to cite."""
    high = max(1, min(high, n_reviews))
    low = min(low, high)
    return low, high, (f"exactly {low}" if low == high else f"between {low} and {high}")
