"""Extraction quality of newsflow's own extraction on the shared corpus, against a few trafilatura
settings, each scored with the corpus's own metric.

    python benchmarks/extraction_quality.py                 # everything (a few minutes on 2 cores)
    python benchmarks/extraction_quality.py --max-pages 40  # a quick smoke run

Settings: ``newsflow`` is exactly what the pipeline runs (``tasks.extract.extract_article``, i.e.
``bare_extraction`` with ``EXTRACTOR_OPTIONS``); the others call ``trafilatura.extract`` with its
defaults and with one option changed. Every setting gets the same page bytes and original URL.

Scoring (see README.md):
- scrapinghub: the ScrapingHub article-extraction-benchmark's ``evaluate.py``: ``\\w+`` tokens,
  4-word shingles, per-page normalised TP/FP/FN, precision averaged over the pages that have any
  predicted shingle (an empty prediction is left out of the precision mean and scores recall 0),
  recall averaged over the pages that have any true shingle, F1 of the two means.
  ``precision_strict`` also counts an empty prediction as precision 0.
- wcxb-dev-articles: lower-cased ``\\w+`` bag of words (multiset) overlap per page, F1 averaged
  over pages (empty vs. empty scores 1, one side empty scores 0).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import environment, print_table, warm_pool, write_results
from corpus_sites import CORPORA, CorpusMissing, CorpusPage, corpus_root, load_page, page_refs

from tasks.extract import EXTRACTOR_OPTIONS, Extracted, ExtractJob, extract_article

# name -> keyword arguments of trafilatura.extract; None = the pipeline's own extract_article
SETTINGS: dict[str, dict[str, Any] | None] = {
    "newsflow": None,
    "trafilatura-default": {},
    "include_comments=False": {"include_comments": False},
    "favor_precision=True": {"favor_precision": True},
    "favor_recall=True": {"favor_recall": True},
}
SHINGLE_N = 4
_TOKEN = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.IGNORECASE | re.DOTALL)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
META_FIELDS = ("title", "author", "date")

TpFpFn = tuple[float, float, float]


# --------------------------------------------------------------------------- scrapinghub metric


def _shingles(text: str, n: int = SHINGLE_N) -> Counter[tuple[str, ...]]:
    """As the benchmark: a text shorter than n tokens is one shorter shingle, no text none."""
    tokens = _TOKEN.findall(text or "")
    return Counter(tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i : i + n])


def shingle_tp_fp_fn(true: str, pred: str) -> TpFpFn:
    """Normalised (tp, fp, fn) of one page, so that long pages weigh no more than short ones."""
    t, p = _shingles(true), _shingles(pred)
    tp = float(sum((t & p).values()))
    fp = float(sum((p - t).values()))
    fn = float(sum((t - p).values()))
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (tp, fp, fn)


def _precision(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    if tp == fp == 0:
        return 0.0
    return tp / (tp + fp)


def _recall(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    if tp == fn == 0:
        return 0.0
    return tp / (tp + fn)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def scrapinghub_metrics(pages: Sequence[TpFpFn]) -> dict[str, float]:
    """F1 of the mean precision and mean recall, exactly as the benchmark's evaluate.py."""
    precisions = [_precision(*x) for x in pages if x[0] + x[1] > 0]
    recalls = [_recall(*x) for x in pages if x[0] + x[2] > 0]
    precision = statistics.mean(precisions) if precisions else 0.0
    recall = statistics.mean(recalls) if recalls else 0.0
    strict = statistics.mean(_precision(*x) for x in pages) if pages else 0.0
    return {
        "f1": _f1(precision, recall),
        "precision": precision,
        "recall": recall,
        "precision_strict": strict,
    }


# --------------------------------------------------------------------------- wcxb metric


def _words(text: str) -> Counter[str]:
    return Counter(_TOKEN.findall((text or "").lower()))


