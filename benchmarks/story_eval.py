"""Story identity: how well does near-duplicate clustering tell "same story" from "different story"?

    python benchmarks/story_eval.py                     # the whole evaluation (about 2.5 minutes)
    python benchmarks/story_eval.py --max-articles 150 --output /tmp/se.json   # a quick smoke run

The labelled pairs are built from the ground-truth main texts of the shared corpus (the "article"),
deterministically (``--seed``):

positives: the same article as a syndicator or an editor republishes it. Both sides are wrapped in
  different real boilerplate lines (taken from the HTML of other corpus pages: menus, newsletter
  boxes, related headlines, footers) and carry a different headline line; the copy's body is then
  ``syndicated`` (unchanged), ``edit_5``/``edit_10`` (5 % / 10 % of the words substituted, deleted
  or inserted at random places), ``para_added``, ``para_removed``, ``truncated_40`` (its first 40 %
  of the words: a teaser), ``reordered`` (paragraphs shuffled), and two combinations
  (``teaser_edited``: first 40 % and 5 % of words edited; ``rewrapped_edited``: paragraphs
  reordered, one removed, 5 % edited).
negatives: different articles that look alike. ``same_site`` (every pair of articles whose URLs
  share a host, wrapped in the same template lines: the lines both pages' HTML have), ``same_topic``
  (each article with its nearest other article by TF-IDF cosine), ``stock_sentences`` (same-topic
  pairs that both carry the same three stock sentences: agency credits, newsletter and
  correction boilerplate), ``stock_briefs`` (two different short briefs, the first 60-120 words of
  same-topic articles, sharing the same stock sentences), ``template`` (random pairs wrapped in one
  heavy template of up to 16 identical lines). Negative pairs whose two base texts are in fact the
  same article (the corpus holds a few pages twice) are left out and listed in the results.

Methods compared (each a score per pair, and "same story" = score >= threshold):
- ``simhash``: trafilatura's 64-bit ``Simhash`` similarity (1 - Hamming distance / 64);
- ``minhash_jaccard``: MinHash over word shingles as usually deployed behind an LSH index: score =
  the MinHash (128 permutations) estimate of the Jaccard similarity, which the LSH bands of an
  index tuned to the threshold approximate (banding can only lose recall); datasketch when it is
  installed, newsflow's own numpy MinHash otherwise;
- ``minhash_containment``: score = the MinHash estimate of |A∩B| / min(|A|, |B|) (from the
  Jaccard estimate and the exact set sizes);
- ``newsflow``: what the pipeline runs (``tasks.stories``): candidates from its LSH bands, then an
  exact verification of the shingle sets of the two texts (``tasks.stories.story_similarity``).

Then, on the pipeline's own extraction of every page (``--no-extraction`` skips it): the extraction
against the page's ground-truth text (should be the same story), and every pair of two different
pages' extractions through newsflow's LSH candidates and verification (should be different).

It prints precision / recall per method (at the threshold with the best recall and no false
positive; newsflow also at the pipeline's threshold), recall per positive kind, the false-positive
rate per negative kind, and the threshold curve, and writes ``results/story_eval.json``.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench_common import environment, print_table, write_results
from corpus_sites import CORPORA, CorpusMissing, CorpusPage, load_corpus

from tasks import stories

DEFAULT_SEED = 20251130
MIN_WORDS = 80  # articles shorter than this are not used as the base of pairs
POSITIVE_KINDS = (
    "syndicated",
    "edit_5",
    "edit_10",
    "para_added",
    "para_removed",
    "truncated_40",
    "reordered",
    "teaser_edited",
    "rewrapped_edited",
)
# The kinds the targets are stated on; the combinations are reported beside them.
SINGLE_KINDS = POSITIVE_KINDS[:7]
NEGATIVE_KINDS = ("same_site", "same_topic", "stock_sentences", "stock_briefs", "template")
STOCK_SENTENCES = (
    "The Associated Press contributed to this report.",
    "Reporting by our correspondents; editing by the news desk.",
    "This story has been updated with additional information.",
    "Sign up for our daily newsletter to get the latest headlines delivered to your inbox every morning.",
    "An earlier version of this article misstated a detail; it has been corrected.",
    "Copyright 2025 The Associated Press. All rights reserved. This material may not be published, broadcast, rewritten or redistributed.",
    "Follow us on social media for the latest updates on this and other stories.",
    "If you or someone you know needs help, call or text the crisis line at any time of day.",
    "Subscribers can read the full story and the complete archive with unlimited digital access.",
    "Our journalism depends on readers like you: support independent reporting today.",
)
_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Pair:
    kind: str
    label: bool  # True: same story
    a: str
    b: str
    a_id: str
    b_id: str


@dataclass(frozen=True)
class Article:
    key: str
    host: str
    title: str
    paragraphs: tuple[str, ...]
    boilerplate: tuple[str, ...]  # lines of the page's HTML that are not its main text

    @property
    def words(self) -> int:
        return sum(len(p.split()) for p in self.paragraphs)


# --------------------------------------------------------------------------- corpus


_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}
_LINE_TAGS = (
    "a",
    "li",
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "button",
    "label",
    "figcaption",
    "span",
    "td",
)


def boilerplate_lines(page: CorpusPage, main_text: str, limit: int = 60) -> tuple[str, ...]:
    """Text lines of the page's HTML that are not part of its main text: menus, newsletter boxes,
    related headlines, footers, share buttons. Short lines (2-30 words), in document order."""
    import lxml.html

    try:
        tree = lxml.html.fromstring(page.html)
    except (ValueError, lxml.etree.ParserError):
        return ()
    for el in list(tree.iter(*_SKIP_TAGS)):
        el.drop_tree()
    main = " ".join(_WORD.findall(main_text.casefold()))
    seen: set[str] = set()
    lines: list[str] = []
    for el in tree.iter(*_LINE_TAGS):
        line = _SPACE.sub(" ", el.text_content()).strip()
        n = len(line.split())
        norm = " ".join(_WORD.findall(line.casefold()))
        if not 2 <= n <= 30 or not norm or norm in seen or norm in main:
            continue
        seen.add(norm)
        lines.append(line)
        if len(lines) >= limit:
            break
    return tuple(lines)


def paragraphs_of(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split("\n") if p.strip())


def articles_from(pages: Sequence[CorpusPage]) -> list[Article]:
    out = []
    for page in pages:
        text = page.main_text
        paras = paragraphs_of(text)
        if sum(len(p.split()) for p in paras) < MIN_WORDS:
            continue
        host = (urlsplit(page.url).hostname or page.key).removeprefix("www.")
        out.append(Article(page.key, host, page.title, paras, boilerplate_lines(page, text)))
    return out


# --------------------------------------------------------------------------- transformations


def wrap(body: Sequence[str], headline: str, before: Sequence[str], after: Sequence[str]) -> str:
    """An article as an extractor gives it from some outlet's page: a few template lines that
    survived extraction, the headline, the body, more template lines."""
    return "\n".join([*before, headline, *body, *after])


def template_lines(rng: random.Random, donor: Article, n_before: int, n_after: int) -> tuple[list, list]:
    pool = list(donor.boilerplate) or ["Advertisement", "Share this article"]
    picks = [pool[rng.randrange(len(pool))] for _ in range(n_before + n_after)]
    return picks[:n_before], picks[n_before:]


def new_headline(rng: random.Random, art: Article) -> str:
    """An editor's headline: words of one of the article's sentences, reworded and cut short."""
    words = " ".join(art.paragraphs).split()
    start = rng.randrange(max(1, len(words) - 12))
    head = words[start : start + rng.randint(6, 12)]
    return " ".join(["Update:", *head]) if rng.random() < 0.3 else " ".join(head).capitalize()


def edit_words(rng: random.Random, paras: Sequence[str], rate: float, vocabulary: Sequence[str]) -> list[str]:
    """Edit ``rate`` of the words at random places: 60 % substituted, 20 % deleted, 20 % inserted."""
    out = []
    for para in paras:
        words = para.split()
        edited: list[str] = []
        for w in words:
            if rng.random() >= rate:
                edited.append(w)
                continue
            r = rng.random()
            if r < 0.6:
                edited.append(vocabulary[rng.randrange(len(vocabulary))])
            elif r < 0.8:
                continue
            else:
                edited.extend((w, vocabulary[rng.randrange(len(vocabulary))]))
        if edited:
            out.append(" ".join(edited))
    return out


def truncate_words(paras: Sequence[str], fraction: float) -> list[str]:
    total = sum(len(p.split()) for p in paras)
    budget = max(1, round(total * fraction))
    out: list[str] = []
    for para in paras:
        words = para.split()
        if budget <= 0:
            break
        out.append(" ".join(words[:budget]))
        budget -= len(words)
    return out


def transform(kind: str, rng: random.Random, art: Article, other: Article, vocabulary: Sequence[str]):
    paras = list(art.paragraphs)
    if kind == "syndicated":
        return paras
    if kind == "edit_5":
        return edit_words(rng, paras, 0.05, vocabulary)
    if kind == "edit_10":
        return edit_words(rng, paras, 0.10, vocabulary)
    if kind == "para_added":
        extra = max(other.paragraphs, key=lambda p: (len(p.split()) >= 20, -abs(len(p.split()) - 60)))
        paras.insert(rng.randint(0, len(paras)), extra)
        return paras
    if kind == "para_removed":
        if len(paras) > 1:
            paras.pop(rng.randrange(len(paras)))
        return paras
    if kind == "truncated_40":
        return truncate_words(paras, 0.4) + ["Read more"]
    if kind == "reordered":
        shuffled = paras[:]
        while len(paras) > 1 and shuffled == paras:
            rng.shuffle(shuffled)
        return shuffled
    if kind == "teaser_edited":
        return edit_words(rng, truncate_words(paras, 0.4), 0.05, vocabulary) + ["Read more"]
    if kind == "rewrapped_edited":
        shuffled = paras[:]
        rng.shuffle(shuffled)
        if len(shuffled) > 1:
            shuffled.pop(rng.randrange(len(shuffled)))
        return edit_words(rng, shuffled, 0.05, vocabulary)
    raise ValueError(kind)


# --------------------------------------------------------------------------- similar articles


def tfidf_neighbours(arts: Sequence[Article]) -> list[tuple[int, int, float]]:
    """(i, j, cosine) of each article's nearest other article by TF-IDF cosine of its words."""
    import numpy as np

    docs = [Counter(_WORD.findall(" ".join(a.paragraphs).casefold())) for a in arts]
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c >= 2))}
    n = len(docs)
    idf = np.zeros(len(vocab))
    for w, i in vocab.items():
        idf[i] = math.log(n / df[w])
    matrix = np.zeros((n, len(vocab)), dtype=np.float32)
    for r, d in enumerate(docs):
        for w, c in d.items():
            if w in vocab:
                matrix[r, vocab[w]] = (1 + math.log(c)) * idf[vocab[w]]
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-9
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -1)
    pairs = {}
    for i in range(n):
        j = int(np.argmax(sims[i]))
        key = (min(i, j), max(i, j))
        pairs[key] = float(sims[i, j])
    return sorted((i, j, s) for (i, j), s in pairs.items())


