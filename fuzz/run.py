"""A short fuzzing run of newsflow's parsers: one target per parser (``fuzz/targets.py``).

    python fuzz/run.py --seconds 60                   # every target, 60 s each, 2 at a time
    python fuzz/run.py --seconds 300 --targets feed,url
    python fuzz/run.py --engine random                # without atheris

Engines: ``atheris`` (coverage-guided libFuzzer, ``pip install -e '.[fuzz]'``) when it can be
imported, else ``random``, a pure-Python mutator of the same seeds (no coverage feedback). Each
target starts from its seeds (``tests/golden/*``, ``fuzz/seeds/<target>``, the committed regression
inputs) and keeps what it finds in ``fuzz/corpus/<target>`` for the next run. A crashing input is
copied to ``tests/golden/fuzz-regressions/<target>/``, where ``tests/test_fuzz_regressions.py``
runs it: fix the code, commit the input with the fix. Logs: ``fuzz/logs/<target>.log``.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
GOLDEN = REPO / "tests" / "golden"
REGRESSIONS = GOLDEN / "fuzz-regressions"
DEMO_SITE = REPO / "newsflow" / "demo" / "site"

TARGET_NAMES = ("feed", "url", "extract", "opml", "sitemap", "robots", "dates")
# Packages whose Python code atheris instruments for coverage, per target (``tasks`` always).
INSTRUMENTED: dict[str, tuple[str, ...]] = {
    "feed": ("feedparser",),
    "url": ("courlan",),
    "extract": ("trafilatura", "htmldate", "courlan"),
    "opml": ("listparser",),
    "sitemap": (),
    "robots": ("protego",),
    "dates": ("feedparser",),
}
INPUT_TIMEOUT_S = 20  # one input taking longer is a finding (a hang)
DEFAULT_MAX_LEN = 16_384


# --------------------------------------------------------------------------- seeds


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def _derived_feed_seeds(rss: bytes) -> Iterator[tuple[str | None, bytes]]:
    """Hostile variants the golden files lack: other encodings with a BOM, DTDs and entities,
    JSON Feed with wrong types."""
    text = rss.decode("utf-8")
    for codec, bom in (("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE)):
        yield None, bom + text.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode(codec)
    for codec, bom in (("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE)):
        yield None, bom + text.replace('encoding="UTF-8"', 'encoding="UTF-32"').encode(codec)
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">'
        b'<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<rss version="2.0"><channel><title>&c;</title><item><title>&c;&x;</title>'
        b"<link>/a</link><description>&b; &amp; &nbsp; &#0; &#55296;</description></item></channel></rss>"
    )
    yield None, laughs
    yield None, laughs.replace(b"<!DOCTYPE", b"<!DOC<!DOCTYPE x>TYPE")
    wrong_types = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": ["not", "a", "string"],
        "home_page_url": 5,
        "authors": [{"name": 1}, "x", {"name": "Ann"}],
        "items": [
            {"id": 7, "url": {"x": 1}, "title": None, "date_published": 12, "tags": "a,b"},
            {"id": "\ud800", "url": "/rel?utm_source=x", "date_modified": "2024-13-45T99:99"},
            {"attachments": [{"url": "//cdn.example/a.mp3", "size_in_bytes": -1}, 3, {"url": None}]},
            [],
            "item",
        ],
    }
    yield "application/feed+json", json.dumps(wrong_types).encode()


def seed_inputs(target: str) -> Iterator[bytes]:
    """The inputs a target starts from, encoded as its fuzz function reads them."""
    _importable()
    from targets import FEED_CONTENT_TYPES, feed_input

    if target == "feed":
        for path in _files(GOLDEN / "feeds"):
            if path.name.endswith(".expected.json"):
                continue
            body = path.read_bytes()
            yield feed_input(body, None)
            content_type = "application/feed+json" if path.suffix == ".json" else "application/rss+xml"
            yield feed_input(body, content_type)
        for path in (DEMO_SITE / "rss.xml", DEMO_SITE / "atom.xml"):
            if path.is_file():
                yield feed_input(path.read_bytes(), None)
        rss20 = GOLDEN / "feeds" / "rss20.xml"
        if rss20.is_file():
            for content_type, body in _derived_feed_seeds(rss20.read_bytes()):
                yield feed_input(body, content_type)
        yield bytes([FEED_CONTENT_TYPES.index("text/xml; charset=utf-16")]) + b"\xff\xfe<\x00r\x00"
    elif target == "opml":
        for path in _files(GOLDEN / "opml"):
            yield path.read_bytes()
    elif target == "extract":
        for path in sorted((DEMO_SITE / "articles").glob("*.html")):
            yield b"text/html; charset=utf-8\n" + path.read_bytes()[:DEFAULT_MAX_LEN]
    elif target == "sitemap":
        for path in (DEMO_SITE / "atom.xml",):
            if path.is_file():
                yield path.read_bytes()
    for path in _files(FUZZ_DIR / "seeds" / target):
        yield path.read_bytes()
    for path in _files(REGRESSIONS / target):
        yield path.read_bytes()


def prepare_corpus(target: str, corpus_root: Path) -> Path:
    corpus = corpus_root / target
    corpus.mkdir(parents=True, exist_ok=True)
    for data in seed_inputs(target):
        path = corpus / f"seed-{hashlib.sha1(data).hexdigest()}"
        if not path.exists():
            path.write_bytes(data)
    return corpus


# --------------------------------------------------------------------------- workers


def _importable() -> None:
    """``targets`` from this directory, ``tasks`` from the repository even when not installed."""
    for path in (str(REPO), str(FUZZ_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)


def _load_target(name: str, instrument: bool) -> Callable[[bytes], None]:
    _importable()
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["tasks", "targets", *INSTRUMENTED[name]]):
            if name == "extract":
                import trafilatura  # noqa: F401 - imported lazily by tasks.extract: instrument it now
            import targets
    else:
        import targets
    return targets.TARGETS[name]


def work_atheris(name: str, seconds: int, corpus: Path, artifacts: Path, max_len: int) -> None:
    import atheris

    target = _load_target(name, instrument=True)
    dictionary = corpus.parent / f"{name}.dict"
    _write_dictionary(dictionary_tokens(name), dictionary)
    args = [
        sys.argv[0],
        f"-dict={dictionary}",
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        "-rss_limit_mb=3072",
        f"-max_len={max_len}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(args, target)
    atheris.Fuzz()


_TOKENS = (
    b"<!DOCTYPE x [", b"<!ENTITY e \"", b"&e;", b"&#x", b"&#55296;", b"&amp;", b"]]>", b"<![CDATA[",
    b"<?xml version=\"1.0\" encoding=\"", b"utf-16", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf",
    b"\x00", b"\xed\xa0\x80", b"\"version\":\"https://jsonfeed.org/version/1.1\"", b"{\"items\":[",
    b"http://", b"https://", b"//", b"[::1]", b":80", b":443", b"?utm_source=", b"#", b"%", b"%ff",
    b"charset=", b"<item>", b"<entry>", b"<link>", b"href=\"", b"<loc>", b"<outline xmlUrl=\"",
    b"User-agent: *\n", b"Disallow: ", b"Crawl-delay: ", b"T10:00:00+", b"Z", b"\n",
)  # fmt: skip


def dictionary_tokens(target: str) -> list[bytes]:
    """Tokens the mutators insert: the formats' syntax, and for pages every codec name Python has
    (an HTTP charset is free text: ``charset=undefined`` must not break decoding)."""
    tokens = list(_TOKENS)
    if target == "extract":
        import encodings
        import pkgutil

        codecs_known = {m.name for m in pkgutil.iter_modules(encodings.__path__)}
        codecs_known |= set(encodings.aliases.aliases)
        tokens += [f"charset={name}".encode() for name in sorted(codecs_known)]
    return tokens


def _write_dictionary(tokens: list[bytes], path: Path) -> None:
    """libFuzzer's -dict format: one quoted token a line, bytes outside printable ASCII as \\xNN."""
    lines = []
    for token in tokens:
        escaped = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token)
        lines.append(f'"{escaped}"')
    path.write_text("\n".join(lines) + "\n")


