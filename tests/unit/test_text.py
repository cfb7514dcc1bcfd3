"""Text leakage: exposure on a toy LM with known ranks, the skew-normal approximation's error,
text policies, the OpenAI wire format, and the attacks on the tiny reference LM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from invguard.attacks import get
from invguard.core import AccessError, BudgetExhausted, ConfigError, TextAccess
from invguard.data.text import Canary, CanaryFormat, TextSplits, load_text
from invguard.policies.text import MASK, SecretFilter, StripLogprobs, TopLogprobs, reveal, text_policy
from invguard.targets.lm import BaseTextTarget, Generation, TokenLogprobs

LN2 = math.log(2)


class ToyLM(BaseTextTarget):
    """A language model whose secrets are independent per position: the log-probability of digit
    ``d`` at position ``j`` after any canary prefix is ``table[j, d]``, so every rank is known."""

    def __init__(self, table: np.ndarray, *, per_char: bool = True, access: TextAccess = TextAccess.LOGPROBS):
        super().__init__(access=access, name="toy")
        self.table = table
        self.per_char = per_char
        self.prefixes: set[str] = set()

    def _split(self, text: str) -> tuple[str, str]:
        for p in self.prefixes:
            if text.startswith(p):
                return p, text[len(p) :]
        raise AssertionError(f"unknown prefix in {text!r}")

    def per_character(self, prefix: str, alphabet: str, probe: str) -> bool:
        return self.per_char

    def next_token_logprobs(self, contexts, choices):
        self.charge(len(contexts), len(contexts) * len(choices))
        rows = [self.table[len(self._split(c)[1])] for c in contexts]
        return np.array([[r[int(ch)] for ch in choices] for r in rows])

    def _score(self, texts, top_logprobs):
        out = []
        for t in texts:
            p, s = self._split(t)
            lp = [0.0] + [self.table[j, int(c)] for j, c in enumerate(s)]
            offsets = (0, *range(len(p), len(t)))
            top = tuple(
                {str(d): float(self.table[j - 1, d]) for d in np.argsort(-self.table[j - 1])[:top_logprobs]}
                if j and top_logprobs
                else {}
                for j in range(len(lp))
            )
            tl = TokenLogprobs(t, (p, *s), offsets, np.array(lp), top, TextAccess.LOGPROBS)
            out.append(reveal(tl, self.access, top_logprobs))
        return out

    def _generate(self, prompts, *, max_tokens, temperature, top_k, top_logprobs, seed):
        rng = np.random.default_rng(seed)
        p = np.exp(self.table)
        out = []
        for pr in prompts:
            digits = "".join(str(rng.choice(10, p=row / row.sum())) for row in p[:max_tokens])
            out.append(Generation(pr, digits))
        return out


def toy_splits(secrets: list[str], length: int) -> TextSplits:
    fmt = CanaryFormat(length=length)
    canaries = tuple(
        Canary(name=f"c{i}", prefix=fmt.template.format(name=f"c{i}"), secret=s, insertions=1)
        for i, s in enumerate(secrets)
    )
    return TextSplits((), (), (), canaries, fmt, "toy", 0)


def brute_rank(table: np.ndarray, secret: str) -> int:
    """1 + the number of secrets strictly more likely than ``secret`` (by full enumeration)."""
    total = np.zeros(1)
    for j in range(table.shape[0]):
        total = (total[:, None] + table[j][None, :]).reshape(-1)
    own = sum(table[j, int(c)] for j, c in enumerate(secret))
    return int(1 + np.sum(total > own + 1e-12))


def toy_table(length: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).dirichlet(np.ones(10) * 2.0, size=length)
    return np.log(p)


def toy(table: np.ndarray, splits: TextSplits, **kw) -> ToyLM:
    t = ToyLM(table, **kw)
    t.prefixes = {c.prefix for c in splits.canaries}
    return t


def ranked_secrets(table: np.ndarray, ranks: tuple[int, ...]) -> list[str]:
    order = np.argsort(
        -sum(np.meshgrid(*table, indexing="ij")).reshape(-1), kind="stable"
    )  # most likely first
    fmt = CanaryFormat(length=table.shape[0])
    return [fmt.secret(int(order[r - 1])) for r in ranks]


def test_exposure_is_exact_on_a_toy_model_with_known_ranks_tree_and_scored_alike():
    table = toy_table(4, 0)
    ranks = (1, 10, 500, 10000)
    secrets = ranked_secrets(table, ranks)
    splits = toy_splits(secrets, 4)
    tree = get("text.exposure")(samples=0).run(toy(table, splits), splits)
    rows = tree.tables["canaries"]
    assert [r["rank"] for r in rows] == list(ranks) == [brute_rank(table, s) for s in secrets]
    for r, want in zip(rows, ranks, strict=True):
        assert r["exact"] == pytest.approx(math.log2(1e4) - math.log2(want))
        assert r["method"] == "tree"
    # branch and bound: the rank-1 canary expands a fraction of the 1111 inner nodes (214 measured)
    one = toy_splits(secrets[:1], 4)
    assert get("text.exposure")(samples=0).run(toy(table, one), one).queries_used < 1111 / 3
    small = toy_table(3, 1)
    s3 = toy_splits(ranked_secrets(small, (1, 10, 500)), 3)
    scored = get("text.exposure")(samples=0).run(toy(small, s3, per_char=False), s3)
    assert [r["rank"] for r in scored.tables["canaries"]] == [1, 10, 500]
    assert {r["method"] for r in scored.tables["canaries"]} == {"scored"}
    assert scored.queries_used == 3 * (1 + 1000)


def test_skew_normal_approximation_within_one_bit_of_exact_enumeration():
    """The Secret Sharer's approximation (Sec. 5.2) against exact ranks over |R| = 10^6, for
    canaries from the top 0.1% down to the median: within 1 bit (measured max error below)."""
    table = toy_table(6, 3)
    fmt = CanaryFormat(length=6)
    rng = np.random.default_rng(1)
    draws = rng.choice(fmt.space_size, size=200_000, replace=False)
    logp = sum(table[j][(draws // 10 ** (5 - j)) % 10] for j in range(6))
    picks = [draws[np.argsort(logp)[::-1][int(q * draws.size)]] for q in (0.001, 0.01, 0.1, 0.5)]
    splits = toy_splits(fmt.secrets(np.array(picks)), 6)
    res = get("text.exposure")(samples=5000).run(toy(table, splits), splits, seed=0)
    rows = res.tables["canaries"]
    errors = [abs(r["exact"] - r["approx"]) for r in rows]
    assert all(e < 1.0 for e in errors), errors
    assert res.metrics["approx_error_bits"].value == pytest.approx(max(errors))
    assert rows[0]["exact"] > 8 and rows[-1]["exact"] < 2


def test_top_k_bounds_and_generation_only_exposure():
    table = toy_table(3, 5)
    splits = toy_splits(ranked_secrets(table, (1, 500)), 3)
    top = toy(table, splits, access=TextAccess.TOPK_LOGPROBS)
    with pytest.raises(AccessError, match=r"text.exposure needs TOPK_LOGPROBS; this target grants TEXT"):
        get("text.exposure")(samples=0).run(toy(table, splits, access=TextAccess.TEXT), splits)
    res = get("text.exposure")(samples=0).run(top, splits)
    assert res.info["bounded"] is True and res.tables["canaries"][0]["method"] == "scored"
    gen = get("text.exposure_generations")(samples=300).run(
        toy(table, splits, access=TextAccess.TEXT), splits
    )
    likely, unlikely = gen.tables["canaries"]
    # the most likely secret is sampled often: a positive lower bound; the median one is not seen
    assert likely["hits"] > 0 and likely["exposure_low"] > 1.0
    assert unlikely["exposure_low"] == 0.0
    assert "generations alone" in gen.info["assumption"]
    assert gen.metrics["exposure_1"].high == pytest.approx(math.log2(1e3))


def test_attacks_refuse_classifier_targets_and_bad_parameters():
    from invguard.targets import CallableTarget

    clf = CallableTarget(lambda x: x, input_shape=(2,), num_classes=2, outputs="logits")
    with pytest.raises(
        AccessError, match=r"text.membership needs a language-model target granting TOPK_LOGPROBS"
    ):
        get("text.membership")().run(clf, None)
    assert clf.queries_used == 0
    with pytest.raises(ConfigError, match=r"text.exposure: samples must be 0 or a whole number >= 50"):
        get("text.exposure")(samples=10)
    with pytest.raises(
        ConfigError,
        match=r"text.extraction: rankings must be a non-empty list of distinct items, each one of",
    ):
        get("text.extraction")(rankings=("loss",))


def test_budgets_are_checked_before_anything_is_spent():
    table = toy_table(2, 0)
    splits = toy_splits(["00"], 2)
    t = toy(table, splits)
    t._budget = 3
    t.score([splits.canaries[0].text] * 3)
    with pytest.raises(BudgetExhausted, match=r"query budget exhausted: 3 of 3 queries used"):
        t.score([splits.canaries[0].text])
    t2 = toy(table, splits)
    t2._token_budget = 10
    with pytest.raises(
        BudgetExhausted, match=r"token budget exhausted: 0 of 10 tokens used, this request may need up to 32"
    ):
        t2.generate(["x"], max_tokens=32)
    assert t2.queries_used == 0 and t2.tokens_used == 0


# ------------------------------------------------------------------------------------- policies


def scored_view() -> TokenLogprobs:
    return TokenLogprobs(
        "ab c",
        ("a", "b", " c"),
        (0, 1, 2),
        np.array([-0.1, -2.345678, -0.5]),
        ({"a": -0.1, "x": -3.0}, {"y": -0.2, "z": -1.0, "b": -2.345678}, {" c": -0.5}),
    )


def test_top_k_policy_hides_a_token_outside_the_top_k_and_rounds():
    out = reveal(scored_view(), TextAccess.TOPK_LOGPROBS, 2, 2)
    assert np.isnan(out.logprobs[1])  # "b" is third at its position
    assert out.logprobs[0] == -0.1 and out.top[1] == {"y": -0.2, "z": -1.0}
    assert out.filled()[1] == -1.0  # the bound an attacker gets: the k-th log-probability
    full = reveal(scored_view(), TextAccess.LOGPROBS, 0, 3)
    assert full.logprobs[1] == -2.346 and full.top == ({}, {}, {})


def test_secret_filter_masks_and_counts_and_parses():
    pol = SecretFilter({"pin": r"pin of \w+ is \d{6}"})
    text = (
        "write to ana@example.org; card 4111 1111 1111 1111, not 4111 1111 1111 1112; the pin of bo is 123456"
    )
    masked, _spans, counts = pol.filter_text(text)
    assert counts == {"email": 1, "card_number": 1, "pin": 1}
    assert "ana@example.org" not in masked and "4111 1111 1111 1111" not in masked
    assert "4111 1111 1111 1112" in masked  # fails the Luhn check
    assert masked.count(MASK) == 3 and "123456" not in masked
    tl = TokenLogprobs(
        "is 123456",
        ("is", " ", "1", "2", "3", "4", "5", "6"),
        (0, 2, 3, 4, 5, 6, 7, 8),
        np.full(8, -0.5),
        tuple({"9": -0.1} for _ in range(8)),
    )
    g, c = SecretFilter({"digits": r"\d{6}"}, defaults=False).apply_generation(
        Generation("p", "is 123456", tl), TextAccess.LOGPROBS, 1
    )
    assert g.text == "is " + MASK and c == {"digits": 1}
    assert g.logprobs.tokens[:2] == ("is", " ") and set(g.logprobs.tokens[2:]) == {MASK}
    assert np.all(np.isnan(g.logprobs.logprobs[2:])) and all(t == {} for t in g.logprobs.top[2:])
    p = text_policy("secret_filter top_logprobs=5 round=2")
    assert p.cap == TextAccess.TOPK_LOGPROBS and p.limits() == (5, 2)
    assert text_policy("strip_logprobs").cap == TextAccess.TEXT
    with pytest.raises(ConfigError, match=r"unknown text policy 'nope'"):
        text_policy("nope")
    with pytest.raises(ConfigError, match=r"secret_filter: pattern 'bad' is not a valid regular expression"):
        SecretFilter({"bad": "("})


def test_policy_wrapped_target_lowers_access():
    table = toy_table(2, 0)
    splits = toy_splits(["00"], 2)
    t = (StripLogprobs()).wrap(toy(table, splits))
    assert t.access == TextAccess.TEXT
    with pytest.raises(
        AccessError, match=r"scoring a text needs TOPK_LOGPROBS or more; this target grants TEXT"
    ):
        t.score(["x"])
    t5 = TopLogprobs(1, 2).wrap(toy(table, splits))
    (s,) = t5.score([splits.canaries[0].text])
    assert t5.access == TextAccess.TOPK_LOGPROBS and all(len(x) <= 1 for x in s.top)


# ------------------------------------------------------------------------------------- wire


def test_openai_wire_requests_are_validated_with_the_field_named():
    from invguard.wire.openai import CHAT, COMPLETIONS, WireError, parse_request

    r = parse_request(COMPLETIONS, {"prompt": ["a", "b"], "logprobs": 5, "echo": True, "max_tokens": 0})
    assert r.prompts == ("a", "b") and r.top_logprobs == 5 and r.echo and r.choices == 2
    c = parse_request(
        CHAT, {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 3}
    )
    assert c.prompts == ("hi",) and c.top_logprobs == 3
    for doc, msg in (
        ({"prompt": 3}, "prompt must be a string or a non-empty list of strings"),
        ({"prompt": "a", "logprobs": 21}, r"logprobs must be a whole number in \[0, 20\]"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens may be 0 only with echo"),
        ({"prompt": "a", "temperature": "hot"}, r"temperature must be a number in \[0.0, 2.0\]"),
    ):
        with pytest.raises(WireError, match=msg):
            parse_request(COMPLETIONS, doc)
    with pytest.raises(WireError, match=r"messages\[0\] must be an object"):
        parse_request(CHAT, {"messages": ["hi"]})


def test_text_corpus_splits_are_disjoint_seeded_and_canaries_distinct():
    a = load_text(max_documents=60, seed=1)
    b = load_text(max_documents=60, seed=1)
    assert a.digest() == b.digest() and a.digest() != load_text(max_documents=60, seed=2).digest()
    assert not set(a.members) & set(a.nonmembers) and not set(a.members) & set(a.public)
    assert len({c.prefix for c in a.canaries}) == len(a.canaries) == 16
    docs = a.training_documents()
    for c in a.canaries:
        assert docs.count(c.text) == c.insertions
    assert "secret" not in str(a.provenance()) and all(
        c.secret not in str(a.provenance()) for c in a.canaries
    )
    fmt = a.canary_format
    assert fmt.secret(fmt.index("004213")) == "004213" and fmt.secrets(np.array([7]))[0] == "000007"


def test_second_corpus_is_the_standard_librarys_docstrings():
    s = load_text("stdlib-docs", max_documents=60, seed=0)
    p = load_text(max_documents=60, seed=0)
    assert s.source == "stdlib-docs" and len(s.members) == 30 and not set(s.members) & set(p.members)
    assert not set(s.members) & set(s.nonmembers)
    assert any("Return" in d or "return" in d for d in s.members)  # library documentation, not topic help
    with pytest.raises(Exception, match=r"not 'pydoc' or 'stdlib-docs' and no such file or folder"):
        load_text("no-such-corpus")