# --------------------------------------------------------------------------- the pairs


def build_pairs(arts: Sequence[Article], seed: int = DEFAULT_SEED) -> list[Pair]:
    rng = random.Random(seed)
    vocabulary = sorted({w for a in arts for p in a.paragraphs for w in p.split() if w.isalpha()})
    with_template = [a for a in arts if len(a.boilerplate) >= 4]
    pairs: list[Pair] = []

    def donor(exclude: Article) -> Article:
        while True:
            d = with_template[rng.randrange(len(with_template))]
            if d.host != exclude.host:
                return d

    def wrapped(art: Article, body: Sequence[str], headline: str, template: Article | None = None) -> str:
        before, after = template_lines(rng, template or donor(art), rng.randint(0, 3), rng.randint(1, 4))
        return wrap(body, headline, before, after)

    # positives: the original (its own title, one outlet's template) against a copy
    for art in arts:
        original = wrapped(art, art.paragraphs, art.title)
        for kind in POSITIVE_KINDS:
            other = arts[rng.randrange(len(arts))]
            while other.key == art.key:
                other = arts[rng.randrange(len(arts))]
            body = transform(kind, rng, art, other, vocabulary)
            copy = wrapped(art, body, new_headline(rng, art))
            pairs.append(Pair(kind, True, original, copy, art.key, art.key + "~" + kind))

    # same site: one template (the lines both pages have, else a donor's) around both
    by_host: dict[str, list[Article]] = defaultdict(list)
    for a in arts:
        by_host[a.host].append(a)
    for host in sorted(by_host):
        group = by_host[host]
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                x, y = group[i], group[j]
                shared = [line for line in x.boilerplate if line in set(y.boilerplate)]
                if len(shared) < 4:
                    shared = list(donor(x).boilerplate)
                before, after = shared[: rng.randint(1, 3)], shared[-rng.randint(2, 5) :]
                pairs.append(
                    Pair(
                        "same_site",
                        False,
                        wrap(x.paragraphs, x.title, before, after),
                        wrap(y.paragraphs, y.title, before, after),
                        x.key,
                        y.key,
                    )
                )

    neighbours = tfidf_neighbours(arts)
    for i, j, _ in neighbours:
        x, y = arts[i], arts[j]
        pairs.append(
            Pair(
                "same_topic",
                False,
                wrapped(x, x.paragraphs, x.title),
                wrapped(y, y.paragraphs, y.title),
                x.key,
                y.key,
            )
        )
        stock = rng.sample(STOCK_SENTENCES, 3)
        pairs.append(
            Pair(
                "stock_sentences",
                False,
                wrapped(x, [*x.paragraphs, *stock], x.title),
                wrapped(y, [*stock[:2], *y.paragraphs, stock[2]], y.title),
                x.key,
                y.key,
            )
        )
        brief_x = truncate_words(x.paragraphs, min(1.0, rng.randint(60, 120) / x.words))
        brief_y = truncate_words(y.paragraphs, min(1.0, rng.randint(60, 120) / y.words))
        pairs.append(
            Pair(
                "stock_briefs",
                False,
                wrapped(x, [*brief_x, *stock], x.title),
                wrapped(y, [*brief_y, *stock], y.title),
                x.key,
                y.key,
            )
        )

    # one heavy template around two unrelated articles
    for _ in range(len(neighbours)):
        x, y = rng.sample(list(arts), 2)
        template = donor(x)
        lines = list(template.boilerplate)
        before, after = lines[:4], lines[4:16]
        pairs.append(
            Pair(
                "template",
                False,
                wrap(x.paragraphs, x.title, before, after),
                wrap(y.paragraphs, y.title, before, after),
                x.key,
                y.key,
            )
        )
    return pairs


