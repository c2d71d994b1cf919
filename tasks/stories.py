"""Story identity: which articles tell the same story (near-duplicates across outlets, feeds, runs).

Plain functions over plain data; the warehouse side (``warehouse/stories.py``) stores the index
and answers "which stored articles share these band keys?".

The method (chosen by measurement: ``benchmarks/story_eval.py``, results in
``benchmarks/results/story_eval.json``):

1. **Shingles.** The text is split into lines; lines of fewer than ``min_line_words`` words
   (menus, share buttons, "Advertisement", bylines: the template leftovers of extraction) are
   dropped unless that would drop half of the words. The words (Unicode NFKC, case-folded,
   ``\\w+``; CJK ideographs and kana one token each) form overlapping ``shingle``-word shingles,
   hashed to 64 bits (blake2b per word, a polynomial over the words, a splitmix64 finaliser).
2. **Candidates: MinHash LSH, one value per band.** ``bands`` independent min-hashes of the
   shingle set; each one, salted with its band number, is a band key (BIGINT) stored in
   ``story_index``. Two texts share a given band key with probability equal to their Jaccard
   similarity J, so a stored article is a candidate when it shares at least
   ``min_shared_bands`` keys: P = 1 - P[Binomial(bands, J) < min_shared_bands], 0.993 at J = 0.2
   with 32 bands and 2 shared keys. One-value bands matter for truncated teasers (J is only about
   0.3 between a 40 % teaser and its original); asking for two shared keys keeps the chance
   collisions of unrelated articles (a common phrase that happens to be a minimum) out of the
   verification step.
3. **Verification: exact shingle sets.** A candidate is the same story when
   ``(J + C) / 2 >= threshold``, with J = |A∩B| / |A∪B| and C = |A∩B| / min(|A|, |B|), the
   containment of the shorter text in the longer (C is replaced by J when the shorter text has
   fewer than ``min_containment_shingles`` shingles: a few words contained somewhere prove
   nothing). J alone misses teasers and heavily edited copies; C alone merges short briefs that
   share a few stock sentences or a template; their mean separates both (see the evaluation).
4. **Assignment, deterministic.** The articles of a batch are taken in canonical order, (time,
   article_id) with time = ``published_at``, else ``fetched_at``. Each one joins the story of its
   best verified match (highest score; ties to the earliest match) among the stored candidates
   and the batch articles before it; with no match it starts a story whose id is its own
   ``article_id``. The same articles in any order give the same stories; ``recluster`` replays
   every stored article in canonical order through the same function. Stored articles never
   change story except by ``recluster``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from hashlib import blake2b

import numpy as np


@dataclass(frozen=True)
class StoryParams:
    shingle: int = 4  # words per shingle
    bands: int = 32  # LSH band keys per article (one min-hash each)
    min_shared_bands: int = 2  # band keys a stored article must share to be verified
    threshold: float = 0.45  # (J + C) / 2 at or above which two texts are the same story
    min_line_words: int = 8  # shorter lines are template leftovers (unless they are most of the text)
    min_containment_shingles: int = 20  # below this, containment is not evidence: J only
    max_candidates: int = 50  # per article, the stored candidates verified (most shared keys first)
    min_shingles: int = 3  # texts with fewer shingles get no fingerprint (and a story of their own)

    def with_threshold(self, threshold: float) -> StoryParams:
        return StoryParams(**{**self.__dict__, "threshold": threshold})


PARAMS = StoryParams()

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_POLY = np.uint64(0x100000001B3)  # FNV prime: the polynomial base over word hashes


def _seeds(n: int, salt: bytes) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(blake2b(salt + i.to_bytes(4, "big"), digest_size=8).digest(), "big")
            for i in range(n)
        ],
        dtype=np.uint64,
    )


@lru_cache(maxsize=16)
def _band_seeds(bands: int) -> tuple[np.ndarray, np.ndarray]:
    return _seeds(bands, b"newsflow-minhash"), _seeds(bands, b"newsflow-band")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    return int.from_bytes(blake2b(word.encode("utf-8"), digest_size=8).digest(), "big")


def words(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def body_words(text: str, min_line_words: int = PARAMS.min_line_words) -> list[str]:
    """The words of the text's lines of at least ``min_line_words`` words; all the words when
    those lines hold less than half of them (a list, a poem, a text without line breaks)."""
    lines = [words(line) for line in text.split("\n")]
    total = sum(len(w) for w in lines)
    kept = [w for line in lines if len(line) >= min_line_words for w in line]
    if len(kept) * 2 < total:
        return [w for line in lines for w in line]
    return kept


def shingles(text: str | None, params: StoryParams = PARAMS) -> np.ndarray:
    """The sorted, unique 64-bit hashes of the text's word shingles."""
    if not text:
        return np.empty(0, dtype=np.uint64)
    ws = body_words(text, params.min_line_words)
    if not ws:
        return np.empty(0, dtype=np.uint64)
    h = np.fromiter((_word_hash(w) for w in ws), dtype=np.uint64, count=len(ws))
    k = min(params.shingle, len(h))
    n = len(h) - k + 1
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        acc = acc * _POLY + h[j : j + n]
    return np.unique(_mix(acc))


