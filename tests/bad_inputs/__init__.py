"""The shared bad-input corpus: malformed logs, adversarial strings, huge fields, wrong encodings.

Used by the Beam jobs' tests (``beam_jobs.build_samples`` and ``beam_jobs.batch_score`` on generic logs)
and by the model-server tests (the same strings inside serialized ``tf.Example``s). Committed files:

* ``logs_bad.jsonl`` / ``logs_bad.csv``: one case per line (truncated rows, wrong column counts, bad
  numbers, unknown domains, invalid UTF-8, wrong JSON types, and odd-but-valid rows that must be kept);
* ``logs_latin1.csv``, ``logs_utf8_bom.csv``, ``logs_utf16_bom.jsonl``: whole files in the wrong encoding;
* ``logs_crashers.jsonl``: rows that crashed ``build_samples`` when found (kept apart until it is fixed);
* ``strings.json``: adversarial strings (ASCII-escaped JSON, so the file itself is plain ASCII).
* ``fuzz.py``: seeded random mutations of valid log lines, REST bodies and gRPC TensorProtos (the fuzz
  tests, ``tests/test_fuzz.py``).

Fields over 100 KB are generated at test time (:func:`huge_lines`), not committed. :data:`LOG_CASES`
says what each line must get: ``"ok"`` (kept / scored), ``"filtered:<reason>"`` (header, blank line) or a
dead-letter reason; ``batch_score`` differs where noted (its label and timestamp are optional).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

CORPUS_DIR = pathlib.Path(__file__).parent
OK = "ok"
SAME = "same"
HUGE = 1 << 20  # 1 MiB


@dataclasses.dataclass(frozen=True)
class LogCase:
    """One line of a corpus log file and what it must get.

    Args:
      file: corpus file name.
      line: 1-based line number.
      what: the input, in words (for docs/RELIABILITY.md).
      expected: what build_samples gives it: "ok", "filtered:<reason>" or a dead-letter reason.
      batch_score: what batch_score gives it, when different (labels and timestamps are optional there).
    """

    file: str
    line: int
    what: str
    expected: str
    batch_score: str = SAME

    @property
    def scoring(self) -> str:
        return self.expected if self.batch_score == SAME else self.batch_score


def _cases(file: str, rows: list[tuple]) -> list[LogCase]:
    return [LogCase(file, i, *row) for i, row in enumerate(rows, start=1)]


LOG_CASES: list[LogCase] = [
    *_cases(
        "logs_bad.jsonl",
        [
            ("good search row", OK),
            ("good rec row", OK),
            ("truncated JSON object", "malformed_json"),
            ("label 1.5", "invalid_label"),
            ("label NaN", "invalid_label"),
            ("timestamp 1e400 (inf)", "invalid_timestamp"),
            ("timestamp 2**64 (overflows int64)", "invalid_timestamp"),
            ('label "1" (a string)', "invalid_label"),
            ("unknown domain rec_horror", "invalid_domain"),
            ("domain in the wrong case (REC_DRAMA)", "invalid_domain"),
            ("invalid UTF-8 bytes in user_id", "invalid_utf8"),
            ("user_id is a list", "invalid_user_id"),
            ("user_id is null", "invalid_user_id"),
            ("item_genres is a string", "invalid_item_genres"),
            ("item_genres holds a number", "invalid_item_genres"),
            ("empty object {}", "invalid_domain"),
            ("top-level array", "malformed_json"),
            ("top-level string", "malformed_json"),
            ("UTF-8 BOM before the object", "malformed_json"),
            ("raw control byte inside a string", "malformed_json"),
            ("unknown column (price)", "unknown_column"),
            ("search row whose query is whitespace", "missing_query"),
            ("rec row with a query", "unexpected_query"),
            ("item_title of 1,001 characters", "item_title_too_long"),
            ("label true (a boolean)", "invalid_label"),
            ('empty user_id ""', OK),
            ("whitespace-only item_id", OK),
            ("NUL, BEL and ANSI escape in user_id (JSON-escaped)", "invalid_user_id"),
            ("RTL override, Hebrew and Arabic in item_title", OK),
            ("emoji ZWJ sequence, zero-width space and BOM in the query", OK),
            ("combining marks (zalgo) in item_title", OK),
            ("fullwidth query (NFKC folds it to 'space')", OK),
            ("item_title of exactly 1,000 characters", OK),
            ("duplicate JSON key (the last one wins)", OK),
            ("SQL / HTML injection text in item_title", OK),
            ("whitespace-only line", "filtered:blank_line"),
        ],
    ),
    *_cases(
        "logs_bad.csv",
        [
            ("header", "filtered:header"),
            ("good rec row", OK),
            ("good search row, quoted title with a comma, two genres", OK),
            ("8 columns (one missing)", "wrong_column_count"),
            ("10 columns (one extra)", "wrong_column_count"),
            ("unterminated quote", "malformed_csv"),
            ('label "yes"', "invalid_label"),
            ('timestamp "1.5e9"', "invalid_timestamp"),
            ("empty label", "invalid_label", OK),
            ("unknown domain rec_horror", "invalid_domain"),
            ("invalid UTF-8 (\\xc3\\x28) in user_id", "invalid_utf8"),
            ("the header again, mid-file", "invalid_label"),
            ("NUL byte inside user_id", "invalid_user_id"),
            ("fullwidth digit label '１' (Python int() would accept it)", "invalid_label"),
            ("label ' 1 ' with spaces", "invalid_label"),
            ("CRLF line ending", OK),
            ("trailing delimiter (10 columns)", "wrong_column_count"),
            ("only delimiters", "invalid_label", "invalid_domain"),
            ("label -1", "invalid_label"),
            ("empty item_id", OK),
        ],
    ),
    *_cases(
        "logs_hostile.jsonl",
        [
            ("label: an integer of 5,000 digits", "number_too_long"),
            ("timestamp: an integer of 5,000 digits", "number_too_long"),
            ("label: a negative integer of 5,000 digits", "number_too_long"),
            ('item_genres a JSON object {"Action": 1, "Drama": 2}', "invalid_item_genres"),
            ("line feed inside user_id", "invalid_user_id"),
            ("item_id ending in a carriage return", "invalid_item_id"),
            ("U+2028 line separator inside user_id", "invalid_user_id"),
            ("U+0085 next line inside a genre", "invalid_item_genres"),
            ("form feed at the end of item_decade", "invalid_item_decade"),
            ("item_id ending in NUL", "invalid_item_id"),
            ("U+2029 paragraph separator inside a genre", "invalid_item_genres"),
            ("tab inside user_id", "invalid_user_id"),
            ("record separator U+001E at the end of a genre", "invalid_item_genres"),
            ("label 1.0 (a float)", "invalid_label"),
            ("timestamp 1e9 (a float)", "invalid_timestamp"),
            ('item_genres {"Drama": null}', "invalid_item_genres"),
            ("line breaks and NUL inside item_title (a text, never a vocabulary line)", OK),
            ("line breaks inside a search query (a text; query_id keeps only word tokens)", OK),
            ("no-break space, zero-width space and BOM inside user_id (not line breaks)", OK),
            ("good rec row", OK),
        ],
    ),
    *_cases(
        "logs_hostile.csv",
        [
            ("header", "filtered:header"),
            ("label 1.0 (JSON rejects it too)", "invalid_label"),
            ("label: an integer of 5,000 digits", "invalid_label"),
            ("label +1", "invalid_label"),
            ("timestamp 1_000 (Python int() would accept it)", "invalid_timestamp"),
            ("timestamp 100.0", "invalid_timestamp"),
            ("form feed inside user_id", "invalid_user_id"),
            ("record separator U+001E at the end of a genre", "invalid_item_genres"),
            ("carriage return inside a quoted item_id", "invalid_item_id"),
            ("good rec row", OK),
        ],
    ),
    *_cases(
        "logs_latin1.csv",
        [
            ("header", "filtered:header"),
            ("ASCII-only row", OK),
            ("Latin-1 é in item_title", "invalid_utf8"),
            ("Latin-1 é in user_id", "invalid_utf8"),
        ],
    ),
    *_cases(
        "logs_utf8_bom.csv",
        [
            ("UTF-8 BOM + header (not recognised as the header)", "invalid_label"),
            ("good row after it", OK),
        ],
    ),
    *_cases(
        "logs_utf16_bom.jsonl",
        [
            ("UTF-16 BOM + first row", "invalid_utf8"),
            ("second row (split at the 0x0A byte of a UTF-16 newline)", "malformed_json"),
            ("the last newline's trailing NUL byte", "malformed_json"),
        ],
    ),
]

# Rows that crash build_samples (uncaught exceptions): kept out of its corpus run until fixed.
CRASHER_CASES: list[LogCase] = [
    LogCase(
        "logs_crashers.jsonl",
        1,
        'lone surrogate escape "\\ud800" in user_id (UnicodeEncodeError in to_example)',
        "invalid_user_id",
    ),
    LogCase(
        "logs_crashers.jsonl", 2, "JSON nested 10,000 deep (RecursionError in json.loads)", "malformed_json"
    ),
]


def huge_lines() -> dict[str, list[tuple[bytes, LogCase]]]:
    """Rows with fields over 100 KB, generated rather than committed: file -> [(line, case)].

    Line numbers follow the committed lines of each file (appended in order).
    """
    row = '{"domain":"rec_drama","user_id":"u1","item_id":"m1","label":1,"timestamp":100,'
    committed = {f: sum(1 for c in LOG_CASES if c.file == f) for f in ("logs_bad.jsonl", "logs_bad.csv")}
    jsonl = [
        ((row + '"item_title":"' + "t" * HUGE + '"}').encode(), "1 MiB item_title", "item_title_too_long"),
        (
            ('{"domain":"rec_drama","user_id":"' + "u" * HUGE + '","item_id":"m1","label":1}').encode(),
            "1 MiB user_id (ids have no length limit)",
            OK,
        ),
    ]
    csv = [(b"rec_drama,u1,,m1," + b"x" * HUGE + b",Drama,1970s,1,100", "1 MiB CSV field", "field_too_long")]
    out = {}
    for file, rows in (("logs_bad.jsonl", jsonl), ("logs_bad.csv", csv)):
        out[file] = [
            (line, LogCase(file, committed[file] + i, what, expected))
            for i, (line, what, expected) in enumerate(rows, start=1)
        ]
    return out


def crasher_lines() -> list[bytes]:
    """The crasher rows: the committed one, then the generated deep nesting (line 2)."""
    committed = (CORPUS_DIR / "logs_crashers.jsonl").read_bytes().splitlines()
    return [*committed, b"[" * 10_000 + b"]" * 10_000]


def write_logs(dest: pathlib.Path, crashers: bool = False) -> dict[tuple[str, int], LogCase]:
    """Copies the corpus logs into `dest` with the huge rows appended; returns (file, line) -> case.

    With `crashers`, ``logs_crashers.jsonl`` (with its generated deep-nesting row) is written too.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cases = {(c.file, c.line): c for c in LOG_CASES}
    for file in sorted({c.file for c in LOG_CASES}):
        shutil.copy(CORPUS_DIR / file, dest / file)
    for file, rows in huge_lines().items():
        with open(dest / file, "ab") as handle:
            for line, case in rows:
                handle.write(line + b"\n")
                cases[(file, case.line)] = case
    if crashers:
        (dest / "logs_crashers.jsonl").write_bytes(b"\n".join(crasher_lines()) + b"\n")
        cases.update({(c.file, c.line): c for c in CRASHER_CASES})
    return cases


def adversarial_strings() -> dict[str, str]:
    """Name -> adversarial string (``strings.json``, plus a generated 100,000-character one)."""
    strings = json.loads((CORPUS_DIR / "strings.json").read_text(encoding="ascii"))
    strings["very_long_100k"] = "long " * 20_000
    return strings


# Byte strings that are not UTF-8: what a client in the wrong encoding sends inside a bytes_list.
WRONG_ENCODINGS: dict[str, bytes] = {
    "latin1": "Amélie café".encode("latin-1"),
    "utf16_bom": "space movie".encode("utf-16"),
    "invalid_utf8": b"\xff\xfe\xc3\x28",
    "overlong_utf8": b"\xc0\xaf",
}