def corpus_duplicates(pairs: Sequence[Pair], arts: Sequence[Article]) -> set[tuple[str, str]]:
    """Negative pairs whose base texts are in fact the same article (the corpus holds a few pages
    twice, e.g. the same essay at two URLs): 5-word-shingle containment of the bare main texts
    >= 0.5. They are left out of the negatives and listed in the results."""
    by_key = {a.key: a for a in arts}

    def sh(key: str) -> set[tuple[str, ...]]:
        ws = _WORD.findall(" ".join(by_key[key].paragraphs).casefold())
        return {tuple(ws[i : i + 5]) for i in range(len(ws) - 4)}

    out = set()
    for p in pairs:
        if not p.label and (p.a_id, p.b_id) not in out:
            a, b = sh(p.a_id), sh(p.b_id)
            if len(a & b) >= 0.5 * max(1, min(len(a), len(b))):
                out.add((p.a_id, p.b_id))
    return out


# --------------------------------------------------------------------------- methods


def simhash_scores(pairs: Sequence[Pair]) -> list[float]:
    from trafilatura.deduplication import Simhash

    cache: dict[str, Simhash] = {}

    def sim(text: str) -> Simhash:
        if text not in cache:
            cache[text] = Simhash(text)
        return cache[text]

    return [sim(p.a).similarity(sim(p.b)) for p in pairs]