@dataclass(frozen=True, eq=False)
class Fingerprint:
    shingles: np.ndarray = field(repr=False)  # sorted unique uint64
    bands: tuple[int, ...]  # the LSH band keys, signed 64-bit (DuckDB BIGINT)

    @property
    def size(self) -> int:
        return len(self.shingles)


def band_keys(shingle_set: np.ndarray, bands: int = PARAMS.bands) -> tuple[int, ...]:
    """One min-hash per band (a different hash function each), salted with the band number."""
    seeds, salts = _band_seeds(bands)
    minima = _mix(shingle_set[None, :] ^ seeds[:, None]).min(axis=1)
    return tuple(int(v) for v in _mix(minima ^ salts).view(np.int64))


def fingerprint(text: str | None, params: StoryParams = PARAMS) -> Fingerprint | None:
    """The article's shingle set and band keys; None when the text is too short to tell."""
    s = shingles(text, params)
    if len(s) < params.min_shingles:
        return None
    return Fingerprint(s, band_keys(s, params.bands))


def scores(a: Fingerprint, b: Fingerprint, params: StoryParams = PARAMS) -> tuple[float, float, float]:
    """(score, Jaccard, containment of the smaller set in the larger)."""
    inter = len(np.intersect1d(a.shingles, b.shingles, assume_unique=True))
    union = a.size + b.size - inter
    jaccard = inter / union if union else 0.0
    smaller = min(a.size, b.size)
    containment = inter / smaller if smaller >= params.min_containment_shingles else jaccard
    return (jaccard + containment) / 2, jaccard, containment


def similarity(a: Fingerprint, b: Fingerprint, params: StoryParams = PARAMS) -> float:
    return scores(a, b, params)[0]


def story_similarity(text_a: str | None, text_b: str | None, params: StoryParams = PARAMS) -> float:
    """The verification score of two texts: (Jaccard + containment) / 2 of their shingle sets."""
    a, b = fingerprint(text_a, params), fingerprint(text_b, params)
    if a is None or b is None:
        return 0.0
    return similarity(a, b, params)


def same_story(text_a: str | None, text_b: str | None, params: StoryParams = PARAMS) -> bool:
    return story_similarity(text_a, text_b, params) >= params.threshold


# --------------------------------------------------------------------------- candidates


def shared_band_counts(
    bands: Iterable[int], postings: Mapping[int, Sequence[str]], exclude: str | None = None
) -> dict[str, int]:
    """For each article listed under any of ``bands``: how many of them it shares."""
    counts: dict[str, int] = {}
    for band in set(bands):
        for article_id in set(postings.get(band, ())):
            if article_id != exclude:
                counts[article_id] = counts.get(article_id, 0) + 1
    return counts


def select_candidates(
    bands: Iterable[int],
    postings: Mapping[int, Sequence[str]],
    params: StoryParams = PARAMS,
    exclude: str | None = None,
) -> list[str]:
    """The articles worth verifying: sharing at least ``min_shared_bands`` keys, most first (ties
    by article_id), at most ``max_candidates``."""
    counts = shared_band_counts(bands, postings, exclude)
    chosen = sorted(
        (a for a, n in counts.items() if n >= params.min_shared_bands), key=lambda a: (-counts[a], a)
    )
    return chosen[: params.max_candidates]


