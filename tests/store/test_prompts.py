"""PromptFile: .jsonl and text prompt files as lazy sequences, every line checked when opened."""

from __future__ import annotations

import json

import pytest

from mlxterp.store import PromptFile


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_strings_objects_and_token_ids(tmp_path):
    f = PromptFile(write(tmp_path / "p.jsonl", [json.dumps("héllo"), "", json.dumps({"text": "a b", "id": 3}),
                                                 "  ", json.dumps({"prompt": "c"}), json.dumps([1, 5, 9])]))
    assert len(f) == 4 and list(f) == ["héllo", "a b", "c", [1, 5, 9]]
    assert f[1:3] == ["a b", "c"] and f[-1] == [1, 5, 9] and f[::-2] == [[1, 5, 9], "a b"]
    with pytest.raises(IndexError):
        f[4]


def test_text_file_one_prompt_per_line(tmp_path):
    f = PromptFile(write(tmp_path / "p.txt", ["  first prompt ", "", "second"]))
    assert list(f) == ["first prompt", "second"] and "2 prompts" in repr(f)


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "line 2 is not JSON"),
    (json.dumps({"body": "x"}), "line 2: the object has no 'text' or 'prompt' field (its keys: 'body')"),
    (json.dumps(""), "line 2: expected a non-empty string"),
    (json.dumps([1, "a"]), "line 2: expected a non-empty string, a non-empty list of token ids"),
    (json.dumps(3), "got int '3'"),
])
def test_bad_jsonl_line_is_named(tmp_path, line, fragment):
    with pytest.raises(ValueError) as info:
        PromptFile(write(tmp_path / "p.jsonl", [json.dumps("ok"), line]))
    assert fragment in str(info.value) and "p.jsonl" in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PromptFile(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="has no prompts"):
        PromptFile(write(tmp_path / "p.jsonl", ["", "   "]))