def plain_shingles(text: str, k: int) -> set[bytes]:
    ws = stories.words(text)
    return {" ".join(ws[i : i + k]).encode() for i in range(max(1, len(ws) - k + 1))}


def minhash_scores(
    pairs: Sequence[Pair], k: int, num_perm: int = 128
) -> tuple[str, list[tuple[float, float]]]:
    """(implementation, [(Jaccard estimate, containment estimate)]) with MinHash over plain word
    shingles (no line filter), datasketch when installed."""
    try:
        from datasketch import MinHash
    except ImportError:  # newsflow's own MinHash: the same estimator
        MinHash = None
    cache: dict[str, tuple[object, int]] = {}

    def mh(text: str):
        if text not in cache:
            sh = plain_shingles(text, k)
            if MinHash is not None:
                m = MinHash(num_perm=num_perm, seed=1)
                m.update_batch(list(sh))
                cache[text] = (m, len(sh))
            else:
                import numpy as np

                hashed = np.unique(stories.shingles(text, stories.StoryParams(shingle=k, min_line_words=0)))
                seeds, _ = stories._band_seeds(num_perm)
                cache[text] = (stories._mix(hashed[None, :] ^ seeds[:, None]).min(axis=1), len(hashed))
        return cache[text]

    out = []
    for p in pairs:
        (ma, na), (mb, nb) = mh(p.a), mh(p.b)
        j = ma.jaccard(mb) if MinHash is not None else float((ma == mb).mean())
        inter = j * (na + nb) / (1 + j)
        out.append((j, min(1.0, inter / max(1, min(na, nb)))))
    return ("datasketch" if MinHash is not None else "newsflow-numpy"), out


