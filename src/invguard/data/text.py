"""Text corpora with inserted canaries, split into members, non-members and public documents.

The bundled corpus is the Python documentation's topic help (``pydoc_data.topics``, shipped with
CPython, so nothing is downloaded): each topic is cut at blank lines into documents of a few
hundred characters. Documents are split (seeded) into

- ``members``: the private training text of the target language model;
- ``nonmembers``: held-out documents of the same distribution (the membership audit's negatives);
- ``public``: text the attacker may have (prefixes for extraction, reference models).

Canaries (Carlini et al., "The Secret Sharer", USENIX Security 2019) are sentences with a random
secret, ``prefix + secret``, where the secret is drawn from a known format (an alphabet and a
length, so the randomness space has ``len(alphabet) ** length`` elements). Each canary is inserted
``insertions`` times into the training stream; canaries with ``insertions == 0`` are never
inserted and serve as controls. Every canary has its own prefix, so inserted canaries do not
compete for the same context.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.errors import DataError

# distinct names for canary prefixes (one per canary)
_NAMES = (
    "alice",
    "bruno",
    "carla",
    "dmitri",
    "elena",
    "farid",
    "greta",
    "hiro",
    "ines",
    "jonas",
    "kemal",
    "lucia",
    "marek",
    "nadia",
    "oscar",
    "priya",
    "quentin",
    "rosa",
    "stefan",
    "tamara",
    "umar",
    "vera",
    "wanda",
    "xavier",
    "yusuf",
    "zora",
)


@dataclass(frozen=True)
class CanaryFormat:
    """The randomness space of a canary's secret: ``length`` characters from ``alphabet``.

    ``template`` is the sentence before the secret, with ``{name}`` where the canary's own name
    goes (each canary gets a distinct name, hence a distinct prefix).
    """

    template: str = "the pin of {name} is "
    alphabet: str = "0123456789"
    length: int = 6

    def __post_init__(self) -> None:
        problems = []
        if len(set(self.alphabet)) != len(self.alphabet) or len(self.alphabet) < 2:
            problems.append(f"alphabet must have >= 2 distinct characters, got {self.alphabet!r}")
        if not 1 <= self.length <= 32:
            problems.append(f"length must be in [1, 32], got {self.length}")
        if "{name}" not in self.template:
            problems.append(f"template must contain {{name}}, got {self.template!r}")
        if problems:
            raise DataError("canary format: " + "; ".join(problems))

    @property
    def space_size(self) -> int:
        """``|R|``, the number of possible secrets."""
        return int(len(self.alphabet) ** self.length)

    def secret(self, index: int) -> str:
        """The ``index``-th secret in lexicographic order (base-``len(alphabet)`` digits)."""
        b = len(self.alphabet)
        out = []
        for _ in range(self.length):
            index, r = divmod(int(index), b)
            out.append(self.alphabet[r])
        return "".join(reversed(out))

    def secrets(self, indices: np.ndarray) -> list[str]:
        """Many secrets at once (vectorised :meth:`secret`)."""
        idx = np.asarray(indices, dtype=np.int64)
        b = len(self.alphabet)
        digits = np.empty((idx.size, self.length), dtype=np.int64)
        rest = idx.copy()
        for j in range(self.length - 1, -1, -1):
            digits[:, j] = rest % b
            rest //= b
        table = np.array(list(self.alphabet))
        return ["".join(row) for row in table[digits]]

    def index(self, secret: str) -> int:
        """Inverse of :meth:`secret`."""
        b = len(self.alphabet)
        if len(secret) != self.length or any(c not in self.alphabet for c in secret):
            raise DataError(f"{secret!r} is not a secret of this format ({self.length} of {self.alphabet!r})")
        v = 0
        for c in secret:
            v = v * b + self.alphabet.index(c)
        return v

    def pattern(self) -> str:
        """A regular expression matching a secret of this format."""
        return "[" + re.escape(self.alphabet) + "]{" + str(self.length) + "}"


@dataclass(frozen=True)
class Canary:
    """One canary: ``prefix + secret``, inserted ``insertions`` times into the training text."""

    name: str
    prefix: str
    secret: str
    insertions: int

    @property
    def text(self) -> str:
        return self.prefix + self.secret


@dataclass(frozen=True)
class TextSplits:
    """Documents by role, the canaries and how they were made (what every text attack reads)."""

    members: tuple[str, ...]
    nonmembers: tuple[str, ...]
    public: tuple[str, ...]
    canaries: tuple[Canary, ...]
    canary_format: CanaryFormat
    source: str
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def training_documents(self) -> list[str]:
        """The target's training stream: the member documents and every canary insertion, shuffled."""
        docs = list(self.members)
        for c in self.canaries:
            docs.extend([c.text] * c.insertions)
        order = np.random.default_rng([self.seed, 31337]).permutation(len(docs))
        return [docs[i] for i in order]

    def inserted(self, at_least: int = 1) -> list[Canary]:
        return [c for c in self.canaries if c.insertions >= at_least]

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.members, self.nonmembers, self.public):
            h.update(json.dumps(list(part)).encode())
        h.update(json.dumps([c.__dict__ for c in self.canaries], sort_keys=True).encode())
        h.update(json.dumps(self.canary_format.__dict__, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def provenance(self) -> dict[str, Any]:
        """What the report records about the text data (never the canaries' secrets)."""

        def part(docs: Sequence[str]) -> dict[str, Any]:
            return {
                "size": len(docs),
                "hash": hashlib.sha256(json.dumps(list(docs)).encode()).hexdigest()[:16],
            }

        return {
            "dataset": self.source,
            "kind": "text",
            "dataset_fingerprint": self.digest(),
            "splits": {
                "members": part(self.members),
                "nonmembers": part(self.nonmembers),
                "public": part(self.public),
            },
            "seed": self.seed,
            "members": len(self.members),
            "nonmembers": len(self.nonmembers),
            "public": len(self.public),
            "canaries": len(self.canaries),
            "canary_insertions": sorted({c.insertions for c in self.canaries}),
            "canary_space": self.canary_format.space_size,
            "sha256": self.digest(),
            **self.meta,
        }


def documents(texts: Sequence[str], *, min_chars: int = 200, max_chars: int = 600) -> list[str]:
    """Cut texts at blank lines into documents of about ``min_chars`` to ``max_chars`` characters.

    Paragraphs are joined until a document reaches ``min_chars``; a paragraph longer than
    ``max_chars`` is cut at line ends. Whitespace-only pieces are dropped.
    """
    out: list[str] = []
    for text in texts:
        paras: list[str] = []
        for p in re.split(r"\n\s*\n", text):
            p = p.strip("\n")
            if not p.strip():
                continue
            while len(p) > max_chars:
                cut = p.rfind("\n", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                paras.append(p[:cut])
                p = p[cut:].lstrip("\n")
            if p.strip():
                paras.append(p)
        cur = ""
        for p in paras:
            cur = f"{cur}\n\n{p}" if cur else p
            if len(cur) >= min_chars:
                out.append(cur)
                cur = ""
        if cur.strip():
            if out and len(cur) < min_chars // 2:
                out[-1] = f"{out[-1]}\n\n{cur}"
            else:
                out.append(cur)
    return out


# the standard library's folders whose docstrings are not library documentation
_STDLIB_SKIP = ("test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "__pycache__")


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """The docstrings (of at least ``min_chars``) of the standard library's modules and of their
    top-level classes and functions, read from the source files with ``ast`` (nothing is imported),
    in file order: a second corpus that ships with Python, of another kind than the topic help."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root).parts
        if any(p in _STDLIB_SKIP or p.startswith("test_") for p in parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        nodes: list[Any] = [tree, *(n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars:
                texts.append(doc)
    return texts


def _source_texts(source: str) -> list[str]:
    if source == "pydoc":
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    if source == "stdlib-docs":
        return stdlib_docstrings()
    p = Path(source)
    if not p.exists():
        raise DataError(f"text corpus {source!r}: not 'pydoc' or 'stdlib-docs' and no such file or folder")
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise DataError(f"text corpus {source!r}: the folder holds no .txt files")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"text corpus {f}: cannot read it as UTF-8 text ({e})") from None
    return texts


def load_text(
    source: str = "pydoc",
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
    max_documents: int | None = None,
    insertions: Sequence[int] = (0, 1, 10, 100),
    canaries_per_count: int = 4,
    canary_format: CanaryFormat | None = None,
) -> TextSplits:
    """Load a text corpus, split it into members / non-members / public and make canaries.

    ``source``: ``"pydoc"`` (Python's topic help), ``"stdlib-docs"`` (the standard library's
    docstrings; both ship with Python) or a ``.txt`` file / a folder of them. ``fractions``: the
    shares of members, non-members and public documents. ``max_documents``: keep this many
    documents (a seeded sample) for small models. ``insertions``: the insertion counts; each gets
    ``canaries_per_count`` canaries with fresh secrets and distinct names.
    """
    fmt = canary_format or CanaryFormat()
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"text corpus: fractions must be three positive shares summing to 1, got {fractions}")
    if any(int(k) < 0 for k in insertions):
        raise DataError(f"text corpus: insertion counts must be >= 0, got {list(insertions)}")
    n_canaries = len(insertions) * canaries_per_count
    if n_canaries > len(_NAMES):
        raise DataError(
            f"text corpus: at most {len(_NAMES)} canaries (distinct names); asked for {n_canaries}"
        )
    docs = documents(_source_texts(source))
    rng = np.random.default_rng([seed, 2024])
    order = rng.permutation(len(docs))
    if max_documents is not None:
        order = order[: int(max_documents)]
    n = order.size
    if n < 8:
        raise DataError(f"text corpus {source!r}: only {n} documents; need at least 8")
    n_mem = round(fractions[0] * n)
    n_non = round(fractions[1] * n)
    mem = tuple(docs[i] for i in order[:n_mem])
    non = tuple(docs[i] for i in order[n_mem : n_mem + n_non])
    pub = tuple(docs[i] for i in order[n_mem + n_non :])
    secrets = fmt.secrets(rng.choice(fmt.space_size, size=n_canaries, replace=False))
    names = [_NAMES[i] for i in rng.permutation(len(_NAMES))[:n_canaries]]
    canaries = tuple(
        Canary(name=nm, prefix=fmt.template.format(name=nm), secret=s, insertions=int(k))
        for (nm, s), k in zip(
            zip(names, secrets, strict=True),
            [k for k in insertions for _ in range(canaries_per_count)],
            strict=True,
        )
    )
    return TextSplits(
        members=mem,
        nonmembers=non,
        public=pub,
        canaries=canaries,
        canary_format=fmt,
        source=source,
        seed=seed,
        meta={"max_documents": max_documents},
    )