def word_prf(true: str, pred: str) -> tuple[float, float, float]:
    """Per-page (precision, recall, F1) of the lower-cased bag of words."""
    t, p = _words(true), _words(pred)
    if not t and not p:
        return 1.0, 1.0, 1.0
    if not t or not p:
        return 0.0, 0.0, 0.0
    common = sum((t & p).values())
    precision, recall = common / sum(p.values()), common / sum(t.values())
    return precision, recall, _f1(precision, recall)


# --------------------------------------------------------------------------- metadata


def _norm(value: str | None) -> str:
    return " ".join((value or "").split()).casefold()


def _day(value: str | None) -> str:
    match = _DATE.search(value or "")
    return match.group(0) if match else ""


def metadata_matches(truth: dict[str, Any], ex: Extracted) -> dict[str, bool | None]:
    """Per field: None when the ground truth has no value, else whether the extraction matches."""
    pairs = {
        "title": (_norm(truth.get("title")), _norm(ex.title)),
        "author": (_norm(truth.get("author")), _norm(ex.author)),
        "date": (_day(truth.get("publish_date")), _day(ex.date)),
    }
    return {k: (t == p) if t else None for k, (t, p) in pairs.items()}


# --------------------------------------------------------------------------- one page (in a worker)


@dataclass
class PageScore:
    setting: str
    corpus: str
    page_id: str
    seconds: float
    empty: bool
    error: str | None = None
    shingles: TpFpFn | None = None  # scrapinghub
    words: tuple[float, float, float] | None = None  # wcxb (p, r, f1)
    meta: dict[str, bool | None] = field(default_factory=dict)  # wcxb, newsflow setting only


def _extract(setting: str, page: CorpusPage) -> tuple[str, Extracted | None]:
    options = SETTINGS[setting]
    if options is None:
        ex = extract_article(ExtractJob(key=page.key, url=page.url, body=page.html))
        return ex.text or "", ex
    from trafilatura import extract

    return extract(page.html, url=page.url, **options) or "", None


def score_page(task: tuple[str, str, str, str]) -> PageScore:
    setting, corpus, page_id, root = task
    page = load_page(corpus, page_id, Path(root))
    error = None
    started = time.perf_counter()
    try:
        text, ex = _extract(setting, page)
    except Exception as exc:  # one bad page must not end the run
        text, ex, error = "", None, f"{exc.__class__.__name__}: {exc}"[:300]
    score = PageScore(setting, corpus, page_id, time.perf_counter() - started, not text.strip(), error)
    if corpus == "scrapinghub":
        score.shingles = shingle_tp_fp_fn(page.main_text, text)
    else:
        score.words = word_prf(page.main_text, text)
        if ex is not None:
            score.meta = metadata_matches(page.truth, ex)
    return score


# --------------------------------------------------------------------------- aggregation


def summarize(scores: Sequence[PageScore], wall: float) -> dict[str, Any]:
    sh = [s.shingles for s in scores if s.shingles is not None]
    wc = [s.words for s in scores if s.words is not None]
    out: dict[str, Any] = {
        "pages": len(scores),
        "empty_predictions": sum(s.empty for s in scores),
        "errors": sum(s.error is not None for s in scores),
        "wall_seconds": round(wall, 2),
        "pages_per_second": round(len(scores) / wall, 2) if wall else None,
        "extract_ms_mean": round(1000 * statistics.mean(s.seconds for s in scores), 1) if scores else None,
        "scrapinghub": {"pages": len(sh), **_rounded(scrapinghub_metrics(sh))} if sh else None,
        "wcxb": _wcxb_summary(wc) if wc else None,
    }
    meta = [s.meta for s in scores if s.meta]
    if meta:
        out["wcxb_metadata"] = _metadata_summary(meta)
    return out