def newsflow_scores(
    pairs: Sequence[Pair], params: stories.StoryParams
) -> list[tuple[float, float, float, bool]]:
    """(score, J, C, candidate) per pair: exactly the pipeline's verification, and whether its LSH
    bands would have made the pair a candidate at all."""
    cache: dict[str, stories.Fingerprint | None] = {}

    def fp(text: str):
        if text not in cache:
            cache[text] = stories.fingerprint(text, params)
        return cache[text]

    out = []
    for p in pairs:
        a, b = fp(p.a), fp(p.b)
        if a is None or b is None:
            out.append((0.0, 0.0, 0.0, False))
            continue
        shared = len(set(a.bands) & set(b.bands))
        out.append((*stories.scores(a, b, params), shared >= params.min_shared_bands))
    return out


# --------------------------------------------------------------------------- metrics


def confusion(labels: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    tp = sum(1 for y, p in zip(labels, predicted, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, predicted, strict=True) if not y and p)
    fn = sum(1 for y, p in zip(labels, predicted, strict=True) if y and not p)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "tp": tp, "fp": fp, "fn": fn}


def curve(
    labels: Sequence[bool], score: Sequence[float], gate: Sequence[bool] | None, thresholds
) -> list[dict]:
    gate = gate or [True] * len(labels)
    rows = []
    for t in thresholds:
        pred = [g and s >= t for s, g in zip(score, gate, strict=True)]
        rows.append({"threshold": round(t, 3), **confusion(labels, pred)})
    return rows