# --------------------------------------------------------------------------- assignment


@dataclass(frozen=True)
class StoryArticle:
    """An article to place: its id, its time (published, else fetched) and its text."""

    article_id: str
    when: datetime
    text: str | None

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.when, self.article_id)


@dataclass(frozen=True)
class StoredArticle:
    """A stored article found through the index, with the story it belongs to."""

    article_id: str
    story_id: str
    when: datetime
    fingerprint: Fingerprint | None


@dataclass(frozen=True)
class Placement:
    article_id: str
    story_id: str | None  # None: no text
    matched: str | None  # the article it was matched to (None: a new story)
    score: float | None
    bands: tuple[int, ...]  # its band keys: the index rows to write


def assign_batch(
    batch: Sequence[StoryArticle],
    fingerprints: Mapping[str, Fingerprint | None],
    candidates: Mapping[str, Sequence[str]],
    stored: Mapping[str, StoredArticle],
    params: StoryParams = PARAMS,
    kept_story: Mapping[str, str] | None = None,
) -> list[Placement]:
    """Place each article of ``batch`` in a story, in canonical order (the input order does not
    matter). ``fingerprints`` holds the batch's; ``candidates[article_id]`` the stored articles
    its band keys selected (:func:`select_candidates`), described in ``stored``.

    ``kept_story[article_id]``: the story an article keeps whatever its text (a new version of a
    stored article stays in its article's story). It is not matched, but it gets its band keys
    and later articles can match it, so copies of the new text find that story.

    Returns one placement per article, in canonical order."""
    kept_story = kept_story or {}
    placed: list[Placement] = []
    story_of: dict[str, str] = {}
    postings: dict[int, list[str]] = {}  # band keys of the batch articles already placed
    when_of: dict[str, tuple[datetime, str]] = {}
    for art in sorted(batch, key=lambda a: a.order):
        fp = fingerprints.get(art.article_id)
        if not art.text:
            placed.append(Placement(art.article_id, None, None, None, ()))
            continue
        kept = kept_story.get(art.article_id)
        if fp is None:  # too short to compare: a story of its own (or the one it keeps)
            story_of[art.article_id] = kept or art.article_id
            placed.append(Placement(art.article_id, kept or art.article_id, None, None, ()))
            continue
        if kept is not None:
            story_of[art.article_id] = kept
            when_of[art.article_id] = art.order
            for band in fp.bands:
                postings.setdefault(band, []).append(art.article_id)
            placed.append(Placement(art.article_id, kept, None, None, fp.bands))
            continue
        # (other article, its fingerprint, its story, its canonical order): stored, then batch
        others = [
            (s.article_id, s.fingerprint, s.story_id, (s.when, s.article_id))
            for s in (stored.get(a) for a in candidates.get(art.article_id, ()))
            if s is not None and s.article_id != art.article_id
        ]
        others += [
            (a, fingerprints[a], story_of[a], when_of[a])
            for a in select_candidates(fp.bands, postings, params, exclude=art.article_id)
        ]
        best: tuple[float, tuple[datetime, str], str, str] | None = None  # score, order, id, story
        for other_id, other_fp, other_story, order in others:
            if other_fp is None:
                continue
            score = similarity(fp, other_fp, params)
            if score >= params.threshold and (best is None or (-score, order) < (-best[0], best[1])):
                best = (score, order, other_id, other_story)

        story_id = best[3] if best else art.article_id
        story_of[art.article_id] = story_id
        when_of[art.article_id] = art.order
        for band in fp.bands:
            postings.setdefault(band, []).append(art.article_id)
        placed.append(
            Placement(
                art.article_id, story_id, best[2] if best else None, best[0] if best else None, fp.bands
            )
        )
    return placed


def cluster(articles: Sequence[StoryArticle], params: StoryParams = PARAMS) -> dict[str, str | None]:
    """The stories of a set of articles on their own (nothing stored): article_id -> story_id."""
    fps = {a.article_id: fingerprint(a.text, params) for a in articles}
    return {p.article_id: p.story_id for p in assign_batch(articles, fps, {}, {}, params)}