def _mutate(rng: random.Random, data: bytes, pool: list[bytes], tokens: list[bytes], max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and buf:  # delete a run
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3:  # a token of the formats
            buf[pos:pos] = rng.choice(tokens)
        elif op == 4 and buf:  # duplicate a run (repetition, nesting)
            start = rng.randrange(len(buf))
            chunk = bytes(buf[start : start + rng.randint(1, 256)])
            buf[pos:pos] = chunk * rng.randint(1, 16)
        elif op == 5 and pool:  # splice another input
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf[pos:] = other[cut:]
        elif op == 6 and buf:  # an interesting byte
            buf[rng.randrange(len(buf))] = rng.choice(b"\x00\xff<>&;\"'/\\:?#[]{}%\n")
    return bytes(buf[:max_len])


class _InputTimeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _InputTimeout(f"one input ran over {INPUT_TIMEOUT_S} s")


def work_random(name: str, seconds: int, corpus: Path, artifacts: Path, max_len: int, seed: int) -> None:
    """Mutate the corpus at random, run the target, stop at the first crash (as libFuzzer does)."""
    target = _load_target(name, instrument=False)
    rng = random.Random(seed)
    pool = [p.read_bytes() for p in _files(corpus)] or [b""]
    tokens = dictionary_tokens(name)
    signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    runs = 0
    while time.monotonic() - started < seconds:
        # The corpus as it is first, then mutations of it.
        data = pool[runs] if runs < len(pool) else _mutate(rng, rng.choice(pool), pool, tokens, max_len)
        signal.alarm(INPUT_TIMEOUT_S)
        try:
            target(data)
        except BaseException:  # noqa: BLE001 - every escape is a finding
            signal.alarm(0)
            path = artifacts / f"crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"==ERROR: uncaught exception; test unit written to {path}", flush=True)
            print(f"Done {runs + 1} runs in {int(time.monotonic() - started)} second(s)", flush=True)
            sys.exit(1)
        signal.alarm(0)
        runs += 1
    print(f"stat::number_of_executed_units: {runs}", flush=True)
    print(f"Done {runs} runs in {int(time.monotonic() - started)} second(s)", flush=True)


# --------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    target: str
    engine: str
    seconds: float
    executions: int | None
    corpus_size: int
    crashes: list[Path]
    returncode: int


_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)|Done (\d+) runs in")