def _wcxb_summary(pages: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    return {
        "pages": len(pages),
        "f1": round(statistics.mean(p[2] for p in pages), 4),
        "precision": round(statistics.mean(p[0] for p in pages), 4),
        "recall": round(statistics.mean(p[1] for p in pages), 4),
    }


def _metadata_summary(meta: Sequence[dict[str, bool | None]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in META_FIELDS:
        known = [m[name] for m in meta if m.get(name) is not None]
        out[name] = {
            "with_truth": len(known),
            "matched": sum(bool(v) for v in known),
            "match_rate": round(sum(bool(v) for v in known) / len(known), 4) if known else None,
        }
    return out


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def worst_pages(scores: Sequence[PageScore], n: int = 10) -> list[dict[str, Any]]:
    """The pipeline's lowest-scoring pages, to look at by hand."""

    def f1(s: PageScore) -> float:
        if s.shingles is not None:
            return _f1(_precision(*s.shingles), _recall(*s.shingles))
        return s.words[2] if s.words else 0.0

    ranked = sorted(scores, key=f1)[:n]
    return [{"corpus": s.corpus, "id": s.page_id, "f1": round(f1(s), 3), "empty": s.empty} for s in ranked]


# --------------------------------------------------------------------------- run


@dataclass
class SettingRun:
    scores: list[PageScore]
    wall: float


def run(settings: Sequence[str], refs: Sequence[tuple[str, str]], workers: int) -> dict[str, SettingRun]:
    """Each setting in turn over all pages, on one warmed-up pool."""
    root = str(corpus_root())
    runs: dict[str, SettingRun] = {}
    with warm_pool(workers) as pool:
        for setting in settings:
            tasks = [(setting, corpus, page_id, root) for corpus, page_id in refs]
            started = time.perf_counter()
            scores = list(pool.map(score_page, tasks, chunksize=4))
            runs[setting] = SettingRun(scores, time.perf_counter() - started)
            print(
                f"  {setting}: {len(tasks)} pages in {runs[setting].wall:.1f} s", file=sys.stderr, flush=True
            )
    return runs


def _table_rows(summaries: dict[str, dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, s in summaries.items():
        sh, wc = s["scrapinghub"] or {}, s["wcxb"] or {}
        rows.append(
            [name, sh.get("f1"), sh.get("precision"), sh.get("recall"), wc.get("f1"),
             s["empty_predictions"], s["pages_per_second"]]
        )  # fmt: skip
    return rows


def _metadata_rows(meta: dict[str, Any]) -> list[list[object]]:
    return [[k, v["matched"], v["with_truth"], v["match_rate"]] for k, v in meta.items()]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score newsflow's extraction on the shared corpus.")
    parser.add_argument("--max-pages", type=int, help="score only this many pages (both corpora interleaved)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--output", type=Path, help="results JSON (default benchmarks/results/extraction_quality.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        refs = page_refs(args.corpora, args.max_pages)
    except CorpusMissing as exc:
        print(f"skipped: {exc}")
        return 0
    print(
        f"scoring {len(refs)} pages x {len(args.settings)} settings on {args.workers} processes",
        file=sys.stderr,
    )
    runs = run(args.settings, refs, args.workers)
    summaries = {name: summarize(r.scores, r.wall) for name, r in runs.items()}
    print_table(
        "Extraction quality (scrapinghub: shingle metric; wcxb: bag-of-words F1)",
        ["setting", "SH F1", "SH P", "SH R", "WCXB F1", "empty", "pages/s"],
        _table_rows(summaries),
    )
    meta = summaries.get("newsflow", {}).get("wcxb_metadata")
    if meta:
        print_table(
            "newsflow metadata vs WCXB ground truth",
            ["field", "matched", "with truth", "rate"],
            _metadata_rows(meta),
        )
    data = {
        "benchmark": "extraction_quality",
        "environment": environment(),
        "workers": args.workers,
        "max_pages": args.max_pages,
        "pipeline_options": EXTRACTOR_OPTIONS,
        "settings": {
            name: {"trafilatura_extract_kwargs": SETTINGS[name], **s} for name, s in summaries.items()
        },
        "newsflow_worst_pages": worst_pages(runs["newsflow"].scores) if "newsflow" in runs else [],
    }
    print(f"results: {write_results(data, 'extraction_quality.json', args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
