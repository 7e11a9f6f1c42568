"""Demo silo data: deterministic, bilingual, non-IID, held-out eval, loadable by ``datasets``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from fl_ray.demo_data import DEPARTMENTS, generate_demo_data

CJK = re.compile(r"[\u4e00-\u9fff]")
# Words every department may use; they say nothing about the topic.
STOPWORDS = {"what", "when", "from", "your", "with", "that", "this", "have", "does", "should"}


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jsonl")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def is_english(text: str) -> bool:
    return text.isascii() and any(c.isalpha() for c in text)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    generate_demo_data(tmp_path / "a", seed=3)
    generate_demo_data(tmp_path / "b", seed=3)
    generate_demo_data(tmp_path / "c", seed=4)
    for dept in DEPARTMENTS:
        for split in ("train.jsonl", "eval.jsonl"):
            a = (tmp_path / "a" / dept / split).read_bytes()
            assert a == (tmp_path / "b" / dept / split).read_bytes()
            assert a != (tmp_path / "c" / dept / split).read_bytes()


def test_output_does_not_depend_on_pythonhashseed(tmp_path: Path) -> None:
    code = "import sys; from fl_ray.demo_data import generate_demo_data; "
    code += "generate_demo_data(sys.argv[1], seed=1)"
    root = Path(__file__).resolve().parents[2]
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = tmp_path / f"h{hash_seed}"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=root)
    assert tree_digest(tmp_path / "h1") == tree_digest(tmp_path / "h2")


def test_layout_counts_and_fields(demo: dict[str, Path], tmp_path: Path) -> None:
    assert tuple(demo) == DEPARTMENTS == ("transport", "housing", "revenue", "health")
    for dept, dept_dir in demo.items():
        assert dept_dir.name == dept
        assert sorted(p.name for p in dept_dir.iterdir()) == ["eval.jsonl", "train.jsonl"]
        for split, n in (("train.jsonl", 240), ("eval.jsonl", 48)):
            rows = read_jsonl(dept_dir / split)
            assert len(rows) == n
            for row in rows:
                assert set(row) == {"instruction", "answer"}
                assert all(isinstance(v, str) and v.strip() for v in row.values())
    small = generate_demo_data(tmp_path / "small", seed=1, train_per_silo=10, eval_per_silo=4)
    for dept_dir in small.values():
        assert len(read_jsonl(dept_dir / "train.jsonl")) == 10
        assert len(read_jsonl(dept_dir / "eval.jsonl")) == 4
    with pytest.raises(ValueError):
        generate_demo_data(tmp_path / "bad", train_per_silo=0)


def test_rewrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    generate_demo_data(tmp_path, seed=0, train_per_silo=8, eval_per_silo=2)
    first = tree_digest(tmp_path)
    generate_demo_data(tmp_path, seed=0, train_per_silo=8, eval_per_silo=2)
    assert tree_digest(tmp_path) == first
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".jsonl"]


def test_each_department_is_bilingual_in_both_splits(demo: dict[str, Path]) -> None:
    for dept_dir in demo.values():
        for split in ("train.jsonl", "eval.jsonl"):
            rows = read_jsonl(dept_dir / split)
            zh = [r for r in rows if CJK.search(r["instruction"])]
            en = [r for r in rows if is_english(r["instruction"])]
            assert len(zh) + len(en) == len(rows)
            assert len(zh) == len(en)  # languages alternate, so splits are exactly half each
            assert all(CJK.search(r["answer"]) for r in zh)
            assert all(r["answer"].isascii() for r in en)


def test_lengths_stay_small(demo: dict[str, Path]) -> None:
    for dept_dir in demo.values():
        for split in ("train.jsonl", "eval.jsonl"):
            for row in read_jsonl(dept_dir / split):
                if is_english(row["instruction"]):
                    assert 8 <= len(row["answer"].split()) <= 30
                    assert len(row["instruction"].split()) <= 25
                else:
                    assert 15 <= len(row["answer"]) <= 50
                    assert len(row["instruction"]) <= 40


def test_departments_are_non_iid(demo: dict[str, Path]) -> None:
    en_top: dict[str, list[str]] = {}
    zh_top: dict[str, list[str]] = {}
    en_vocab: dict[str, set[str]] = {}
    for dept, dept_dir in demo.items():
        rows = read_jsonl(dept_dir / "train.jsonl")
        en_rows = [r for r in rows if is_english(r["instruction"])]
        zh_rows = [r for r in rows if CJK.search(r["instruction"])]
        text_en = " ".join(r["instruction"] + " " + r["answer"] for r in en_rows)
        text_zh = "".join(r["instruction"] + r["answer"] for r in zh_rows)
        words = [w for w in re.findall(r"[a-z]{4,}", text_en.lower()) if w not in STOPWORDS]
        en_vocab[dept] = set(words)
        en_top[dept] = [w for w, _ in Counter(words).most_common(10)]
        bigrams = Counter(re.findall(r"[\u4e00-\u9fff]{2}", text_zh))
        zh_top[dept] = [b for b, _ in bigrams.most_common(10)]
    for dept in DEPARTMENTS:
        others = [d for d in DEPARTMENTS if d != dept]
        # The single most typical word of a department never shows up in another department.
        assert all(en_top[dept][0] not in en_vocab[o] for o in others), (dept, en_top[dept][0])
        for other in others:
            assert len(set(en_top[dept]) & set(en_top[other])) <= 3, (dept, other)
            assert len(set(zh_top[dept]) & set(zh_top[other])) <= 3, (dept, other)


def test_eval_instructions_are_held_out(demo: dict[str, Path]) -> None:
    for dept_dir in demo.values():
        train = [r["instruction"] for r in read_jsonl(dept_dir / "train.jsonl")]
        evals = [r["instruction"] for r in read_jsonl(dept_dir / "eval.jsonl")]
        assert len(set(train)) == len(train) and len(set(evals)) == len(evals)
        assert not set(train) & set(evals)


def test_answer_is_a_function_of_the_instruction(tmp_path: Path) -> None:
    seen: dict[str, str] = {}
    overlaps = 0
    for seed in range(4):
        for dept_dir in generate_demo_data(tmp_path / str(seed), seed=seed).values():
            for split in ("train.jsonl", "eval.jsonl"):
                for row in read_jsonl(dept_dir / split):
                    if row["instruction"] in seen:
                        assert seen[row["instruction"]] == row["answer"]
                        overlaps += 1
                    seen[row["instruction"]] = row["answer"]
    assert overlaps > 0  # the seeds do share some instructions, so the check had teeth


def test_loads_with_datasets(demo: dict[str, Path], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dept_dir = demo["health"]
    ds = datasets.load_dataset(
        "json",
        data_files={"train": str(dept_dir / "train.jsonl"), "eval": str(dept_dir / "eval.jsonl")},
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds["train"].num_rows == 240 and ds["eval"].num_rows == 48
    assert set(ds["train"].column_names) == {"instruction", "answer"}
    assert ds["train"][0] == read_jsonl(dept_dir / "train.jsonl")[0]


def test_public_corpus_is_separate_and_covers_the_characters(demo: dict[str, Path]) -> None:
    corpus_file = resources.files("fl_ray").joinpath("corpus/public_corpus.txt")
    raw = corpus_file.read_bytes()
    assert 20_000 <= len(raw) <= 60_000
    text = raw.decode("utf-8")
    assert text.startswith("# Public corpus for the demo tokenizer. Sources:")
    assert "License:" in text.splitlines()[0]
    used: set[str] = set()
    for dept_dir in demo.values():
        for split in ("train.jsonl", "eval.jsonl"):
            rows = read_jsonl(dept_dir / split)
            used |= {c for r in rows for c in r["instruction"] + r["answer"]}
            # Written independently of the templates: no silo sentence appears verbatim.
            assert not any(r["answer"] in text for r in rows)
    assert used - set(text) == set()