def best_threshold(rows: Sequence[dict]) -> dict:
    """The threshold with the highest recall among those with no false positive, else the
    highest precision."""
    clean = [r for r in rows if r["fp"] == 0]
    if clean:
        return max(clean, key=lambda r: (r["recall"], -r["threshold"]))
    return max(rows, key=lambda r: (r["precision"], r["recall"]))


def per_kind(pairs: Sequence[Pair], predicted: Sequence[bool]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kind in (*POSITIVE_KINDS, *NEGATIVE_KINDS):
        idx = [i for i, p in enumerate(pairs) if p.kind == kind]
        if not idx:
            continue
        hits = sum(1 for i in idx if predicted[i])
        key = "recall" if pairs[idx[0]].label else "false_positive_rate"
        out[kind] = {"pairs": len(idx), "same_story": hits, key: round(hits / len(idx), 4)}
    return out


def summarize(pairs: Sequence[Pair], score: Sequence[float], gate, threshold: float, targets_on) -> dict:
    labels = [p.label for p in pairs]
    gate = gate or [True] * len(pairs)
    pred = [g and s >= threshold for s, g in zip(score, gate, strict=True)]
    on = [i for i, p in enumerate(pairs) if not p.label or p.kind in targets_on]
    return {
        "threshold": round(threshold, 3),
        "all_pairs": confusion(labels, pred),
        "issue_kinds": confusion([labels[i] for i in on], [pred[i] for i in on]),
        "per_kind": per_kind(pairs, pred),
    }


# --------------------------------------------------------------------------- real extraction


def _extract_one(job: tuple[str, str, bytes]) -> tuple[str, str | None]:
    from tasks.extract import ExtractJob, extract_article

    key, url, html = job
    return key, extract_article(ExtractJob(key=key, url=url, body=html)).text


def extraction_check(pages: Sequence[CorpusPage], arts: Sequence[Article], params, workers: int) -> dict:
    """The pipeline's own extraction of each page (real template leftovers, real extraction
    errors) against its ground-truth text: should be the same story. Then every pair of two
    different pages' extractions (~470,000 pairs), through the LSH candidates and the
    verification: should be different stories, except the pages the corpus holds twice."""
    from bench_common import warm_pool

    keys = {a.key for a in arts}
    jobs = [(p.key, p.url, p.html) for p in pages if p.key in keys]
    started = time.perf_counter()
    with warm_pool(workers) as pool:
        extracted = dict(pool.map(_extract_one, jobs, chunksize=8))
    seconds = time.perf_counter() - started
    by_key = {a.key: a for a in arts}
    truth_fp = {a.key: stories.fingerprint("\n".join(a.paragraphs), params) for a in arts}
    ext_fp = {k: stories.fingerprint(t, params) for k, t in extracted.items()}
    positives = [
        (k, stories.similarity(truth_fp[k], ext_fp[k], params))
        for k in sorted(extracted)
        if truth_fp.get(k) is not None and ext_fp.get(k) is not None
    ]
    missed = sorted((round(s, 3), k) for k, s in positives if s < params.threshold)
    postings: dict[int, list[str]] = defaultdict(list)
    same: list[tuple[str, str, float]] = []
    candidates = 0
    for k in sorted(k for k, f in ext_fp.items() if f is not None):
        fp = ext_fp[k]
        for other in stories.select_candidates(fp.bands, postings, params):
            candidates += 1
            score = stories.similarity(fp, ext_fp[other], params)
            if score >= params.threshold:
                same.append((other, k, round(score, 3)))
        for band in fp.bands:
            postings[band].append(k)
    n = sum(1 for f in ext_fp.values() if f is not None)
    duplicates = corpus_duplicates(
        [Pair("all_pairs", False, "", "", a, b) for a, b, _ in same], [by_key[k] for k in keys]
    )
    return {
        "extraction_seconds": round(seconds, 1),
        "extracted_vs_truth": {
            "pairs": len(positives),
            "same_story": len(positives) - len(missed),
            "recall": round(1 - len(missed) / max(1, len(positives)), 4),
            "missed": [{"page": k, "score": s} for s, k in missed],
        },
        "all_pairs_of_extractions": {
            "pairs": n * (n - 1) // 2,
            "lsh_candidates": candidates,
            "same_story": len(same),
            "of_which_corpus_duplicates": len(duplicates),
            "false_positives": [{"a": a, "b": b, "score": s} for a, b, s in same if (a, b) not in duplicates],
        },
    }


# --------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate story clustering on labelled corpus pairs.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--max-articles", type=int, help="use only the first N eligible articles")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument(
        "--threshold", type=float, help="the newsflow threshold to report (default: the pipeline's)"
    )
    parser.add_argument(
        "--no-extraction", action="store_true", help="skip the check on the pipeline's own extractions"
    )
    parser.add_argument("--workers", type=int, default=2, help="extraction processes (default 2)")
    parser.add_argument(
        "--output", type=Path, help="results file (default: benchmarks/results/story_eval.json)"
    )
    return parser.parse_args(argv)