def _executions(log: str) -> int | None:
    found = None
    for match in _EXECUTED.finditer(log):
        found = int(match.group(1) or match.group(2))
    return found


def _findings(artifacts: Path) -> list[Path]:
    """libFuzzer's artifacts: crash-*, timeout-*, oom-* (the random engine writes crash-*)."""
    return [p for p in _files(artifacts) if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]


def run_target(name: str, args: argparse.Namespace, engine: str) -> Outcome:
    corpus = prepare_corpus(name, args.corpus)
    artifacts = FUZZ_DIR / "artifacts" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(_findings(artifacts))
    logs = FUZZ_DIR / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--engine", engine]
    command += ["--seconds", str(args.seconds), "--corpus", str(args.corpus), "--max-len", str(args.max_len)]
    command += ["--seed", str(args.seed)]
    started = time.monotonic()
    with log_path.open("w") as log:
        # The worker gets a grace period beyond its budget (imports, a last slow input).
        try:
            done = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=args.seconds + 120, cwd=REPO
            )
            returncode = done.returncode
        except subprocess.TimeoutExpired:
            returncode = -signal.SIGKILL
    elapsed = time.monotonic() - started
    crashes = []
    for path in sorted(set(_findings(artifacts)) - before):
        if args.no_save:
            crashes.append(path)
            continue
        saved = REGRESSIONS / name / path.name
        saved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, saved)
        crashes.append(saved)
    text = log_path.read_text(errors="replace")
    return Outcome(name, engine, elapsed, _executions(text), len(_files(corpus)), crashes, returncode)


def _engine(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "random"
    return "atheris"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES), help="comma-separated targets")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="targets at once")
    parser.add_argument("--corpus", type=Path, default=FUZZ_DIR / "corpus")
    parser.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="largest input, bytes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random engine")
    parser.add_argument("--no-save", action="store_true", help="leave crashes in fuzz/artifacts only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.corpus = args.corpus.resolve()
    engine = _engine(args.engine)

    if args.worker:
        corpus = args.corpus / args.worker
        artifacts = FUZZ_DIR / "artifacts" / args.worker
        if engine == "atheris":
            work_atheris(args.worker, args.seconds, corpus, artifacts, args.max_len)
        else:
            work_random(args.worker, args.seconds, corpus, artifacts, args.max_len, args.seed)
        return 0

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGET_NAMES))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)} (known: {', '.join(TARGET_NAMES)})")
    print(f"fuzzing {', '.join(names)} with {engine}, {args.seconds} s each, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda n: run_target(n, args, engine), names))
    total = 0
    print(
        f"{'target':<9} {'engine':<8} {'seconds':>7} {'executions':>11} {'exec/s':>7} {'corpus':>6}  crashes"
    )
    for o in outcomes:
        total += o.executions or 0
        rate = f"{(o.executions or 0) / o.seconds:.0f}" if o.seconds else "-"
        status = ", ".join(str(p.relative_to(REPO)) for p in o.crashes) or (
            "none" if o.returncode == 0 else f"worker exited {o.returncode}: see fuzz/logs/{o.target}.log"
        )
        print(
            f"{o.target:<9} {o.engine:<8} {o.seconds:>7.0f} {o.executions or 0:>11} {rate:>7} "
            f"{o.corpus_size:>6}  {status}"
        )
    print(f"total executions: {total}")
    return 0 if all(o.returncode == 0 and not o.crashes for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