def _grid(start: float, step: float, n: int) -> list[float]:
    return [round(start + step * i, 4) for i in range(n)]


def evaluate(pairs: Sequence[Pair], params: stories.StoryParams) -> dict:
    labels = [p.label for p in pairs]
    methods: dict[str, dict] = {}

    started = time.perf_counter()
    sim = simhash_scores(pairs)
    rows = curve(labels, sim, None, _grid(0.5, 0.01, 51))
    methods["simhash"] = {
        "what": "trafilatura.deduplication.Simhash (64 bits), similarity = 1 - Hamming/64",
        "seconds": round(time.perf_counter() - started, 1),
        "best": summarize(pairs, sim, None, best_threshold(rows)["threshold"], SINGLE_KINDS),
        "curve": rows,
    }

    started = time.perf_counter()
    impl, mh = minhash_scores(pairs, params.shingle)
    seconds = round(time.perf_counter() - started, 1)
    for name, values, what in (
        (
            "minhash_jaccard",
            [j for j, _ in mh],
            "MinHash (128 permutations) estimate of the Jaccard similarity",
        ),
        ("minhash_containment", [c for _, c in mh], "MinHash estimate of |A∩B| / min(|A|, |B|)"),
    ):
        rows = curve(labels, values, None, _grid(0.05, 0.025, 38))
        methods[name] = {
            "what": f"{what}, {params.shingle}-word shingles of all the words ({impl})",
            "seconds": seconds,
            "best": summarize(pairs, values, None, best_threshold(rows)["threshold"], SINGLE_KINDS),
            "curve": rows,
        }

    started = time.perf_counter()
    nf = newsflow_scores(pairs, params)
    score, gate = [s for s, *_ in nf], [c for *_, c in nf]
    rows = curve(labels, score, gate, _grid(0.05, 0.025, 38))
    positives = sum(labels)
    methods["newsflow"] = {
        "what": (
            f"tasks.stories: LSH candidates ({params.bands} one-value bands, >= {params.min_shared_bands} "
            f"shared), then exact (J + C) / 2 over {params.shingle}-word shingles of the lines of "
            f">= {params.min_line_words} words"
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "at_pipeline_threshold": summarize(pairs, score, gate, params.threshold, SINGLE_KINDS),
        "best": summarize(pairs, score, gate, best_threshold(rows)["threshold"], SINGLE_KINDS),
        "lsh_candidate_recall": round(
            sum(g for g, y in zip(gate, labels, strict=True) if y) / max(1, positives), 4
        ),
        "lsh_negative_candidates": sum(1 for g, y in zip(gate, labels, strict=True) if g and not y),
        "curve": rows,
        "hardest_negatives": sorted(
            (
                {"kind": p.kind, "a": p.a_id, "b": p.b_id, "score": round(s, 3)}
                for p, s in zip(pairs, score, strict=True)
                if not p.label
            ),
            key=lambda r: -r["score"],
        )[:5],
    }
    return methods


def _print_report(methods: dict, counts: Counter, extraction: dict | None) -> None:
    rows = []
    for name, m in methods.items():
        for label in ("best", "at_pipeline_threshold"):
            s = m.get(label)
            if s is None:
                continue
            rows.append(
                (
                    f"{name} ({'pipeline' if label != 'best' else 'best'})",
                    s["threshold"],
                    s["issue_kinds"]["precision"],
                    s["issue_kinds"]["recall"],
                    s["all_pairs"]["precision"],
                    s["all_pairs"]["recall"],
                    s["all_pairs"]["fp"],
                )
            )
    print_table(
        "Same story over pairs ('issue': the issue's single transformations; 'all': with the combinations)",
        ["method (threshold)", "threshold", "P issue", "R issue", "P all", "R all", "false pos."],
        rows,
    )
    shown = {n: (m.get("at_pipeline_threshold") or m["best"])["per_kind"] for n, m in methods.items()}
    table = []
    for kind in (*POSITIVE_KINDS, *NEGATIVE_KINDS):
        cells = []
        for per in shown.values():
            r = per.get(kind, {})
            cells.append(r.get("recall", r.get("false_positive_rate", "")))
        table.append((kind, counts[kind], *cells))
    print_table(
        "Per kind: recall (positives) or false-positive rate (negatives), each method at its threshold",
        ["kind", "pairs", *shown],
        table,
    )
    print_table(
        "newsflow threshold curve (all pairs)",
        ["threshold", "precision", "recall", "false pos.", "false neg."],
        [
            (r["threshold"], r["precision"], r["recall"], r["fp"], r["fn"])
            for r in methods["newsflow"]["curve"]
            if 0.2 <= r["threshold"] <= 0.7
        ],
    )
    if extraction:
        ev, ap = extraction["extracted_vs_truth"], extraction["all_pairs_of_extractions"]
        print_table(
            "newsflow on the pipeline's own extractions",
            ["check", "pairs", "same story", "rate"],
            [
                ("extraction vs ground truth (positives)", ev["pairs"], ev["same_story"], ev["recall"]),
                (
                    "all pairs of different pages (negatives, minus corpus duplicates)",
                    ap["pairs"],
                    len(ap["false_positives"]),
                    round(len(ap["false_positives"]) / max(1, ap["pairs"]), 7),
                ),
            ],
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        pages = load_corpus(args.corpora)
    except CorpusMissing as exc:
        print(f"skipped: {exc}")
        return 0
    started = time.perf_counter()
    arts = articles_from(pages)
    if args.max_articles:
        arts = arts[: args.max_articles]
    pairs = build_pairs(arts, args.seed)
    excluded = corpus_duplicates(pairs, arts)
    pairs = [p for p in pairs if p.label or (p.a_id, p.b_id) not in excluded]
    counts = Counter(p.kind for p in pairs)
    print(
        f"{len(arts)} articles, {len(pairs)} pairs ({sum(p.label for p in pairs)} positive) "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    params = stories.PARAMS if args.threshold is None else stories.PARAMS.with_threshold(args.threshold)
    methods = evaluate(pairs, params)
    extraction = None if args.no_extraction else extraction_check(pages, arts, params, args.workers)
    _print_report(methods, counts, extraction)
    data = {
        "benchmark": "story_eval",
        "environment": environment(),
        "seed": args.seed,
        "articles": len(arts),
        "pairs": dict(counts),
        "excluded_corpus_duplicates": sorted(excluded),
        "params": dict(params.__dict__),
        "targets": {"precision": 0.99, "recall": 0.95},
        "methods": methods,
        "pipeline_extractions": extraction,
    }
    print(f"results: {write_results(data, 'story_eval.json', args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
